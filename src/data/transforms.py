"""Train and eval transforms for clips (torchvision.transforms.v2 on tv_tensors.Video) and the flip policy.

A clip is one `Video` (T, C, H, W), so every random draw (crop box, RandAugment ops, erased box, flip) is
made once and applied to all its frames. Outputs are float (C, T, H, W), normalised with mean/std.

A training clip is augmented in two parts, each under its own seed (`seeded`): `TrainTransform.crop_clip`
(uint8 in, uint8 out: what a loader worker must do, since it fixes the clip's size) and
`TrainTransform.appearance` (RandAugment, flip, normalise, erase). With `data.augment_on: device` the second
part runs on the batch after it reaches the GPU; with the same seeds both placements give the same clips.

The flip policy (`on`, `off`, `swap`) is per dataset: `swap` flips and exchanges the labels of classes whose
names mirror each other ("... left to right" <-> "... right to left"), with the table built from the names.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

FLIP_POLICIES = ("on", "off", "swap")
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
_MIRROR = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded to `seed` (where transforms draw their parameters),
    and give the caller's generator state back afterwards. CUDA generators are left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


def to_normalized_float(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 in [0, 1], then (x - mean) / std per channel (torchvision's ops)."""
    return F.normalize(F.to_dtype(video, torch.float32, scale=True), list(mean), list(std))


