"""Train and eval transforms for still images (torchvision.transforms.v2 on uint8 (3, H, W) tensors).

Train: RandomResizedCrop (bicubic, antialiased), horizontal flip, RandAugment, to float, Normalize,
RandomErasing -- the DeiT / UniFormer ImageNet recipe less Mixup/CutMix and label smoothing, which the model
applies (`VideoClassifier.mixing`). Eval: short side resized to round(crop_size / crop_pct), centre crop,
Normalize. Every random draw comes from torch's CPU generator, which the dataset seeds per sample (`seeded`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from src.data.transforms import parse_rand_augment, to_normalized_float

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# RandAugment magnitudes are out of 10 (timm's scale: "m9" is 9 of 10), as in src/data/transforms.py
MAGNITUDE_BINS = 11


def rand_augment_op(spec: str | None) -> v2.RandAugment | None:
    """'m9-n2' -> torchvision's RandAugment(num_ops=2, magnitude=9) on the 0..10 scale; null -> None."""
    parsed = parse_rand_augment(spec)
    if parsed is None:
        return None
    magnitude, num_ops = parsed
    if magnitude >= MAGNITUDE_BINS:
        raise ValueError(f"rand_augment {spec!r}: magnitude must be 0..{MAGNITUDE_BINS - 1}")
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=MAGNITUDE_BINS)


def eval_resize_size(crop_size: int, crop_pct: float) -> int:
    """Short side before the centre crop: round(crop_size / crop_pct) (224 / 0.875 = 256)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return round(crop_size / crop_pct)


class ImageTrainTransform:
    """uint8 image (3, H, W) -> float (3, crop, crop): random-resized crop, flip, RandAugment, normalise, erase."""

    def __init__(
        self,
        crop_size: int = 224,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        rand_augment: str | None = "m9-n2",
        erase_prob: float = 0.25,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        ops: list = [
            v2.RandomResizedCrop(
                crop_size,
                scale=tuple(scale),
                ratio=tuple(ratio),
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
        ]
        augment = rand_augment_op(rand_augment)
        if augment is not None:
            ops.append(augment)
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        if erase_prob > 0:
            ops.append(v2.RandomErasing(p=erase_prob, value=0))
        self.ops = v2.Compose(ops)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One augmentation of `image` (uint8 (3, H, W)), drawing from torch's current CPU generator."""
        return self.ops(image)


class ImageEvalTransform:
    """uint8 image (3, H, W) -> float (3, crop, crop): bicubic resize of the short side, centre crop, normalise."""

    def __init__(
        self,
        crop_size: int = 224,
        crop_pct: float = 0.875,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.crop_size = crop_size
        self.resize = v2.Resize(
            eval_resize_size(crop_size, crop_pct), interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        self.crop = v2.CenterCrop(crop_size)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return to_normalized_float(self.crop(self.resize(image)), self.mean, self.std)
