"""Items 1 and 2: StructSA fast vs reference path, and StructSA vs vanilla attention, at StructViT-S shapes.

Every (shape, mode, D, S) runs its fast and reference paths back to back, and every (shape, mode) its
vanilla (D = 0) baseline, so each ratio in BENCHMARKS.md comes from neighbouring measurements of one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

from benchmarks.attention import AttentionCase, case_key, measure_attention
from benchmarks.limits import Budget, QuadraticPredictor


@dataclass(frozen=True)
class LayerShape:
    """A StructViT-S attention stage at one clip length: channels, heads and the token grid (T, H, W)."""

    label: str
    dim: int
    heads: int
    grid: tuple[int, int, int]


# StructViT-S: stage 3 has C = 320, 5 heads, 14x14 tokens at 224^2; stage 4 C = 512, 8 heads, 7x7.
# The stem halves time once, so 8 input frames give T = 4 and 16 give T = 8.
STAGE3_8F = LayerShape("stage3 8x224² (N=784)", 320, 5, (4, 14, 14))
STAGE3_16F = LayerShape("stage3 16x224² (N=1568)", 320, 5, (8, 14, 14))
STAGE4_16F = LayerShape("stage4 16x224² (N=392)", 512, 8, (8, 7, 7))
STAGE4_8F = LayerShape("stage4 8x224² (N=196)", 512, 8, (4, 7, 7))


def grid_cases(
    shapes: Iterable[LayerShape], structure_dims: Iterable[int], strides: Iterable[int], modes: Iterable[str]
) -> list[AttentionCase]:
    """Cases in priority order, so a time budget cuts the least important ones: the vanilla baselines, then
    each D in the order given (the paper's D = 4 first), forward before forward + backward, shapes smallest
    first (so reference cut-offs learn from smaller runs); fast and reference paths of a case side by side."""
    shapes = sorted(shapes, key=lambda s: (s.grid[0] * s.grid[1] * s.grid[2], s.dim))
    cases = []

    def common(shape: LayerShape, mode: str) -> dict:
        return dict(label=shape.label, dim=shape.dim, heads=shape.heads, grid=shape.grid, mode=mode)

    for shape in shapes:
        for mode in modes:
            cases.append(AttentionCase(structure_dim=0, kv_stride=1, path="vanilla", **common(shape, mode)))
    for d in structure_dims:
        for mode in modes:  # all forward cases of a D before its (far slower) forward + backward cases
            for shape in shapes:
                for s in strides:
                    for path in ("fast", "reference"):
                        cases.append(
                            AttentionCase(structure_dim=d, kv_stride=s, path=path, **common(shape, mode))
                        )
    return cases


def run_cases(
    cases: list[AttentionCase],
    *,
    reps: int,
    warmup: int,
    device: str,
    dtype,
    budget: Budget,
    reference_total_s: float = float("inf"),
    reference_reps: int | None = None,
    total_s: float = float("inf"),
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Measure every case in order with one shared reference-path predictor; one row per case.

    Reference cases share `reference_total_s` seconds: each may use at most what is left of it. A case whose
    predicted time (from a smaller measured case of the same configuration) exceeds what is left of
    `total_s` for the whole list is skipped, so a suite's duration stays bounded on a busy machine.
    """
    predictor = QuadraticPredictor()
    spent = 0.0
    section_start = time.perf_counter()
    rows = []
    for case in cases:
        start = time.perf_counter()
        case_budget = budget
        if case.path == "reference":
            case_budget = replace(budget, seconds=min(budget.seconds, reference_total_s - spent))
        left = total_s - (start - section_start)
        _, predicted = predictor.predict(case_key(case, device), case.tokens * case.keys)
        calls = (reference_reps or reps) + 1 if case.path == "reference" else reps + warmup + 1
        reason = None
        if case_budget.seconds <= 0:
            reason = f"skipped: the run's reference-path budget ({reference_total_s:.0f} s) is used up"
        elif left <= 0 or (predicted is not None and predicted * calls > left):
            reason = f"skipped: the section's time budget ({total_s:.0f} s) is used up"
        if reason:
            row = {
                **asdict(case),
                "grid": list(case.grid),
                "tokens": case.tokens,
                "keys": case.keys,
                "attended": case.attended,
                "gmacs": round(case.gmacs(), 6),
                "status": "skipped",
                "reason": reason,
            }
        else:
            row = measure_attention(
                case,
                reps=reps,
                warmup=warmup,
                device=device,
                dtype=dtype,
                budget=case_budget,
                predictor=predictor,
                reference_reps=reference_reps,
            )
        if case.path == "reference":
            spent += time.perf_counter() - start
        rows.append(row)
        figure = (
            f"{row['median_ms']:.1f} ms, {row['peak_mib']:.1f} MiB, {row['kernel']}"
            if row["status"] == "ok"
            else row["reason"]
        )
        log(
            f"  {case.label:26s} {case.mode:7s} D={case.structure_dim} S={case.kv_stride} "
            f"{case.path:9s} {figure}"
        )
    return rows
