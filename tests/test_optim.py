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
    assert {names[id(p)] for p in no_decay["params"]} == {
        "conv.bias",
        "norm.weight",
        "norm.bias",
        "pos",
        "head.bias",
    }
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


# ------------------------------------------------------------------ why not torch's LinearLR + CosineAnnealingLR
def _lrs(opt, sched, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _ours(total, warmup, min_lr, start_lr, base_lr=1e-3):
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=base_lr)
    return opt, warmup_cosine_scheduler(opt, total, warmup, min_lr, start_lr)


def _torch_sequential(total, warmup, min_lr, start_lr, base_lr=1e-3):
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=base_lr)
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start_lr / base_lr, total_iters=warmup)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
    return opt, torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


@pytest.mark.parametrize(
    ("warmup", "start_lr", "min_lr"), [(10, 1e-6, 1e-6), (10, 5e-4, 0.0), (0, 1e-6, 1e-5)]
)
def test_torch_linear_then_cosine_matches_up_to_total_steps_then_climbs_again(warmup, start_lr, min_lr):
    ours = _lrs(*_ours(100, warmup, min_lr, start_lr), 160)
    theirs = _lrs(*_torch_sequential(100, warmup, min_lr, start_lr), 160)
    assert theirs[:101] == pytest.approx(ours[:101], rel=1e-12, abs=1e-18)  # step by step, warmup and decay
    assert ours[101:] == pytest.approx([min_lr] * 59)  # ours stays at the floor past total_steps
    assert max(theirs[101:]) > min_lr + 1e-4  # torch's cosine is periodic: it climbs back towards the base lr


def test_torch_linear_warmup_cannot_start_from_zero():
    assert _lrs(*_ours(100, 10, 0.0, 0.0), 2)[0] == 0.0
    with pytest.raises(ValueError, match="Starting multiplicative factor"):
        _torch_sequential(100, 10, 0.0, 0.0)


def test_torch_cosine_cannot_decay_over_zero_steps_when_warmup_is_the_whole_run():
    ours = _lrs(*_ours(10, 10, 1e-6, 1e-6), 12)
    assert ours[:11] == pytest.approx([1e-6 + (1e-3 - 1e-6) * k / 10 for k in range(10)] + [1e-3])
    opt, sched = _torch_sequential(10, 10, 1e-6, 1e-6)
    with pytest.raises(ZeroDivisionError):
        _lrs(opt, sched, 12)


def test_resuming_from_the_scheduler_state_dict_gives_the_same_learning_rates():
    opt, sched = _ours(50, 5, 1e-6, 1e-6)
    straight = _lrs(opt, sched, 50)
    opt, sched = _ours(50, 5, 1e-6, 1e-6)
    _lrs(opt, sched, 20)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()  # what Lightning checkpoints
    opt, sched = _ours(50, 5, 1e-6, 1e-6)  # configure_optimizers again, then Lightning restores both
    opt.load_state_dict(saved_opt)
    sched.load_state_dict(saved_sched)
    assert _lrs(opt, sched, 30) == straight[20:]
