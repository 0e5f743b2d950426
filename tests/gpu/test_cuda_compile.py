"""torch.compile of the backbone gives eager's output (within the bound of benchmarks/cuda_paths.py) and
its training-step time is recorded beside eager's."""

from __future__ import annotations

import pytest

from benchmarks import cuda_paths

pytestmark = pytest.mark.gpu


def test_compiled_model_matches_eager_and_its_step_time_is_recorded(shapes, record, tolerance_scale):
    row = cuda_paths.compile_vs_eager(
        shapes.compile_model, shapes.device, shapes.compile_backend, shapes.compile_reps
    )
    bound = row["bound"] * tolerance_scale
    row["passed"] = row["rel_err_compiled"] <= bound
    row["notes"] = list(shapes.notes)
    record(row)
    assert row["passed"], f"compiled output differs from eager by more than {bound:g}: {row}"
    assert row["compiled_step_ms"] > 0 and row["eager_step_ms"] > 0
