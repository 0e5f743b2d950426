"""Correctness of the CUDA paths: StructSA fast vs reference, SDPA kernels, bf16 training, torch.compile.

Every function takes the device and its shapes, so the tests in tests/gpu run the same lines on CUDA at the
paper's shapes (`make gpu-check`) and on CPU at tiny shapes (`make gpu-check DEVICE=cpu`, run by
`make test`); only what needs CUDA itself (the CUDA kernel names, inductor code generation) differs.

Bounds, all relative to the largest magnitude of the exact result (max |a - b| / max |b|):
- float32 fast vs reference path, outputs and gradients: 1e-4. Both paths run the same maths in
  another order; float32 rounding gives ~1e-6, so 1e-4 leaves room for long reductions and still catches
  any wrong tap, scale or layout (O(1) errors). TF32 is switched off for this comparison.
- bf16 autocast vs the float64 reference path: 8 units of bf16 roundoff (8 · 2⁻⁸ = 3.1e-2). The input,
  q / k / v, the scores, the probabilities, the output and `proj` each round once to bf16; measured on CPU
  the error is 1.1-1.6 units with `attn_fp32` on or off (qkv and proj stay bf16 either way), so 8 units
  leave room for the fused kernels' own bf16 roundings while an actual bug is O(1).
- torch.compile vs eager (whole model, bf16 autocast): the compiled output's error against the eager
  float32 output may be at most twice the eager bf16 output's own error (or 8 units if that is smaller):
  compiling may reorder and fuse, but must not add more error than a second bf16 rounding of everything.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.kernels import sdpa_kernels
from benchmarks.memory import operator_names
from benchmarks.timing import synchronize, time_call

BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
FP32_REL_BOUND = 1e-4
BF16_REL_BOUND = 8 * BF16_UNIT
# StructSA (D, S) of every config: D = 0 is UniFormer, 1 ConvSA, 4 the paper's, 8 the ablation's largest
STRUCTSA_CONFIGS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (1, 2), (4, 1), (4, 2), (8, 1), (8, 2))
PRECISIONS = ("bf16-mixed", "bf16-mixed+attn_fp32", "32-true")
FUSED_KERNELS = {"cuda": ("flash", "mem-efficient", "cudnn"), "cpu": ("flash-cpu",)}


@dataclass(frozen=True)
class AttentionShape:
    """One StructSA layer input: channels, heads (head dim = dim / heads), token grid (T, H, W) and batch."""

    label: str
    dim: int
    heads: int
    grid: tuple[int, int, int]
    batch: int = 1

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)


@dataclass(frozen=True)
class ModelInput:
    """A registry model with overrides at one input (batch, frames, size)."""

    label: str
    name: str
    overrides: dict = field(default_factory=dict)
    batch: int = 2
    frames: int = 16
    size: int = 224


@dataclass(frozen=True)
class PathShapes:
    """What the correctness tests run on one device: layer shapes, models, compile backend."""

    device: str
    fast_vs_reference: AttentionShape
    kernel_shapes: tuple[AttentionShape, ...]
    step_models: tuple[ModelInput, ...]
    compile_model: ModelInput
    compile_backend: str
    compile_reps: int
    notes: tuple[str, ...] = ()


# StructViT-S stage 3 (C = 320, 5 heads) and stage 4 (C = 512, 8 heads), head dim 64, at 8 and 16 frames.
SHAPES: dict[str, PathShapes] = {
    "cuda": PathShapes(
        device="cuda",
        fast_vs_reference=AttentionShape("stage3 8x224² (N=784), batch 2", 320, 5, (4, 14, 14), batch=2),
        kernel_shapes=(
            AttentionShape("stage3 16x224² (N=1568), batch 1", 320, 5, (8, 14, 14)),
            AttentionShape("stage4 16x224² (N=392), batch 1", 512, 8, (8, 7, 7)),
        ),
        step_models=(
            ModelInput("structvit_s (S=1)", "structvit_s", {"kv_stride": 1}),
            ModelInput("structvit_s_4_2 (S=2)", "structvit_s", {"kv_stride": 2}),
        ),
        compile_model=ModelInput("structvit_s_4_2 (S=2)", "structvit_s", {"kv_stride": 2}, batch=8),
        compile_backend="inductor",
        compile_reps=5,
    ),
    "cpu": PathShapes(
        device="cpu",
        fast_vs_reference=AttentionShape("tiny (N=32), head dim 64", 128, 2, (2, 4, 4)),
        kernel_shapes=(AttentionShape("tiny (N=32), head dim 64", 128, 2, (2, 4, 4)),),
        # structvit_xs (1.2 M parameters) runs the same lines as StructViT-S (21 M) in a fraction of the time
        step_models=(ModelInput("structvit_xs (S=2)", "structvit_xs", {"kv_stride": 2}, frames=4, size=32),),
        compile_model=ModelInput("structvit_xs", "structvit_xs", {}, batch=2, frames=4, size=32),
        compile_backend="aot_eager",
        compile_reps=1,
        notes=(
            "dry run: tiny shapes; the CUDA kernel names are checked on CUDA only (here: the fused CPU kernel)",
            "torch.compile uses the aot_eager backend on CPU (dynamo + AOTAutograd tracing of the real model; "
            "inductor's C++ code generation takes minutes on 2 cores), inductor on CUDA",
        ),
    ),
}


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|, computed in float64 (0 if both are zero)."""
    a, e = actual.detach().double(), expected.detach().double().to(actual.device)
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item()
    return diff / scale if scale > 0 else diff


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Switch TF32 off in cuBLAS and cuDNN (a float32 comparison must not run 10-bit matmuls); restores."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def structsa_layer(
    shape: AttentionShape, d: int, s: int, device: str, *, attn_fp32: bool = False, seed: int = 0
):
    """A StructSA with generic filters (std 1/√taps: every tap matters, unit gain) on `device`."""
    from src.models.structsa import StructSA

    torch.manual_seed(seed)
    layer = StructSA(shape.dim, shape.heads, structure_dim=d, kv_stride=s, attn_fp32=attn_fp32)
    if d > 0:
        with torch.no_grad():
            std = math.prod(layer.kernel_size) ** -0.5
            layer.k_struct.weight.normal_(std=std)
            layer.v_struct.weight.normal_(std=std)
    return layer.to(device)


