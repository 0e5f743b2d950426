"""The CUDA paths are right: StructSA fast = reference in float32 and close in bf16, a fused SDPA kernel for
every configuration, a finite bf16-mixed training step of StructViT-S (see benchmarks/cuda_paths.py)."""

from __future__ import annotations

import pytest

from benchmarks import cuda_paths
from benchmarks.cuda_paths import PRECISIONS, STRUCTSA_CONFIGS

pytestmark = pytest.mark.gpu
STRUCTURED = [c for c in STRUCTSA_CONFIGS if c[0] > 0]


@pytest.mark.parametrize("d,s", STRUCTURED)
def test_fast_path_equals_reference_in_float32(shapes, d, s, record, tolerance_scale):
    row = cuda_paths.fp32_fast_vs_reference(shapes.fast_vs_reference, d, s, shapes.device)
    bound = row["bound"] * tolerance_scale
    row["passed"] = row["output_rel_err"] <= bound and row["grad_rel_err"] <= bound
    record(row)
    assert row["passed"], f"float32 fast vs reference above {bound:g}: {row}"


@pytest.mark.parametrize("d,s", STRUCTURED)
def test_bf16_autocast_error_is_within_eight_roundoff_units(shapes, d, s, record, tolerance_scale):
    row = cuda_paths.bf16_fast_errors(shapes.fast_vs_reference, d, s, shapes.device)
    bound = row["bound"] * tolerance_scale
    row["passed"] = max(row["rel_err_attn_fp32_off"], row["rel_err_attn_fp32_on"]) <= bound
    record(row)
    assert row["passed"], f"bf16 autocast error above {bound:g}: {row}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("d,s", STRUCTSA_CONFIGS)
def test_every_structsa_config_runs_a_fused_sdpa_kernel_never_math(shapes, d, s, precision, record):
    for shape in shapes.kernel_shapes:
        row = cuda_paths.sdpa_kernels_used(shape, d, s, shapes.device, precision)
        row["passed"] = bool(row["kernels"]) and set(row["kernels"]) <= set(row["allowed"])
        record(row)
        assert row["passed"], f"SDPA ran {row['kernels']} (allowed {row['allowed']}) for {row}"


def test_structvit_s_bf16_mixed_step_has_finite_loss_and_gradients(shapes, record):
    for model in shapes.step_models:
        row = cuda_paths.bf16_training_step(model, shapes.device)
        fused = set(row["sdpa_kernels"]) <= set(row["allowed"]) and bool(row["sdpa_kernels"])
        row["passed"] = (
            row["finite_loss"] and row["finite_grads"] and row["finite_params_after_step"] and fused
        )
        record(row)
        assert row["passed"], f"bf16-mixed step: {row}"
