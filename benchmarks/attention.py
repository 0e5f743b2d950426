"""Time and peak memory of attention layers: StructSA's fast and reference paths, and vanilla attention.

A case is one layer at one token grid. "forward" runs under `torch.no_grad()` (inference); "train" runs
forward and backward (input and parameter gradients), as one step of training would. The suites measure
two grids of cases: StructViT-S stage shapes (`grid_cases`: every (shape, mode, D, S) runs its fast and
reference paths back to back, and every (shape, mode) its vanilla D = 0 baseline, so each ratio comes from
neighbouring measurements of one run) and token scaling (`scaling_cases`: fast and reference against N).

One layer from the command line (default: one stage-3 layer of StructViT-S at 8 frames, forward + backward):

    python -m benchmarks.attention --dim 320 --heads 5 --grid 4 14 14 --structure-dim 4 --kv-stride 1 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.kernels import sdpa_kernel
from benchmarks.limits import Budget, QuadraticPredictor, check, contract_floor_bytes
from benchmarks.memory import cpu_profile, is_oom, oom_reason, operator_names, peak_bytes
from benchmarks.timing import time_call

PATHS = ("fast", "reference", "vanilla")
MODES = ("forward", "train")


@dataclass(frozen=True)
class AttentionCase:
    """One attention layer at one token grid (T, H, W): StructViT channels, heads, D, S, path and mode."""

    label: str
    dim: int
    heads: int
    grid: tuple[int, int, int]
    structure_dim: int
    kv_stride: int
    path: str
    mode: str
    batch: int = 1

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"AttentionCase.path must be one of {PATHS}, got {self.path!r}")
        if self.mode not in MODES:
            raise ValueError(f"AttentionCase.mode must be one of {MODES}, got {self.mode!r}")

    @property
    def tokens(self) -> int:
        """N = T·H·W query tokens."""
        t, h, w = self.grid
        return t * h * w

    @property
    def keys(self) -> int:
        """N' key positions per structure channel after the (1, S, S) strided convolution (padding 1)."""
        t, h, w = self.grid
        if self.path == "vanilla":
            return self.tokens
        return t * math.ceil(h / self.kv_stride) * math.ceil(w / self.kv_stride)

    @property
    def attended(self) -> int:
        """Keys each query attends over: D·N' for StructSA, N for vanilla attention."""
        return self.tokens if self.path == "vanilla" else self.keys * max(self.structure_dim, 1)

    def gmacs(self) -> float:
        """Analytic multiply-adds (G) of the forward: qkv, the two structure convs, attention, proj."""
        n, c = self.tokens, self.dim
        linear = n * c * 3 * c + n * c * c
        attention = 2 * n * self.attended * c
        convs = 0 if self.path == "vanilla" else 2 * self.keys * c * self.structure_dim * 27
        return self.batch * (linear + attention + convs) / 1e9


class PlainAttention(nn.Module):
    """Vanilla multi-head self-attention (qkv, one SDPA, proj): the D = 0 baseline if StructSA lacks D = 0."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: tuple[int, int, int] | None = None) -> Tensor:
        """(B, N, C) -> (B, N, C); `grid` is accepted for call compatibility and unused."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def build_layer(case: AttentionCase) -> tuple[nn.Module, Callable[[Tensor, tuple], Tensor], str]:
    """(module, the callable of the requested path, the implementation's name) for a case."""
    from src.models.structsa import StructSA

    if case.path == "vanilla":
        try:
            layer = StructSA(case.dim, case.heads, structure_dim=0, kv_stride=1)
            return layer, layer.forward, "StructSA(structure_dim=0).forward"
        except (ValueError, TypeError, AssertionError):
            layer = PlainAttention(case.dim, case.heads)
            return layer, layer.forward, "benchmarks.attention.PlainAttention"
    layer = StructSA(case.dim, case.heads, structure_dim=case.structure_dim, kv_stride=case.kv_stride)
    if case.path == "fast":
        return layer, layer.forward, "StructSA.forward"
    return layer, layer.forward_reference, "StructSA.forward_reference"


def _step(
    case: AttentionCase, layer: nn.Module, call: Callable, x: Tensor, grad: Tensor
) -> Callable[[], None]:
    """The measured callable: one forward (no grad) or one forward + backward with fresh gradients."""
    if case.mode == "forward":

        def forward() -> None:
            with torch.no_grad():
                call(x, case.grid)

        return forward

    def train() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        call(x, case.grid).backward(grad)

    return train


def case_row(case: AttentionCase) -> dict:
    """The JSON fields that describe a case (its settings, token counts and analytic GMACs)."""
    row = {**asdict(case), "grid": list(case.grid), "tokens": case.tokens, "keys": case.keys}
    return {**row, "attended": case.attended, "gmacs": round(case.gmacs(), 6)}


def case_key(case: AttentionCase, device: str) -> tuple:
    """What must match for one case's measurements to predict another's by N·N' scaling."""
    return (
        case.dim,
        case.heads,
        case.structure_dim,
        case.kv_stride,
        case.path,
        case.mode,
        case.batch,
        device,
    )


def _calibrate(case: AttentionCase, predictor: QuadraticPredictor, key: tuple, device: str, dtype) -> None:
    """Seed the predictor with one cheap run of the same layer on a single frame (T = 1)."""
    small = replace(case, label=case.label + "-calibration", grid=(1, *case.grid[1:]))
    row = measure_attention(small, reps=1, warmup=0, device=device, dtype=dtype)
    if row["status"] == "ok":
        predictor.record(key, small.tokens * small.keys, int(row["peak_mib"] * 2**20), row["median_ms"] / 1e3)