def _inputs(shape: AttentionShape, device: str, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.batch, shape.tokens, shape.dim, generator=gen)
    return x.to(device), torch.randn(x.shape, generator=gen).to(device)


def _output_and_grads(
    layer, call: Callable, x: Tensor, grad: Tensor, grid
) -> tuple[Tensor, dict[str, Tensor]]:
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    y = call(x, grid)
    y.backward(grad)
    return y.detach(), {"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


def fp32_fast_vs_reference(shape: AttentionShape, d: int, s: int, device: str) -> dict:
    """Relative error of the fast path against the reference path in float32: output and every gradient."""
    layer = structsa_layer(shape, d, s, device)
    x, grad = _inputs(shape, device)
    with exact_fp32():
        fast, fast_grads = _output_and_grads(layer, layer.forward, x, grad, shape.grid)
        ref, ref_grads = _output_and_grads(layer, layer.forward_reference, x, grad, shape.grid)
    grad_errors = {name: relative_error(fast_grads[name], ref_grads[name]) for name in ref_grads}
    worst = max(grad_errors, key=grad_errors.get)
    return {
        "shape": shape.label,
        "D": d,
        "S": s,
        "device": device,
        "precision": "fp32",
        "output_rel_err": relative_error(fast, ref),
        "grad_rel_err": grad_errors[worst],
        "worst_grad": worst,
        "bound": FP32_REL_BOUND,
    }


def bf16_fast_errors(shape: AttentionShape, d: int, s: int, device: str) -> dict:
    """Relative error of the fast path under bf16 autocast, attn_fp32 off and on, against float64 reference."""
    layer = structsa_layer(shape, d, s, device)
    x, _ = _inputs(shape, device)
    with torch.no_grad():
        exact = copy.deepcopy(layer).double().forward_reference(x.double(), shape.grid)
        errors = {}
        for attn_fp32 in (False, True):
            layer.attn_fp32 = attn_fp32
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                errors[attn_fp32] = relative_error(layer(x, shape.grid), exact)
    return {
        "shape": shape.label,
        "D": d,
        "S": s,
        "device": device,
        "precision": "bf16-autocast",
        "rel_err_attn_fp32_off": errors[False],
        "rel_err_attn_fp32_on": errors[True],
        "units_of_bf16_roundoff": [round(errors[False] / BF16_UNIT, 2), round(errors[True] / BF16_UNIT, 2)],
        "bound": BF16_REL_BOUND,
    }


def _autocast(device: str, precision: str):
    """The autocast context of a Lightning precision name (bf16-mixed, or none for 32-true)."""
    if precision.startswith("bf16-mixed"):
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sdpa_kernels_used(shape: AttentionShape, d: int, s: int, device: str, precision: str) -> dict:
    """The SDPA kernels one forward + backward of StructSA really runs (profiler), at `precision`."""
    layer = structsa_layer(shape, d, s, device, attn_fp32=precision.endswith("attn_fp32"))
    x, grad = _inputs(shape, device)
    x.requires_grad_(True)

    def step() -> None:
        with _autocast(device, precision):
            y = layer(x, shape.grid)
        y.float().backward(grad)

    step()  # warm-up outside the profiler (kernel selection, lazy init)
    synchronize(device)
    kernels = sdpa_kernels(operator_names(step))
    return {
        "shape": shape.label,
        "D": d,
        "S": s,
        "device": device,
        "precision": precision,
        "kernels": kernels,
        "allowed": list(FUSED_KERNELS[torch.device(device).type]),
    }


def _build(model: ModelInput, device: str, num_classes: int = 400):
    from src.models import build_model

    torch.manual_seed(0)
    net = build_model(model.name, num_classes=num_classes, **{"drop_path_rate": 0.0, **model.overrides})
    clips = torch.randn(
        model.batch, 3, model.frames, model.size, model.size, generator=torch.Generator().manual_seed(2)
    )
    labels = torch.arange(model.batch) % num_classes
    return net.to(device).train(), clips.to(device), labels.to(device)


def bf16_training_step(model: ModelInput, device: str) -> dict:
    """One bf16-mixed training step (forward, loss, backward, AdamW): is everything finite? which SDPA ran?"""
    net, clips, labels = _build(model, device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, "bf16-mixed"):
            loss = F.cross_entropy(net(clips), labels)
        loss.backward()
        losses.append(loss.item())

    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    finite_grads = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    grad_norm = torch.linalg.vector_norm(
        torch.stack([g.float().norm() for g in grads if g is not None])
    ).item()
    optimizer.step()
    finite_params = all(bool(torch.isfinite(p).all()) for p in net.parameters())
    kernels = sdpa_kernels(operator_names(step))  # a second step, profiled
    return {
        "model": model.label,
        "input": [model.batch, 3, model.frames, model.size, model.size],
        "device": device,
        "loss": losses[0],
        "finite_loss": all(math.isfinite(v) for v in losses),
        "finite_grads": finite_grads,
        "finite_params_after_step": finite_params,
        "grad_norm": grad_norm,
        "first_step_s": round(seconds, 3),
        "sdpa_kernels": kernels,
        "allowed": list(FUSED_KERNELS[torch.device(device).type]),
    }


def _dynamo_counts() -> dict:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def compile_vs_eager(model: ModelInput, device: str, backend: str, reps: int) -> dict:
    """torch.compile of the whole model against eager: output error (bf16 autocast), training-step and
    inference times (mode "default", as `--model.compile`).

    Outputs are compared before any optimiser step, in train mode with drop path off (BatchNorm then uses
    batch statistics, deterministic); the bound is in the module docstring. Inference (eval mode, no_grad, its
    own compiled graph) is timed after the training steps, eager and compiled interleaved; its output
    difference to eager bf16 is recorded, not bounded (both sides round to bf16).
    """
    import torch._dynamo

    torch._dynamo.reset()
    net, clips, labels = _build(model, device)
    with torch.no_grad():
        with exact_fp32():
            exact = net(clips)
        with _autocast(device, "bf16-mixed"):
            eager = net(clips)
    compiled = torch.compile(net, backend=backend)
    start = time.perf_counter()
    with _autocast(device, "bf16-mixed"):
        out = compiled(clips)
    F.cross_entropy(out.float(), labels).backward()  # compiles the backward too
    synchronize(device)
    compile_s = time.perf_counter() - start
    eager_err, compiled_err = relative_error(eager, exact), relative_error(out, exact)
    bound = max(2 * eager_err, BF16_REL_BOUND)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def train_step(forward: Callable) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, "bf16-mixed"):
                loss = F.cross_entropy(forward(clips), labels)
            loss.backward()
            optimizer.step()

        return step

    eager_step, compiled_step = train_step(net), train_step(compiled)
    for step in (eager_step, compiled_step):
        time_call(step, reps=1, warmup=1, device=device)  # warm-up; creates the optimiser state
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(reps):  # interleaved, so a drift in the host's load hits both alike
        times["eager"].append(time_call(eager_step, reps=1, warmup=0, device=device).median_s)
        times["compiled"].append(time_call(compiled_step, reps=1, warmup=0, device=device).median_s)
    eager_ms, compiled_ms = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
    inference = _inference_vs_eager(net, compiled, clips, device, reps)
    return {
        "model": model.label,
        "input": [model.batch, 3, model.frames, model.size, model.size],
        "device": device,
        "backend": backend,
        "compile_s": round(compile_s, 1),
        "rel_err_compiled": compiled_err,
        "rel_err_eager_bf16": eager_err,
        "bound": bound,
        "eager_step_ms": round(eager_ms, 2),
        "compiled_step_ms": round(compiled_ms, 2),
        "compiled_vs_eager": round(compiled_ms / eager_ms, 3),
        **inference,
        "reps": reps,
        **_dynamo_counts(),
    }


