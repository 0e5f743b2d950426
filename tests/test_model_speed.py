"""benchmarks.model_speed (formerly src.models.speed): fast-vs-reference StructSA timing of one layer."""

import torch

from benchmarks.model_speed import main, time_layer
from src.models.structsa import StructSA


def test_time_layer_warms_up_once_then_times_forward_and_backward():
    module = StructSA(16, 2, structure_dim=2)
    x = torch.randn(1, 2 * 3 * 3, 16, requires_grad=True)
    calls = []
    fast = module.forward
    module.forward = lambda *args: calls.append(1) or fast(*args)  # time_layer calls the bound method itself
    timing = time_layer(module, x, (2, 3, 3), "fast", repeats=3)
    assert len(calls) == 4 and timing.reps == 3 and timing.warmup == 1
    assert 0 < timing.min_s <= timing.median_s <= timing.max_s
    assert x.grad is not None  # the backward ran


def test_main_prints_both_paths_and_their_ratio(capsys):
    main(["--dim", "16", "--heads", "2", "--grid", "2", "3", "3", "--structure-dim", "2", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "fast" in out and "reference" in out and "reference / fast = " in out
