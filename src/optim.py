"""AdamW parameter groups (no decay on biases, norms, 1-D parameters) and the warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups_weight_decay(model: nn.Module, weight_decay: float, skip: Iterable[str] = ()) -> list[dict]:
    """Two AdamW groups: decayed weights, and biases / norm scales / all 1-D tensors / names in `skip` at 0.

    `skip` holds parameter names (or name prefixes) such as a backbone's `no_weight_decay()` set.
    """
    skip = tuple(skip)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if (
            param.ndim <= 1
            or name.endswith(".bias")
            or any(name == s or name.startswith(s + ".") for s in skip)
        ):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, min_factor: float, warmup_start: float
) -> float:
    """LR multiplier at optimiser step `step`: linear warmup_start -> 1 over warmup_steps, then cosine to min_factor."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    min_lr: float,
    warmup_start_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup to each group's lr, cosine decay to `min_lr` at `total_steps`."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must lie in 0..total_steps ({total_steps})")
    base_lr = optimizer.param_groups[0]["lr"]
    min_factor = min_lr / base_lr if base_lr > 0 else 0.0
    start_factor = warmup_start_lr / base_lr if base_lr > 0 else 0.0
    # not SequentialLR(LinearLR, CosineAnnealingLR): no warmup from 0, no warmup == total, climbs past total (tests)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, min_factor, start_factor),
    )
