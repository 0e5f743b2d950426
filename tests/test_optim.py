"""AdamW parameter groups and the per-step warmup + cosine schedule."""

import pytest
import torch
from torch import nn

from src.optim import param_groups_weight_decay, warmup_cosine_factor, warmup_cosine_scheduler


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.pos = nn.Parameter(torch.zeros(1, 5, 4))
        self.head = nn.Linear(4, 2)


def test_biases_norms_and_named_parameters_get_no_decay():
    model = Tiny()
    decay, no_decay = param_groups_weight_decay(model, 0.05, skip={"pos"})
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"conv.weight", "head.weight"}
    assert {names[id(p)] for p in no_decay["params"]} == {"conv.bias", "norm.weight", "norm.bias", "pos", "head.bias"}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = warmup_cosine_scheduler(opt, total_steps=100, warmup_steps=10, min_lr=1e-5, warmup_start_lr=0.0)
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(5e-4)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-6)  # halfway through the cosine
    assert lrs[100] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_factor_stays_at_the_floor_after_the_last_step():
    assert warmup_cosine_factor(500, 100, 10, 0.01, 0.0) == pytest.approx(0.01)


def test_bad_schedule_lengths_are_rejected():
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_scheduler(opt, total_steps=10, warmup_steps=20, min_lr=0.0)
