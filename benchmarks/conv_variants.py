"""Candidate faster forms of the depthwise / grouped Conv3d of StructViT, timed against the current form.

StructSA filters keys and values with two grouped Conv3d (C -> C·D, groups = C) fed from views of the
qkv projection (`StructSA._structured`). Candidates: one grouped convolution over K and V together (the
qkv output's K and V channels are one strided view, so the fused input costs no copy), and inputs in
`channels_last_3d` or plain contiguous NCDHW layout. UniFormer's conv blocks run 5x5x5 and 3x3x3 depthwise
Conv3d on contiguous NCDHW tensors; candidate: `channels_last_3d`. Every variant runs forward + backward
(input and weight gradients) side by side with the current form, with cuDNN autotuning
(`torch.backends.cudnn.benchmark`) off (Lightning's default) and on, and is compared with the current form
in float32 with TF32 off: "exact" means outputs and gradients agree within 1e-5 relative (two cuDNN
algorithms may sum in different orders, so bit equality is not expected).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.cuda_paths import exact_fp32, relative_error
from benchmarks.timing import time_call

EXACT_REL = 1e-5
CHANNELS_LAST = torch.channels_last_3d


@dataclass(frozen=True)
class KVShape:
    """The K/V structure convolutions of one StructSA layer: channels, heads, grid, batch, D, S."""

    label: str
    dim: int
    heads: int
    grid: tuple[int, int, int]
    batch: int
    structure_dim: int = 4
    kv_stride: int = 1


@dataclass(frozen=True)
class DepthwiseShape:
    """One depthwise Conv3d of a conv block: channels, kernel size, (T, H, W) and batch."""

    label: str
    dim: int
    kernel: int
    grid: tuple[int, int, int]
    batch: int


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN autotuning on or off for the block; restores the previous setting."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _kv_convs(shape: KVShape, device: str, dtype: torch.dtype):
    """(K conv, V conv, fused conv) with the fused weights = [K weights; V weights], as StructSA builds them."""
    from src.models.depthwise import DepthwiseConv3d

    c, d, s = shape.dim, shape.structure_dim, shape.kv_stride
    conv = dict(kernel_size=(3, 3, 3), stride=(1, s, s), padding=(1, 1, 1), bias=False)
    torch.manual_seed(0)
    k_conv, v_conv = DepthwiseConv3d(c, c * d, **conv), DepthwiseConv3d(c, c * d, **conv)
    fused = DepthwiseConv3d(2 * c, 2 * c * d, **conv)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([k_conv.weight, v_conv.weight]))
    return [m.to(device=device, dtype=dtype) for m in (k_conv, v_conv, fused)]


def _structured(z: Tensor, shape: KVShape) -> Tensor:
    """Conv output (B, C·D, T', H', W') -> (B, h, D·N', c), as `StructSA._structured` lays it out."""
    b, heads, c = z.shape[0], shape.heads, shape.dim // shape.heads
    z = z.reshape(b, heads, c, shape.structure_dim, -1)
    return z.permute(0, 1, 3, 4, 2).reshape(b, heads, -1, c).contiguous()


def kv_variants(shape: KVShape, convs) -> dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]]:
    """name -> function(qkv output (B, N, 3C)) -> (structured K, structured V)."""
    k_conv, v_conv, fused = convs
    c, (t, h, w) = shape.dim, shape.grid

    def grid_view(qkv: Tensor, first: int, channels: int) -> Tensor:
        # channels [first, first + channels) of the qkv output on the (T, H, W) grid: the strides of
        # StructSA._structured's conv input (channel stride 1, spatial stride 3C), no copy
        return qkv[:, :, first : first + channels].transpose(1, 2).reshape(qkv.shape[0], channels, t, h, w)

    def separate(fmt: torch.memory_format | None) -> Callable:
        def run(qkv: Tensor) -> tuple[Tensor, Tensor]:
            zk, zv = grid_view(qkv, c, c), grid_view(qkv, 2 * c, c)
            if fmt is not None:
                zk, zv = zk.contiguous(memory_format=fmt), zv.contiguous(memory_format=fmt)
            return _structured(k_conv(zk), shape), _structured(v_conv(zv), shape)

        return run

    def fused_kv(fmt: torch.memory_format | None) -> Callable:
        def run(qkv: Tensor) -> tuple[Tensor, Tensor]:
            z = grid_view(qkv, c, 2 * c)
            if fmt is not None:
                z = z.contiguous(memory_format=fmt)
            out = fused(z)
            half = c * shape.structure_dim
            return _structured(out[:, :half], shape), _structured(out[:, half:], shape)

        return run

    return {
        "separate (current)": separate(None),
        "separate, contiguous NCDHW": separate(torch.contiguous_format),
        "separate, channels_last_3d": separate(CHANNELS_LAST),
        "fused K+V": fused_kv(None),
        "fused K+V, channels_last_3d": fused_kv(CHANNELS_LAST),
    }


def _train_step(
    fn: Callable[[Tensor], tuple[Tensor, ...]], x: Tensor, params: list[Tensor]
) -> Callable[[], None]:
    """Forward + backward of `fn(x)` with fixed output gradients (fresh input and weight gradients)."""
    grads: list[Tensor] = []

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        outs = fn(x)
        if not grads:
            gen = torch.Generator().manual_seed(3)
            grads.extend(torch.randn(o.shape, generator=gen).to(o) for o in outs)
        torch.autograd.backward(outs, grads)

    return step


def _results(fn: Callable, x: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Outputs, input gradient and weight gradients of one forward + backward (float32 comparisons)."""
    step = _train_step(fn, x, params)
    step()
    outs = [o.detach() for o in fn(x)]
    return outs + [x.grad.clone()] + [p.grad.clone() for p in params if p.grad is not None]


