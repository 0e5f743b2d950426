"""Which frames of a video make a clip: dense (Kinetics) and segment-based (TSN) sampling, train and test.

All functions work in the video's own frame indices and never return an index outside 0..length-1: a video
shorter than a clip repeats its last frame (dense) or re-uses frames in order (segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLINGS = ("dense", "segment")


def _check(length: int, num_frames: int) -> None:
    if length < 1:
        raise ValueError(f"cannot sample from a video of {length} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def dense_indices(length: int, num_frames: int, stride: int, start: int) -> list[int]:
    """`num_frames` indices `start, start+stride, ...`, clamped to the last frame."""
    return [min(start + k * stride, length - 1) for k in range(num_frames)]


def dense_train(length: int, num_frames: int, stride: int, rng: np.random.Generator) -> list[int]:
    """One clip of `num_frames` at `stride` from a uniformly random start (Kinetics training)."""
    _check(length, num_frames)
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, length - span + 1)) if length > span else 0
    return dense_indices(length, num_frames, stride, start)


def dense_test(length: int, num_frames: int, stride: int, view: int, num_views: int) -> list[int]:
    """Clip `view` of `num_views` clips whose starts are spread uniformly over the video (first to last)."""
    _check(length, num_frames)
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} outside 0..{num_views - 1}")
    span = (num_frames - 1) * stride + 1
    room = max(length - span, 0)
    start = room // 2 if num_views == 1 else round(view * room / (num_views - 1))
    return dense_indices(length, num_frames, stride, start)


def segment_train(length: int, num_frames: int, rng: np.random.Generator) -> list[int]:
    """TSN: split into `num_frames` equal segments and take one uniformly random frame from each."""
    _check(length, num_frames)
    size = length / num_frames
    offsets = rng.random(num_frames)
    return [min(int(math.floor(size * (t + offsets[t]))), length - 1) for t in range(num_frames)]


def segment_test(length: int, num_frames: int, view: int, num_views: int) -> list[int]:
    """TSN test view `view` of `num_views`: offset (view + 0.5) / num_views inside every segment.

    Different views take different offsets, so they are different clips whenever the video is long enough.
    """
    _check(length, num_frames)
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} outside 0..{num_views - 1}")
    size = length / num_frames
    offset = (view + 0.5) / num_views
    return [min(int(math.floor(size * (t + offset))), length - 1) for t in range(num_frames)]


@dataclass(frozen=True)
class ClipSampler:
    """The sampling recipe of a dataset: `dense` (with `stride`) or `segment`, `num_frames` per clip."""

    mode: str = "segment"
    num_frames: int = 16
    stride: int = 4

    def __post_init__(self) -> None:
        if self.mode not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.mode!r}; use one of {SAMPLINGS}")
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(
                f"num_frames and sampling_rate must be >= 1 (got {self.num_frames}, {self.stride})"
            )

    def train(self, length: int, rng: np.random.Generator) -> list[int]:
        """Random training clip."""
        if self.mode == "dense":
            return dense_train(length, self.num_frames, self.stride, rng)
        return segment_train(length, self.num_frames, rng)

    def test(self, length: int, view: int, num_views: int) -> list[int]:
        """Deterministic test clip `view` of `num_views`."""
        if self.mode == "dense":
            return dense_test(length, self.num_frames, self.stride, view, num_views)
        return segment_test(length, self.num_frames, view, num_views)
