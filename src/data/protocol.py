"""The evaluation protocol of a trained model: which frames make a clip, how many views, crop, normalisation.

A model is only right on clips prepared the way it was evaluated, so the protocol travels inside every
checkpoint (`checkpoint["eval_protocol"]`) and prediction, feature extraction and export read it there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from src.data.sampling import SAMPLINGS, ClipSampler
from src.data.transforms import MEAN, STD, EvalTransform

CHECKPOINT_KEY = "eval_protocol"


@dataclass(frozen=True)
class EvalProtocol:
    """How test clips are made: `num_frames` per clip by `sampling` ("dense" at `sampling_rate`, or
    "segment"), `test_views` = (temporal clips, spatial crops), short side resized to `crop_size` and
    centre / three-crop, then normalised with `mean` / `std` (per RGB channel, on [0, 1] values)."""

    num_frames: int
    sampling: str
    sampling_rate: int
    crop_size: int
    test_views: tuple[int, int]
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def __post_init__(self) -> None:
        # plain Python values (config parsing hands in int subclasses such as PositiveInt): checkpoints store
        # them, and the safe loader refuses any class it does not know
        for name, cast in (
            ("num_frames", int),
            ("sampling", str),
            ("sampling_rate", int),
            ("crop_size", int),
        ):
            object.__setattr__(self, name, cast(getattr(self, name)))
        object.__setattr__(self, "test_views", tuple(int(v) for v in self.test_views))
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.test_views) != 2 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"eval protocol: test_views needs 2 values, mean and std 3 each: {self}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"eval protocol: unknown sampling {self.sampling!r}; use one of {SAMPLINGS}")
        clips, crops = self.test_views
        if min(self.num_frames, self.sampling_rate, self.crop_size, clips) < 1 or crops not in (1, 3):
            raise ValueError(f"eval protocol: invalid values {self}")

    @property
    def num_views(self) -> int:
        """Views per video: temporal clips x spatial crops."""
        return self.test_views[0] * self.test_views[1]

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(3, T, H, W) of one view: what the network takes, batched."""
        return (3, self.num_frames, self.crop_size, self.crop_size)

    def clip_sampler(self) -> ClipSampler:
        """The frame sampler of this protocol."""
        return ClipSampler(self.sampling, self.num_frames, self.sampling_rate)

    def transform(self, normalize: bool = True) -> EvalTransform:
        """uint8 frames (T, H, W, 3) -> normalised views (crops, 3, T, crop, crop); uint8 views with
        `normalize=False` (normalised later on the device)."""
        return EvalTransform(
            self.crop_size, self.test_views[1], mean=self.mean, std=self.std, normalize=normalize
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers: what a checkpoint stores (safe to load with weights_only)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalProtocol:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"eval protocol: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