def _agreement(candidate: list[Tensor], current: list[Tensor]) -> float:
    return max(relative_error(a, b) for a, b in zip(candidate, current))


def _time(step: Callable[[], None], device: str, reps: int, warmup: int, benchmark: bool) -> float:
    with cudnn_benchmark(benchmark):
        return time_call(step, reps=reps, warmup=warmup, device=device).median_s * 1e3


def measure_kv(shape: KVShape, device: str, dtype: torch.dtype, *, reps: int, warmup: int) -> list[dict]:
    """One row per K/V variant: forward + backward ms (cuDNN autotuning off / on), ratio to current, exact?"""
    n = math.prod(shape.grid)
    gen = torch.Generator().manual_seed(1)
    x32 = torch.randn(shape.batch, n, 3 * shape.dim, generator=gen).to(device).requires_grad_(True)
    convs32 = _kv_convs(shape, device, torch.float32)
    variants32 = kv_variants(shape, convs32)
    params32 = [m.weight for m in convs32]
    with exact_fp32():
        current = _results(variants32["separate (current)"], x32, params32[:2])
        errors = {}
        for name, fn in variants32.items():
            used = params32[2:] if name.startswith("fused") else params32[:2]
            got = _results(fn, x32, used)
            if name.startswith("fused"):  # one weight gradient: compare it with [dK; dV]
                got = got[:-1] + [
                    got[-1][: shape.dim * shape.structure_dim],
                    got[-1][shape.dim * shape.structure_dim :],
                ]
            errors[name] = _agreement(got, current)
    convs = _kv_convs(shape, device, dtype)
    variants = kv_variants(shape, convs)
    x = x32.detach().to(dtype).requires_grad_(True)
    rows = []
    for name, fn in variants.items():
        params = [convs[2].weight] if name.startswith("fused") else [convs[0].weight, convs[1].weight]
        step = _train_step(fn, x, params)
        where = {"item": "kv_structure", "shape": shape.label, "D": shape.structure_dim, "S": shape.kv_stride}
        rows.append(_timed_row(where, name, dtype, device, step, reps, warmup, errors[name]))
    return _with_ratios(rows)


def measure_depthwise(
    shape: DepthwiseShape, device: str, dtype: torch.dtype, *, reps: int, warmup: int
) -> list[dict]:
    """One row per layout (contiguous NCDHW = current, channels_last_3d) of a conv block's depthwise Conv3d."""
    from src.models.depthwise import DepthwiseConv3d

    torch.manual_seed(0)
    k = shape.kernel
    conv32 = DepthwiseConv3d(shape.dim, shape.dim, (k, k, k), padding=(k // 2,) * 3).to(device)
    gen = torch.Generator().manual_seed(1)
    x32 = torch.randn(shape.batch, shape.dim, *shape.grid, generator=gen).to(device).requires_grad_(True)
    layouts = {"contiguous NCDHW (current)": torch.contiguous_format, "channels_last_3d": CHANNELS_LAST}

    def variant(conv, fmt) -> Callable[[Tensor], tuple[Tensor]]:
        return lambda x: (conv(x.contiguous(memory_format=fmt)),)

    with exact_fp32():
        current = _results(variant(conv32, torch.contiguous_format), x32, [conv32.weight, conv32.bias])
        errors = {
            name: _agreement(_results(variant(conv32, fmt), x32, [conv32.weight, conv32.bias]), current)
            for name, fmt in layouts.items()
        }
    rows = []
    for name, fmt in layouts.items():
        conv = copy.deepcopy(conv32).to(dtype=dtype, memory_format=fmt)
        x = x32.detach().to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
        step = _train_step(variant(conv, fmt), x, [conv.weight, conv.bias])
        where = {"item": "depthwise", "shape": shape.label, "kernel": k}
        rows.append(_timed_row(where, name, dtype, device, step, reps, warmup, errors[name]))
    return _with_ratios(rows)


def _timed_row(
    where: dict, name: str, dtype: torch.dtype, device: str, step, reps: int, warmup: int, error: float
) -> dict:
    """One variant's row: where it was measured, its time with cuDNN autotuning off and on, its agreement."""
    return {
        **where,
        "variant": name,
        "dtype": str(dtype),
        "device": device,
        "status": "ok",
        "ms": round(_time(step, device, reps, warmup, False), 3),
        "ms_cudnn_benchmark": round(_time(step, device, reps, warmup, True), 3),
        "rel_err_vs_current": error,
        "exact": error <= EXACT_REL,
    }


def _with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's time over the current form's (autotuning off), both settings; < 1 is faster."""
    base = rows[0]["ms"]
    for row in rows:
        row["vs_current"] = round(row["ms"] / base, 3) if base else None
        row["benchmark_vs_current"] = round(row["ms_cudnn_benchmark"] / base, 3) if base else None
    return rows
