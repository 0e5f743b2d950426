"""Training targets and loss: label smoothing, MixUp / CutMix on a video batch, soft-target cross-entropy.

MixUp / CutMix follow DeiT / UniFormer (docs/method.md, 'Training recipe'): one mixing partner per clip (the batch
reversed), one lambda per batch drawn from Beta(alpha, alpha), CutMix boxes cut the same spatial box out of
every frame of a clip, and the label mixing weight is corrected to the box area that was really pasted.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) class indices -> (B, K) soft targets: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {labels.min().item()}..{labels.max().item()}; "
            "is num_classes the dataset's class count?"
        )
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device, dtype=torch.float32)
    targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    return targets


def soft_target_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum_k targets_k * log_softmax(logits)_k; logits (B, K), targets (B, K).

    `F.cross_entropy` with class-probability targets, in float32 (logits may come from autocast); the
    smoothing is already in `targets` (smooth_one_hot, then mixed), so none is applied here.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape"
        )
    return F.cross_entropy(logits.float(), targets.float())


def cutmix_box(
    height: int, width: int, lam: float, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) covering about 1 - lam of an H x W frame, centred uniformly, clipped to the frame."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


class MixupCutmix:
    """Mix a batch of clips (B, C, T, H, W) and return (mixed clips, soft targets (B, K)).

    With both enabled, each batch uses CutMix with probability `switch_prob`, else MixUp; `prob` is the
    chance that a batch is mixed at all. An alpha of 0 disables that method. Targets include label smoothing.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.generator = generator

    @property
    def enabled(self) -> bool:
        """Whether any mixing can happen (some alpha > 0 and prob > 0)."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _beta(self, alpha: float) -> float:
        """One Beta(alpha, alpha) draw, reproducible from `generator` (or torch's global seed when None)."""
        # torch.distributions.Beta takes no generator: numpy's Beta, seeded by one draw of our torch stream
        seed = int(torch.randint(2**63 - 1, (1,), generator=self.generator))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(self, clips: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mix `clips` (B, C, T, H, W) with the reversed batch; returns new clips and soft targets."""
        if clips.dim() != 5:
            raise ValueError(f"MixupCutmix expects clips (B, C, T, H, W), got shape {tuple(clips.shape)}")
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        uniform = torch.rand(2, generator=self.generator)
        if not self.enabled or float(uniform[0]) >= self.prob:
            return clips, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or float(uniform[1]) < self.switch_prob)
        partner = clips.flip(0)
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            height, width = clips.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(height, width, lam, self.generator)
            clips = clips.clone()
            clips[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)  # the area really pasted
        else:
            lam = self._beta(self.mixup_alpha)
            clips = clips * lam + partner * (1.0 - lam)
        targets = targets * lam + targets.flip(0) * (1.0 - lam)
        return clips, targets
