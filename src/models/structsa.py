"""StructSA: structural self-attention (Kim et al., CVPR 2024), fast exact form and reference form.

docs/method.md defines StructSA through channel-wise correlation maps diag(q_i)·K, convolved over the key
grid with D filters (structural query-key attention), one softmax over all N·D scores of a query, and
channel-wise value aggregators that turn the D scores into a dynamic kernel over value neighbourhoods.
Its 'Fast form' reorders the sums: the key / value convolutions can be applied to K and V first, after which
StructSA is one ordinary attention over D·N' keys. `StructSA.forward` is that fast form (one call to
`F.scaled_dot_product_attention`, no N×N tensor); `StructSA.forward_reference` is the explicit form written out, kept
to prove the fast form right; `StructSA.reference_maps` exposes the reference path's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .depthwise import DepthwiseConv3d

Grid = tuple[int, int, int]
StructInit = Literal["shifted", "random", "noisy_identity", "identity"]
STRUCT_INITS: tuple[str, ...] = get_args(StructInit)


@dataclass
class ReferenceMaps:
    """Per-head tensors of the reference path (docs/method.md, 'Explicit form') for one forward call.

    Shapes use B batch, h heads, c channels per head, N = T·H·W query tokens, N' = T'·H'·W' key
    positions (after the key/value stride), D structure dimension (1 for D = 0, vanilla attention),
    M = kT·kH·kW kernel taps.
    """

    grid: Grid  # (T, H, W) of the query tokens
    key_grid: Grid  # (T', H', W') of the keys after the stride (1, S, S)
    q: Tensor  # (B, h, N, c)
    k: Tensor  # (B, h, N, c), un-strided keys on the query grid
    v: Tensor  # (B, h, N, c)
    correlation: Tensor  # (B, h, N, c, T, H, W): q_{i,c} · k_{j,c} for every key position j
    scores: Tensor  # (B, h, N, N', D): scaled structural scores s_{i,j,d}
    attention: Tensor  # (B, h, N, N', D): joint softmax over (N', D) per query
    value_filters: Tensor  # (h, D, c, kT, kH, kW): H_V, the value aggregators per head
    context: Tensor  # (B, N, C): aggregated values before `proj`
    output: Tensor  # (B, N, C): the module output (after `proj`)

    def dynamic_kernels(self, query: int) -> Tensor:
        """Dynamic value kernel of one query: Σ_d A_{i,j,d} H_V[m,d,c], shape (B, h, N', c, kT, kH, kW)."""
        return torch.einsum("bhjd,hdcxyz->bhjcxyz", self.attention[:, :, query], self.value_filters)


def _triple(value: int | tuple[int, ...], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or any(v < 1 or v % 2 == 0 for v in value):
        raise ValueError(
            f"StructSA: {name}={value} must be three odd positive sizes (kT, kH, kW), e.g. (3, 3, 3)"
        )
    return value  # type: ignore[return-value]


def shifted_taps(kernel_size: tuple[int, int, int], count: int) -> list[tuple[int, int, int]]:
    """The `count` distinct kernel taps (t, y, x) of the "shifted" init, nearest the centre first.

    Order: the centre; the previous and next frame at the centre; the four spatial neighbours (up, down, left,
    right); the four diagonals; then every remaining tap by distance from the centre (time before space, then
    raster order). Taps outside the kernel (e.g. temporal ones of an image kernel, kT = 1) are left out.
    """
    kt, kh, kw = kernel_size
    if count > kt * kh * kw:
        raise ValueError(
            f"StructSA: shifted init needs D <= {kt * kh * kw} taps of a {kernel_size} kernel, got D={count}"
        )
    centre = (kt // 2, kh // 2, kw // 2)
    first = [
        (0, 0, 0),
        (-1, 0, 0),
        (1, 0, 0),
        (0, -1, 0),
        (0, 1, 0),
        (0, 0, -1),
        (0, 0, 1),
        (0, -1, -1),
        (0, -1, 1),
        (0, 1, -1),
        (0, 1, 1),
    ]
    rest = sorted(
        (
            (t - centre[0], y - centre[1], x - centre[2])
            for t in range(kt)
            for y in range(kh)
            for x in range(kw)
        ),
        key=lambda o: (o[0] ** 2 + o[1] ** 2 + o[2] ** 2, abs(o[0]) == 0, o),
    )
    taps: list[tuple[int, int, int]] = []
    for o in first + rest:
        tap = (centre[0] + o[0], centre[1] + o[1], centre[2] + o[2])
        if all(0 <= v < k for v, k in zip(tap, kernel_size)) and tap not in taps:
            taps.append(tap)
    return taps[:count]


class StructSA(nn.Module):
    """Structural self-attention over (B, N, C) tokens laid out on a (T, H, W) grid.

    Args:
        dim: channels C.
        num_heads: heads h; each owns C/h consecutive channels (channels h·c … h·c+c-1, as in UniFormer).
        structure_dim: D, the number of structural filters; 0 is vanilla multi-head self-attention.
        kernel_size: (kT, kH, kW) of the key/value filters (odd); images run with T = 1, where the temporal
            taps only see zero padding.
        kv_stride: S, spatial stride (1, S, S) of the key/value filters; needs D ≥ 1.
        qkv_bias: bias of the `qkv` projection.
        attn_fp32: run the attention maths (filters, softmax, aggregation) in float32 under autocast and
            cast the result back, because half-precision attention over thousands of video tokens is a
            known source of NaN losses.

    struct_init chooses how the D key/value filters start (`STRUCT_INITS`; `reset_struct_parameters`):
        "random" (default): truncated normal, std 1/sqrt(kT·kH·kW) (fan-in of one filter), cut at ±2 std.
            D distinct random structures from the first step (BENCHMARKS.md "Motion" compares the starts).
        "shifted": filter d is a delta at tap d of `shifted_taps` (centre, previous frame, next frame, the
            four spatial neighbours, ...), the same tap for its key and value filter; filter 0 is the
            identity, so D = 1 starts as vanilla attention and D > 1 starts with D distinct structures.
        "noisy_identity": every filter the identity plus truncated-normal noise of std 0.02; the D filters
            start almost equal and, trained from scratch, mostly stay so.
        "identity": every filter the centre tap; with S = 1 the module is exactly vanilla attention, which is
            what loading a plain-attention checkpoint uses (`init_identity()`); the D filters get equal
            gradients and stay equal.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        structure_dim: int = 4,
        kernel_size: int | tuple[int, int, int] = (3, 3, 3),
        kv_stride: int = 1,
        qkv_bias: bool = True,
        attn_fp32: bool = False,
        struct_init: StructInit = "random",
    ) -> None:
        super().__init__()
        if struct_init not in STRUCT_INITS:
            raise ValueError(
                f"StructSA: struct_init={struct_init!r}; choose one of {', '.join(STRUCT_INITS)}"
            )
        if dim % num_heads != 0:
            raise ValueError(
                f"StructSA: dim={dim} is not divisible by num_heads={num_heads}; pick heads dividing C"
            )
        if structure_dim < 0:
            raise ValueError(f"StructSA: structure_dim={structure_dim} must be >= 0 (0 = vanilla attention)")
        if kv_stride < 1:
            raise ValueError(f"StructSA: kv_stride={kv_stride} must be >= 1")
        if structure_dim == 0 and kv_stride != 1:
            raise ValueError(
                f"StructSA: kv_stride={kv_stride} needs structure_dim >= 1 (the stride belongs to the "
                "key/value filters); use kv_stride=1 for vanilla attention"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.structure_dim = structure_dim
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.kv_stride = kv_stride
        self.attn_fp32 = attn_fp32
        self.struct_init = struct_init
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if structure_dim > 0:
            # Grouped Conv3d(C, C·D, groups=C): output channel c·D + d is filter d of channel c.
            conv = dict(
                kernel_size=self.kernel_size,
                stride=(1, kv_stride, kv_stride),
                padding=tuple(k // 2 for k in self.kernel_size),
                bias=False,
            )
            self.k_struct: nn.Conv3d | None = DepthwiseConv3d(dim, dim * structure_dim, **conv)
            self.v_struct: nn.Conv3d | None = DepthwiseConv3d(dim, dim * structure_dim, **conv)
            self.reset_struct_parameters()
        else:
            self.k_struct = None
            self.v_struct = None

    # ------------------------------------------------------------------ initialisation
    def init_identity(self) -> None:
        """Set every key/value filter to the centre tap: with S = 1 the module is exactly vanilla attention."""
        self.reset_struct_parameters("identity")

    @torch.no_grad()
    def reset_struct_parameters(self, init: StructInit | None = None, noise_std: float = 0.02) -> None:
        """(Re)initialise the key/value filters with `init` (default: the module's `struct_init`)."""
        init = self.struct_init if init is None else init
        if init not in STRUCT_INITS:
            raise ValueError(f"StructSA: init={init!r}; choose one of {', '.join(STRUCT_INITS)}")
        for conv in (self.k_struct, self.v_struct):
            if conv is None or conv.weight.is_meta:
                continue
            w = conv.weight  # (C·D, 1, kT, kH, kW); out channel c·D + d is filter d of channel c
            if init == "random":
                std = (w[0].numel()) ** -0.5
                nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
                continue
            w.zero_()
            if init == "shifted":
                taps = shifted_taps(self.kernel_size, self.structure_dim)
                for d, (t, y, x) in enumerate(taps):
                    w[d :: self.structure_dim, 0, t, y, x] = 1.0
            else:
                kt, kh, kw = self.kernel_size
                w[:, 0, kt // 2, kh // 2, kw // 2] = 1.0
            if init == "noisy_identity":
                noise = torch.empty_like(w)
                w.add_(nn.init.trunc_normal_(noise, std=noise_std, a=-2 * noise_std, b=2 * noise_std))

    # ------------------------------------------------------------------ helpers
    def _check(self, x: Tensor, grid: Grid) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"StructSA: expected tokens (B, N, {self.dim}), got {tuple(x.shape)}")
        t, h, w = grid
        if t * h * w != x.shape[1]:
            raise ValueError(
                f"StructSA: grid {tuple(grid)} has {t * h * w} positions but x has N={x.shape[1]} tokens; "
                "pass the (T, H, W) grid the tokens were flattened from"
            )

    def key_grid(self, grid: Grid) -> Grid:
        """(T', H', W') of the keys after the (1, S, S) stride of the key/value filters."""
        t, h, w = grid
        if self.structure_dim == 0:
            return (t, h, w)
        kt, kh, kw = self.kernel_size
        s = self.kv_stride
        return (t, (h + 2 * (kh // 2) - kh) // s + 1, (w + 2 * (kw // 2) - kw) // s + 1)

    def _split_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, h, N, c) each."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    # ---------------------------------------------------- fast exact path (docs/method.md, 'Fast form')
    def _structured(self, conv: nn.Conv3d, z: Tensor, grid: Grid) -> Tensor:
        """Apply the grouped filters to z (B, h, N, c) -> (B, h, D·N', c) keys or values, d-major."""
        b, heads, n, c = z.shape
        t, h, w = grid
        z = z.transpose(2, 3).reshape(b, heads * c, t, h, w)  # channel = head·c + channel-in-head
        z = conv(z)  # (B, C·D, T', H', W'), channel c·D + d holds filter d of channel c
        d = self.structure_dim
        z = z.reshape(b, heads, c, d, -1)  # (B, h, c, D, N')
        # contiguous: SDPA's fused CPU/GPU kernels need a unit stride on the channel axis; without it they
        # fall back to the math kernel, which materialises the N x D·N' attention matrix.
        return z.permute(0, 1, 3, 4, 2).reshape(b, heads, -1, c).contiguous()

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid) -> Tensor:
        if self.structure_dim > 0:
            k = self._structured(self.k_struct, k, grid)
            v = self._structured(self.v_struct, v, grid)
        # One attention over D·N' keys: the joint softmax over (j, d) (docs/method.md, 'Fast form').
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        """Fast exact StructSA: x (B, N, C) on grid (T, H, W) -> (B, N, C)."""
        self._check(x, grid)
        b, n, _ = x.shape
        q, k, v = self._split_qkv(x)
        if self.attn_fp32 and torch.is_autocast_enabled(x.device.type):
            out_dtype = q.dtype
            with torch.autocast(device_type=x.device.type, enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), grid).to(out_dtype)
        else:
            y = self._attend(q, k, v, grid)
        return self.proj(y.transpose(1, 2).reshape(b, n, self.dim))

    # ---------------------------------------------------- reference path (docs/method.md, 'Explicit form')
    def head_filters(self, which: Literal["key", "value"]) -> Tensor:
        """The key filters H_K (`which="key"`, `k_struct`) or value filters H_V (`"value"`, `v_struct`) per
        head, as (h, D, c, kT, kH, kW); for D = 0 a single identity tap (vanilla attention)."""
        if which not in ("key", "value"):
            raise ValueError(f"head_filters: which={which!r}; use 'key' or 'value'")
        conv = self.k_struct if which == "key" else self.v_struct
        heads, c = self.num_heads, self.head_dim
        if conv is None:
            return self.qkv.weight.new_ones(heads, 1, c, 1, 1, 1)
        w = conv.weight.reshape(heads, c, self.structure_dim, *self.kernel_size)  # out channel c·D + d
        return w.transpose(1, 2)

    def reference_maps(self, x: Tensor, grid: Grid) -> ReferenceMaps:
        """docs/method.md 'Explicit form' literally: correlation maps, convolution, joint softmax, aggregation."""
        self._check(x, grid)
        b, n, _ = x.shape
        heads, c = self.num_heads, self.head_dim
        t, h, w = grid
        q, k, v = self._split_qkv(x)
        hk = self.head_filters("key")  # (h, D, c, kT, kH, kW)
        hv = self.head_filters("value")
        d = hk.shape[1]
        kernel = tuple(hk.shape[-3:])
        pad = tuple(m // 2 for m in kernel)
        stride = (1, self.kv_stride, self.kv_stride) if self.structure_dim > 0 else (1, 1, 1)

        # 1. Channel-wise correlation maps diag(q_i)·K over the key grid: (B, h, N, c, T, H, W).
        k_grid = k.transpose(2, 3).reshape(b, heads, 1, c, t, h, w)
        correlation = q[..., None, None, None] * k_grid
        # 2. Convolve each head's maps over the key axes with its D filters (summing over the c channels).
        scores = []
        for head in range(heads):
            maps = correlation[:, head].reshape(b * n, c, t, h, w)
            s = F.conv3d(maps, hk[head], stride=stride, padding=pad)  # (B·N, D, T', H', W')
            scores.append(s.reshape(b, n, d, -1).transpose(2, 3))  # (B, N, N', D)
        s = torch.stack(scores, dim=1) * self.scale  # (B, h, N, N', D)
        key_grid = self.key_grid(grid)
        # 3. One softmax over all N'·D entries of each query row.
        attn = s.reshape(b, heads, n, -1).softmax(dim=-1).reshape(s.shape)
        # 4. Contextual aggregation: unfold the value neighbourhood of every key position j,
        #    y_{i,c} = Σ_j Σ_d A_{i,j,d} Σ_m H_V[m,d,c] v_{j+δ_m,c}.
        v_grid = v.transpose(2, 3).reshape(b, heads * c, t, h, w)
        v_pad = F.pad(v_grid, (pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]))
        patches = (
            v_pad.unfold(2, kernel[0], stride[0])
            .unfold(3, kernel[1], stride[1])
            .unfold(4, kernel[2], stride[2])
        )
        # (B, C, T', H', W', kT, kH, kW) -> (B, h, N', c, kT, kH, kW)
        patches = patches.reshape(b, heads, c, -1, *kernel).transpose(2, 3)
        per_tap = torch.einsum("bhijd,bhjcxyz->bhidcxyz", attn, patches)
        context = torch.einsum("bhidcxyz,hdcxyz->bihc", per_tap, hv).reshape(b, n, self.dim)
        output = self.proj(context)
        return ReferenceMaps(
            grid=tuple(grid),
            key_grid=key_grid,
            q=q,
            k=k,
            v=v,
            correlation=correlation,
            scores=s,
            attention=attn,
            value_filters=hv,
            context=context,
            output=output,
        )

    def forward_reference(self, x: Tensor, grid: Grid) -> Tensor:
        """Reference StructSA (docs/method.md, 'Explicit form'): x (B, N, C) on grid (T, H, W) -> (B, N, C)."""
        return self.reference_maps(x, grid).output

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.num_heads}, D={self.structure_dim}, kernel={self.kernel_size}, "
            f"kv_stride={self.kv_stride}, attn_fp32={self.attn_fp32}, struct_init={self.struct_init}"
        )


__all__ = ["STRUCT_INITS", "Grid", "ReferenceMaps", "StructInit", "StructSA", "shifted_taps"]