def _inference_vs_eager(
    net: torch.nn.Module, compiled: Callable, clips: Tensor, device: str, reps: int
) -> dict:
    """Eval-mode forward under no_grad and bf16 autocast, eager and compiled: compile time, output difference,
    median time of `reps` interleaved calls."""
    net.eval()

    def forward(fn: Callable) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.no_grad(), _autocast(device, "bf16-mixed"):
                return fn(clips)

        return call

    eager_call, compiled_call = forward(net), forward(compiled)
    eager = eager_call()
    start = time.perf_counter()
    out = compiled_call()
    synchronize(device)
    compile_s = time.perf_counter() - start
    time_call(eager_call, reps=1, warmup=1, device=device)
    time_call(compiled_call, reps=1, warmup=1, device=device)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(reps):
        times["eager"].append(time_call(eager_call, reps=1, warmup=0, device=device).median_s)
        times["compiled"].append(time_call(compiled_call, reps=1, warmup=0, device=device).median_s)
    net.train()
    eager_ms, compiled_ms = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
    return {
        "inference_compile_s": round(compile_s, 1),
        "inference_rel_diff": relative_error(out, eager),
        "eager_inference_ms": round(eager_ms, 2),
        "compiled_inference_ms": round(compiled_ms, 2),
        "compiled_vs_eager_inference": round(compiled_ms / eager_ms, 3),
    }
