"""Time and peak memory of one attention layer (StructSA fast / reference path, or vanilla attention).

A case is one layer at one token grid. "forward" runs under `torch.no_grad()` (inference); "train" runs
forward and backward (input and parameter gradients), as one step of training would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.kernels import sdpa_kernel
from benchmarks.limits import Budget, QuadraticPredictor, check, contract_floor_bytes
from benchmarks.memory import cpu_profile, operator_names, peak_bytes
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
    row = {**asdict(case), "grid": list(case.grid), "tokens": case.tokens, "keys": case.keys}
    row.update(attended=case.attended, gmacs=round(case.gmacs(), 6), device=device, dtype=str(dtype))
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
    except (torch.OutOfMemoryError, MemoryError) as err:
        return {**row, "status": "oom", "reason": f"out of memory: {str(err).splitlines()[0][:200]}"}
    except RuntimeError as err:
        if "alloc" in str(err).lower() or "out of memory" in str(err).lower():
            return {**row, "status": "oom", "reason": f"out of memory: {str(err).splitlines()[0][:200]}"}
        raise
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