def measure_attention(
    case: AttentionCase,
    *,
    reps: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    budget: Budget | None = None,
    predictor: QuadraticPredictor | None = None,
    reference_reps: int | None = None,
) -> dict:
    """Median time and peak memory of one case as a JSON-ready row; reference cases over budget are skipped.

    Order of calls: one memory-profiled call (the reference path's warm-up), `warmup` untimed calls (fast and
    vanilla paths only), then `reps` timed calls (`reference_reps` for the reference path, if given).
    The row names the SDPA kernel that really ran (see benchmarks.kernels).
    """
    budget = budget or Budget()
    row = {**case_row(case), "device": device, "dtype": str(dtype)}
    key, pairs = case_key(case, device), case.tokens * case.keys
    if predictor is not None:  # every path may be quadratic (an SDPA math fallback is), so predict them all
        floor = 0
        if case.path == "reference":
            if key not in predictor.observed and case.grid[0] > 1:
                _calibrate(case, predictor, key, device, dtype)
            floor = contract_floor_bytes(case.tokens, case.keys, case.structure_dim, case.heads) * case.batch
        pred_bytes, pred_s = predictor.predict(key, pairs, floor)
        row["predicted_peak_mib"] = round(pred_bytes / 2**20, 1)
        calls = (reference_reps or reps) + 1 if case.path == "reference" else reps + warmup + 1
        time_limit = budget.seconds if case.path == "reference" else float("inf")  # sections bound the rest
        reason = check(replace(budget, seconds=time_limit), pred_bytes, pred_s, calls)
        if reason:
            return {**row, "status": "skipped", "reason": reason}
    torch.manual_seed(0)
    try:
        layer, call, impl = build_layer(case)
        layer = layer.to(device=device, dtype=dtype)
        x = torch.randn(case.batch, case.tokens, case.dim, device=device, dtype=dtype)
        x.requires_grad_(case.mode == "train")
        grad = torch.randn_like(x)
        step = _step(case, layer, call, x, grad)
        # The memory-profiled call runs first; it is the warm-up of the (slow) reference path.
        if torch.device(device).type == "cpu":
            peak, ops = cpu_profile(step)
        else:
            peak, ops = peak_bytes(step, device), operator_names(step)
        if case.path == "reference":
            reps, warmup = reference_reps or reps, 0
        timing = time_call(step, reps=reps, warmup=warmup, device=device)
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if not is_oom(err):
            raise
        return {**row, "status": "oom", "reason": oom_reason(err)}
    if predictor is not None:
        predictor.record(key, pairs, peak, timing.median_s)
    row.update(
        status="ok",
        impl=impl,
        median_ms=round(timing.median_s * 1e3, 3),
        min_ms=round(timing.min_s * 1e3, 3),
        max_ms=round(timing.max_s * 1e3, 3),
        reps=timing.reps,
        peak_mib=round(peak / 2**20, 2),
        kernel="explicit (no SDPA)" if case.path == "reference" else sdpa_kernel(ops),
    )
    return row


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
            row = {**case_row(case), "status": "skipped", "reason": reason}
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


def scaling_cases(
    token_frames: Iterable[int],
    modes: Iterable[str],
    *,
    layer: LayerShape = STAGE3_8F,
    structure_dim: int = 4,
    kv_stride: int = 1,
) -> list[AttentionCase]:
    """Fast and reference cases for each clip length T (N = H·W·T tokens of `layer`), smallest N first
    (all modes of one N before the next N, so a time budget cuts the largest N of every mode)."""
    _, h, w = layer.grid
    cases = []
    for t in sorted(token_frames):
        for mode in modes:
            for path in ("fast", "reference"):
                cases.append(
                    AttentionCase(
                        label=f"N={h * w * t}",
                        dim=layer.dim,
                        heads=layer.heads,
                        grid=(t, h, w),
                        structure_dim=structure_dim,
                        kv_stride=kv_stride,
                        path=path,
                        mode=mode,
                    )
                )
    return cases


def main(argv: list[str] | None = None) -> None:
    """One layer's fast and reference paths, forward + backward, and their time ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--grid", type=int, nargs=3, default=[4, 14, 14])
    parser.add_argument("--structure-dim", type=int, default=4)
    parser.add_argument("--kv-stride", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    grid = tuple(args.grid)
    medians = {}
    for path in ("fast", "reference"):
        case = AttentionCase(
            "cli", args.dim, args.heads, grid, args.structure_dim, args.kv_stride, path, "train", args.batch
        )
        row = measure_attention(case, reps=args.repeats, warmup=1)
        medians[path] = row["median_ms"]
        print(
            f"{path:<9} median {row['median_ms']:9.1f} ms  min {row['min_ms']:.0f}  max {row['max_ms']:.0f}  "
            f"({row['reps']} runs, peak {row['peak_mib']:.1f} MiB)"
        )
    print(
        f"reference / fast = {medians['reference'] / medians['fast']:.1f}x  "
        f"(threads {torch.get_num_threads()}, x {(args.batch, math.prod(grid), args.dim)}, grid {grid}, "
        f"D {args.structure_dim}, S {args.kv_stride})"
    )


if __name__ == "__main__":
    main()