def mirrored_name(name: str) -> str:
    """The class name with the words left and right exchanged (case kept): what a flipped video shows."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _MIRROR.sub(swap, name)


def swap_table(class_names: Sequence[str]) -> dict[int, int]:
    """Label -> label for classes that turn into each other under a horizontal flip (both directions).

    Built from the names, so it does not depend on one label order; classes whose mirror is absent
    (e.g. "... pulling it right out ...") keep their label.
    """
    position = {name.strip(): i for i, name in enumerate(class_names)}
    table = {}
    for i, name in enumerate(class_names):
        mirror = mirrored_name(name.strip())
        if mirror != name.strip() and mirror in position:
            table[i] = position[mirror]
    return table


class FlipPolicy:
    """Horizontal flip with probability 0.5 under policy `on`, never under `off`, with label swap under `swap`."""

    def __init__(self, policy: str, class_names: Sequence[str] = ()) -> None:
        if policy not in FLIP_POLICIES:
            raise ValueError(f"unknown flip policy {policy!r}; use one of {FLIP_POLICIES}")
        self.policy = policy
        self.table = swap_table(class_names) if policy == "swap" else {}

    def __call__(self, video: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        """Flip `video` (..., H, W) or not, using the global torch RNG (seeded per sample by the dataset)."""
        if self.policy == "off" or torch.rand(()) >= 0.5:
            return video, label
        return F.horizontal_flip(video), self.table.get(label, label)


def parse_rand_augment(spec: str | None) -> tuple[int, int] | None:
    """'m7-n4' -> (magnitude 7, ops 4); None or 'none' switches RandAugment off."""
    if spec is None or str(spec).lower() in ("", "none", "off", "null"):
        return None
    match = re.fullmatch(r"m(\d+)-n(\d+)", str(spec).strip())
    if not match:
        raise ValueError(
            f"rand_augment {spec!r} is not of the form 'm<magnitude>-n<ops>' (e.g. 'm7-n4') or null"
        )
    return int(match.group(1)), int(match.group(2))


class TrainTransform:
    """uint8 frames (T, H, W, 3) -> float clip (3, T, crop, crop): crop, RandAugment, flip, normalise, erase.

    `crop="random_resized"` uses RandomResizedCrop(scale, ratio); `crop="jitter"` resizes the short side to a
    random size in `jitter` and takes a random crop. RandAugment magnitudes are out of 10 (timm's scale).
    """

    def __init__(
        self,
        crop_size: int = 224,
        *,
        crop: str = "random_resized",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: tuple[int, int] = (256, 320),
        rand_augment: str | None = "m7-n4",
        erase_prob: float = 0.25,
        flip: FlipPolicy | None = None,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        if crop == "random_resized":
            self.crop = v2.RandomResizedCrop(
                crop_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True
            )
        elif crop == "jitter":
            self.crop = v2.Compose(
                [
                    v2.RandomShortestSize(list(range(jitter[0], jitter[1] + 1)), antialias=True),
                    v2.RandomCrop(crop_size),
                ]
            )
        else:
            raise ValueError(f"unknown crop {crop!r}; use 'random_resized' or 'jitter'")
        ra = parse_rand_augment(rand_augment)
        self.rand_augment = (
            v2.RandAugment(num_ops=ra[1], magnitude=ra[0], num_magnitude_bins=11) if ra else None
        )
        self.flip = flip or FlipPolicy("off")
        self.finish = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
            + ([v2.RandomErasing(p=erase_prob, value=0)] if erase_prob > 0 else [])
        )

    def crop_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (T, H, W, 3) -> uint8 clip (T, 3, crop, crop): the spatial crop and resize."""
        video = self.crop(tv_tensors.Video(frames.permute(0, 3, 1, 2)))
        return video.as_subclass(torch.Tensor).contiguous()

    def appearance(self, clip: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        """uint8 clip (T, 3, H, W) on any device -> (float clip (3, T, H, W), possibly swapped label):
        RandAugment, flip, normalise, erase. Random draws come from torch's CPU generator."""
        video = tv_tensors.Video(clip)
        if self.rand_augment is not None:
            video = self.rand_augment(video)
        video, label = self.flip(video, label)
        video = self.finish(video)
        return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous(), label

    def __call__(
        self, frames: torch.Tensor, label: int, seed: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, int]:
        """Augment one clip; returns (clip (3, T, H, W), possibly swapped label).

        `seed` = (crop seed, appearance seed) makes the result reproducible and the same as `crop_clip` +
        `appearance` under those seeds on another device; None draws from the current generator."""
        if seed is None:
            return self.appearance(self.crop_clip(frames), label)
        with seeded(seed[0]):
            clip = self.crop_clip(frames)
        with seeded(seed[1]):
            return self.appearance(clip, label)


class EvalTransform:
    """uint8 frames (T, H, W, 3) -> float views (num_crops, 3, T, crop, crop) (uint8 with `normalize=False`).

    Short side resized to `crop_size`, then a centre crop (`num_crops=1`) or three crops along the long
    side (left/top, centre, right/bottom; `num_crops=3`).
    """

    def __init__(
        self,
        crop_size: int = 224,
        num_crops: int = 1,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        normalize: bool = True,
    ) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.crop_size = crop_size
        self.num_crops = num_crops
        self.resize = v2.Resize(crop_size, antialias=True)
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize = normalize  # False: uint8 views, normalised on the device (`normalize_views`)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """All spatial views of one clip, stacked: (num_crops, 3, T, crop, crop)."""
        video = self.resize(tv_tensors.Video(frames.permute(0, 3, 1, 2)))
        height, width = video.shape[-2:]
        size = self.crop_size
        if self.num_crops == 1:
            boxes = [((height - size) // 2, (width - size) // 2)]
        elif width >= height:
            boxes = [((height - size) // 2, x) for x in (0, (width - size) // 2, width - size)]
        else:
            boxes = [(y, (width - size) // 2) for y in (0, (height - size) // 2, height - size)]
        views = [F.crop(video, top, left, size, size) for top, left in boxes]
        views = [v.as_subclass(torch.Tensor) for v in views]
        if self.normalize:
            views = [to_normalized_float(v, self.mean, self.std) for v in views]
        return torch.stack([v.permute(1, 0, 2, 3) for v in views])


def normalize_views(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 views (..., 3, T, H, W), as `EvalTransform(normalize=False)` makes them -> normalised float,
    the same values `EvalTransform` computes on the CPU."""
    return to_normalized_float(video.transpose(-4, -3), mean, std).transpose(-4, -3)


def denormalize(
    video: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int = -4
) -> torch.Tensor:
    """Normalised float clips with RGB along `channel_dim` ((..., 3, T, H, W) by default) -> x * std + mean
    per channel, clamped to [0, 1]: the pictures a run normalised with `mean` / `std` was shown."""
    shape = [1] * video.ndim
    shape[channel_dim] = 3
    mean_t, std_t = (torch.tensor(v, dtype=video.dtype, device=video.device).view(shape) for v in (mean, std))
    return (video * std_t + mean_t).clamp(0, 1)
