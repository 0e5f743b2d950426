"""Figures of what StructSA sees: correlation maps, structural attention, context aggregators, dynamic kernels.

`python -m src.visualize --model structvit_xs --video clip.mp4 --out figs/` (random weights) or
`--ckpt run/checkpoints/last.ckpt` (a trained model) writes PNG files for one attention layer
(`--stage`, `--block`; models without stages, such as pure_attention_tiny, take `--block` only), one head
(`--head`) and one query token (`--query t,y,x` on that layer's token grid):

1. `correlation.png`: the query-key correlation q_i . k_j over the whole clip, one panel per token frame,
   over the input frames (the paper's Fig. 1b).
2. `structural_attention.png`: the D maps A_{i,j,d} of the query with the shared colour scale of the
   joint softmax over (j, d) (Fig. 2a).
3. `aggregators.png`: the D learned context aggregators H_V of the head (`v_struct` filters, averaged over
   the head's channels) as 3x3x3 kernels (Fig. 2b); `key_filters.png`: the D key filters H_K (`k_struct`),
   the structures the query's correlation map is matched against (e.g. "the same colour one frame later,
   one cell to the right" in a model trained on moving dots).
4. `dynamic_kernel.png`: the dynamic kernel kappa_{i,i} = sum_d A_{i,i,d} H_V[:, d, c] of the query's own
   neighbourhood, averaged over the head's channels (Fig. 3).
5. `vanilla_attention.png`: the attention map of the same query in a D = 0 twin of the model (every
   StructSA replaced by plain attention with the same qkv / proj weights, all other weights shared).
6. `overview.png`: frames, correlation, the D attention maps and the vanilla map in one picture.

The clip is one view made the way prediction makes it, by the checkpoint's evaluation protocol (frames,
sampling, crop, mean / std; a `--model` without checkpoint: the DataModule's defaults), so the figures show
what the model is evaluated on. Every value comes from the model's own tensors: a forward pre-hook captures the input of the chosen
attention module and `StructSA.reference_maps` (docs/method.md, 'Explicit form') gives the maps.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from src.data.protocol import EvalProtocol  # noqa: E402
from src.data.transforms import denormalize  # noqa: E402

log = logging.getLogger(__name__)

FIGURE_NAMES = (
    "correlation",
    "structural_attention",
    "aggregators",
    "key_filters",
    "dynamic_kernel",
    "vanilla_attention",
    "overview",
)


@dataclass
class StructureMaps:
    """What the figures show for one (layer, head, query), as CPU float tensors.

    frames: (T, H, W, 3) input frames in [0, 1]; query_grid (T', H', W') the layer's token grid;
    key_grid the grid of the structural keys (spatially strided by kv_stride); query (t, y, x) on
    query_grid; correlation (T', H', W') = scale * q_i . k_j; attention (D, T', H'', W'') = A_{i,j,d}
    (sums to 1 over j and d jointly); aggregators (D, 3, 3, 3) = H_V of the head averaged over its
    channels; dynamic_kernel (3, 3, 3) = sum_d A_{i,i,d} H_V[:, d, c] averaged over the head's channels;
    vanilla (T', H', W') = the D = 0 twin's attention of the same query, or None.
    """

    frames: Tensor
    query_grid: tuple[int, int, int]
    key_grid: tuple[int, int, int]
    query: tuple[int, int, int]
    stage: int
    block: int
    head: int
    correlation: Tensor
    attention: Tensor
    aggregators: Tensor
    dynamic_kernel: Tensor
    vanilla: Tensor | None = None
    key_filters: Tensor | None = None  # (D, kT, kH, kW): H_K of the head averaged over its channels
    title: str = ""

    @property
    def structure_dim(self) -> int:
        """D, the number of structural attention maps."""
        return int(self.attention.shape[0])


# ---------------------------------------------------------------------------------------------------------
# Reading the model's own tensors
# ---------------------------------------------------------------------------------------------------------


def attention_blocks(model: nn.Module, stage: int) -> nn.ModuleList | None:
    """The blocks of stage `stage` (UniFormer names: `blocks{stage}`), or `blocks` of a model without stages."""
    blocks = getattr(model, f"blocks{stage}", None)
    if blocks is None and not hasattr(model, "blocks1"):
        blocks = getattr(model, "blocks", None)  # e.g. pure_attention_tiny: one list of attention blocks
    return blocks


def layer_name(model: nn.Module, stage: int, block: int) -> str:
    """'stage 3 block 1', or 'block 1' for a model without stages (pure_attention_tiny)."""
    return f"stage {stage} block {block}" if hasattr(model, "blocks1") else f"block {block}"


def attention_module(model: nn.Module, stage: int, block: int) -> nn.Module:
    """The attention module of block `block` of stage `stage` (UniFormer names: `blocks{stage}[block].attn`)."""
    blocks = attention_blocks(model, stage)
    if blocks is None:
        raise ValueError(
            f"stage {stage}: the model has no `blocks{stage}`; stages are 1..4 (attention in 3 and 4)"
        )
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(
            f"block {block}: stage {stage} has {len(blocks)} blocks (valid: 0..{len(blocks) - 1} or negative)"
        )
    attn = getattr(blocks[block], "attn", None)
    if attn is None or not hasattr(attn, "qkv"):
        raise ValueError(
            f"stage {stage} block {block} is a convolution block without self-attention; "
            "choose an attention stage (--stage 3 or 4)"
        )
    return attn


def capture_attention_input(
    model: nn.Module, video: Tensor, stage: int, block: int
) -> tuple[nn.Module, Tensor, tuple[int, int, int], Tensor]:
    """Run `model` on `video` (B, 3, T, H, W) and return (attention module, its input x (B, N, C), grid, logits).

    A forward pre-hook records the input of the chosen StructSA, so the maps are computed from exactly
    the tokens the model attended over.
    """
    attn = attention_module(model, stage, block)
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]
        grid = args[1] if len(args) > 1 else kwargs["grid"]
        seen["x"], seen["grid"] = x.detach(), tuple(int(g) for g in grid)

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()  # BatchNorm running statistics, no drop path: the maps of the model as evaluated
    try:
        with torch.no_grad():
            logits = model(video)
    finally:
        handle.remove()
        model.train(was_training)
    if "x" not in seen:
        raise RuntimeError(
            f"stage {stage} block {block}: the attention module was not called in the forward pass"
        )
    return attn, seen["x"], seen["grid"], logits.detach()


def flat_index(pos: Sequence[int], grid: Sequence[int]) -> int:
    """Row-major index of (t, y, x) in a (T, H, W) grid (the token order of flatten(2))."""
    t, y, x = pos
    return (t * grid[1] + y) * grid[2] + x


def key_position(
    query: Sequence[int], query_grid: Sequence[int], key_grid: Sequence[int]
) -> tuple[int, int, int]:
    """The key token that covers query position `query` when keys are spatially strided (j = i for stride 1)."""
    return tuple(min(q * k // g, k - 1) for q, g, k in zip(query, query_grid, key_grid))  # type: ignore[return-value]


def parse_query(text: str | None, grid: Sequence[int]) -> tuple[int, int, int]:
    """Parse "t,y,x" on the layer's token grid; None means the centre of the middle frame."""
    if text is None:
        return (grid[0] // 2, grid[1] // 2, grid[2] // 2)
    try:
        pos = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        pos = ()
    if len(pos) != 3:
        raise ValueError(f"--query {text!r}: expected three integers t,y,x on the token grid {tuple(grid)}")
    for name, v, g in zip("tyx", pos, grid):
        if not 0 <= v < g:
            raise ValueError(
                f"--query {text!r}: {name}={v} is outside the layer's token grid (T, H, W) = {tuple(grid)}"
            )
    return pos  # type: ignore[return-value]


def compute_structure_maps(
    model: nn.Module,
    video: Tensor,
    *,
    stage: int = 3,
    block: int = -1,
    head: int = 0,
    query: str | Sequence[int] | None = None,
    vanilla_model: nn.Module | None = None,
    frames: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> StructureMaps:
    """Compute every map the figures show for one clip `video` (1, 3, T, H, W), normalised as in training.

    `frames` (T, H, W, 3) in [0, 1] are what the panels are drawn over; without them, `video` de-normalised
    with the `mean` / `std` it was normalised with (the run's or the checkpoint's protocol).
    `vanilla_model` is a D = 0 twin (see `vanilla_twin`); None leaves the comparison out.
    """
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(f"video must be (1, 3, T, H, W), got {tuple(video.shape)}")
    attn, x, grid, logits = capture_attention_input(model, video, stage, block)
    block = block % len(attention_blocks(model, stage))
    if not hasattr(attn, "reference_maps"):
        raise TypeError(
            f"stage {stage} block {block}: {type(attn).__name__} has no reference_maps (not a StructSA)"
        )
    num_heads = int(attn.num_heads)
    if not 0 <= head < num_heads:
        raise ValueError(f"--head {head}: stage {stage} attention has {num_heads} heads (0..{num_heads - 1})")
    pos = parse_query(query if query is None or isinstance(query, str) else ",".join(map(str, query)), grid)
    i = flat_index(pos, grid)

    with torch.no_grad():
        ref = attn.reference_maps(x[:1], grid)
        # Summing the channel-wise correlation maps diag(q_i)K over the head's channels gives q_i . k_j.
        correlation = ref.correlation[0, head, i].sum(0) * attn.scale  # (T, H, W)
        a = ref.attention[0, head, i]  # (N', D): the joint softmax row of the query
        key_grid = tuple(int(g) for g in ref.key_grid)
        attention = a.permute(1, 0).reshape(a.shape[1], *key_grid)
        j = flat_index(key_position(pos, grid, key_grid), key_grid)
        kappa = ref.dynamic_kernels(i)[0, head, j].mean(0)  # (kT, kH, kW), mean over the head's channels
        aggregators = ref.value_filters[head].mean(1)  # (D, kT, kH, kW)
        key_filters = attn.head_filters("key")[head].mean(1) if attn.k_struct is not None else None

    vanilla = None
    if vanilla_model is not None:
        vanilla = vanilla_attention_map(vanilla_model, video, stage=stage, block=block, head=head, query=pos)
    if frames is None:
        if mean is None or std is None:
            raise ValueError(
                "compute_structure_maps: give `frames`, or the `mean` / `std` `video` was normalised with"
            )
        frames = denormalize(video[0].cpu(), mean, std).permute(1, 2, 3, 0)
    probs = logits.float().softmax(-1)[0]
    top = int(probs.argmax())
    name = class_names[top] if class_names is not None and top < len(class_names) else f"class {top}"
    return StructureMaps(
        frames=frames.detach().float().cpu(),
        query_grid=grid,
        key_grid=key_grid,  # type: ignore[arg-type]
        query=pos,
        stage=stage,
        block=block,
        head=head,
        correlation=correlation.float().cpu(),
        attention=attention.float().cpu(),
        aggregators=aggregators.float().cpu(),
        dynamic_kernel=kappa.float().cpu(),
        vanilla=vanilla,
        key_filters=None if key_filters is None else key_filters.float().cpu(),
        title=f"{layer_name(model, stage, block)} head {head}, query (t,y,x)={pos}; prediction: {name} ({probs[top]:.2f})",
    )


def vanilla_attention_map(
    model: nn.Module, video: Tensor, *, stage: int, block: int, head: int, query: Sequence[int]
) -> Tensor:
    """Plain attention of one query in a D = 0 model (the twin's own reference maps): (T', H', W')."""
    attn, x, grid, _ = capture_attention_input(model, video, stage, block)
    with torch.no_grad():
        ref = attn.reference_maps(x[:1], grid)
    # D = 0 reference maps carry a single (identity) structure channel.
    return ref.attention[0, head, flat_index(query, grid), :, 0].reshape(ref.key_grid).float().cpu()


def vanilla_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` in which every StructSA is a D = 0 StructSA (plain attention) with the same qkv/proj.

    All other weights (stem, convolution blocks, MLPs, norms, head) are shared by value, so the two maps
    differ only by the structure of the attention, as in the paper's comparison.
    """
    from src.models.structsa import StructSA

    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, StructSA):
                plain = StructSA(
                    child.dim,
                    child.num_heads,
                    structure_dim=0,
                    kernel_size=child.kernel_size,
                    qkv_bias=child.qkv.bias is not None,
                    attn_fp32=child.attn_fp32,
                )
                plain.qkv.load_state_dict(child.qkv.state_dict())
                plain.proj.load_state_dict(child.proj.state_dict())
                setattr(parent, name, plain.to(child.qkv.weight.device, child.qkv.weight.dtype))
    return twin.eval()


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def _frame_for_token(t: int, tokens: int, frames: int) -> int:
    """The input frame at the centre of token frame t (the stem halves time)."""
    return min(frames - 1, int((t + 0.5) * frames / tokens))


def _overlay_row(
    axes: Sequence[plt.Axes],
    frames: Tensor,
    maps: Tensor,
    *,
    label: str,
    vmin: float,
    vmax: float,
    cmap: str,
    query: tuple[int, int, int] | None,
    query_grid: tuple[int, int, int],
) -> Any:
    """Draw maps (T', h, w) over their input frames, one axis per token frame; returns the last image."""
    t_tokens = maps.shape[0]
    height, width = frames.shape[1:3]
    image = None
    for t, ax in enumerate(axes):
        # The frame in grey under the map, so the map's colours stay readable.
        luma = frames[_frame_for_token(t, t_tokens, frames.shape[0])] @ torch.tensor([0.299, 0.587, 0.114])
        ax.imshow(luma.numpy(), cmap="gray", vmin=0.0, vmax=1.0, extent=(0, width, height, 0))
        image = ax.imshow(
            maps[t].numpy(),
            extent=(0, width, height, 0),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            alpha=0.7,
            interpolation="nearest",
        )
        image.set_gid(f"{label}|t={t}")
        if query is not None and t == query[0]:
            cell_h, cell_w = height / query_grid[1], width / query_grid[2]
            ax.add_patch(
                Rectangle(
                    (query[2] * cell_w, query[1] * cell_h), cell_w, cell_h, fill=False, ec="red", lw=1.5
                )
            )
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(label, fontsize=8)
    return image


def _grid_axes(rows: int, cols: int, scale: float = 1.3) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols + 0.8, scale * rows + 0.6), squeeze=False)
    return fig, axes


def plot_correlation(maps: StructureMaps) -> Figure:
    """Query-key correlation q_i . k_j * scale over the whole clip, one panel per token frame (Fig. 1b)."""
    fig, axes = _grid_axes(1, maps.query_grid[0])
    lim = float(maps.correlation.abs().max()) or 1.0
    image = _overlay_row(
        axes[0],
        maps.frames,
        maps.correlation,
        label="correlation",
        vmin=-lim,
        vmax=lim,
        cmap="RdBu_r",
        query=maps.query,
        query_grid=maps.query_grid,
    )
    for t, ax in enumerate(axes[0]):
        ax.set_title(f"t={t}", fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    fig.suptitle("query-key correlation  " + maps.title, fontsize=8, parse_math=False)
    return fig


def plot_structural_attention(maps: StructureMaps) -> Figure:
    """The D structural attention maps A_{i,j,d} with one colour scale (the joint softmax over j and d)."""
    d_count, t_tokens = maps.attention.shape[:2]
    fig, axes = _grid_axes(d_count, t_tokens)
    # One colour scale for all D maps (their joint softmax), stretched from its min to its max.
    vmin, vmax = float(maps.attention.min()), float(maps.attention.max())
    image = None
    for d in range(d_count):
        image = _overlay_row(
            axes[d],
            maps.frames,
            maps.attention[d],
            label=f"attention d={d}",
            vmin=vmin,
            vmax=vmax,
            cmap="inferno",
            query=maps.query,
            query_grid=maps.query_grid,
        )
    for t, ax in enumerate(axes[0]):
        ax.set_title(f"t={t}", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    total = float(maps.attention.sum())
    fig.suptitle(
        f"structural attention (joint softmax, sum over j,d = {total:.3f})  " + maps.title,
        fontsize=8,
        parse_math=False,
    )
    return fig


def _kernel_row(axes: Sequence[plt.Axes], kernel: Tensor, label: str, lim: float) -> Any:
    """One 3-D kernel (kt, kh, kw) as kt panels of kh x kw, temporal offsets -1, 0, +1."""
    image = None
    offset = kernel.shape[0] // 2
    for t, ax in enumerate(axes):
        image = ax.imshow(kernel[t].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        image.set_gid(f"{label}|dt={t - offset}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(label, fontsize=8)
    return image


def _plot_filters(maps: StructureMaps, filters: Tensor, symbol: str, what: str) -> Figure:
    """D filters (D, kT, kH, kW) of the head as rows of kT panels, one shared colour scale."""
    d_count, kt = filters.shape[:2]
    fig, axes = _grid_axes(d_count, kt)
    lim = float(filters.abs().max()) or 1.0
    image = None
    for d in range(d_count):
        image = _kernel_row(axes[d], filters[d], f"{symbol} d={d}", lim)
    for t, ax in enumerate(axes[0]):
        ax.set_title(f"dt={t - kt // 2}", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.04, pad=0.02)
    layer = (
        maps.title.split(" head ")[0] if " head " in maps.title else f"stage {maps.stage} block {maps.block}"
    )
    fig.suptitle(f"{what}, {layer} head {maps.head}", fontsize=8, parse_math=False)
    return fig


def plot_aggregators(maps: StructureMaps) -> Figure:
    """The D context aggregators H_V of the head (mean over its channels) as 3-D kernels (Fig. 2b)."""
    return _plot_filters(maps, maps.aggregators, "H_V", "context aggregators")


def plot_key_filters(maps: StructureMaps) -> Figure:
    """The D key filters H_K of the head (mean over its channels): the structures a query is matched against."""
    if maps.key_filters is None:
        raise ValueError("key filters: the layer has D = 0 (plain attention), so it has none")
    return _plot_filters(
        maps, maps.key_filters, "H_K", "key filters (structures of the query-key correlation)"
    )


def plot_dynamic_kernel(maps: StructureMaps) -> Figure:
    """The dynamic kernel kappa_{i,i} of the query's own neighbourhood (Fig. 3)."""
    kt = maps.dynamic_kernel.shape[0]
    fig, axes = _grid_axes(1, kt, scale=1.6)
    lim = float(maps.dynamic_kernel.abs().max()) or 1.0
    image = _kernel_row(axes[0], maps.dynamic_kernel, "kappa_ii", lim)
    for t, ax in enumerate(axes[0]):
        ax.set_title(f"dt={t - kt // 2}", fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.04, pad=0.02)
    fig.suptitle(
        "dynamic kernel sum_d A_iid H_V[:,d,c] (mean over head channels)\n" + maps.title,
        fontsize=7,
        parse_math=False,
    )
    return fig


def plot_vanilla(maps: StructureMaps) -> Figure:
    """The D = 0 twin's attention map of the same query, for comparison."""
    if maps.vanilla is None:
        raise ValueError("these maps were computed without a vanilla twin (vanilla_model=None)")
    fig, axes = _grid_axes(1, maps.query_grid[0])
    image = _overlay_row(
        axes[0],
        maps.frames,
        maps.vanilla,
        label="vanilla (D=0)",
        vmin=float(maps.vanilla.min()),
        vmax=float(maps.vanilla.max()),
        cmap="inferno",
        query=maps.query,
        query_grid=maps.query_grid,
    )
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    fig.suptitle("vanilla attention (D=0 twin, same weights)  " + maps.title, fontsize=8, parse_math=False)
    return fig


def plot_overview(maps: StructureMaps) -> Figure:
    """Frames, correlation, the D structural attention maps, the vanilla map and the dynamic kernel together."""
    t_tokens = maps.query_grid[0]
    rows = 2 + maps.structure_dim + (maps.vanilla is not None)
    fig = plt.figure(figsize=(1.2 * t_tokens + 2.6, 1.2 * rows + 0.6))
    # Columns: one per token frame, a narrow one for colour bars, a gap, the dynamic kernel.
    spec = fig.add_gridspec(
        rows, t_tokens + 3, width_ratios=[1] * t_tokens + [0.08, 0.45, 1], wspace=0.06, hspace=0.22
    )
    axes = [[fig.add_subplot(spec[r, c]) for c in range(t_tokens)] for r in range(rows)]
    for t, ax in enumerate(axes[0]):
        ax.imshow(maps.frames[_frame_for_token(t, t_tokens, maps.frames.shape[0])].numpy())
        ax.set_title(f"t={t}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("frames", fontsize=8)
    lim = float(maps.correlation.abs().max()) or 1.0
    image = _overlay_row(
        axes[1],
        maps.frames,
        maps.correlation,
        label="q.k",
        vmin=-lim,
        vmax=lim,
        cmap="RdBu_r",
        query=maps.query,
        query_grid=maps.query_grid,
    )
    _small_colorbar(fig, image, fig.add_subplot(spec[1, t_tokens]))
    # One colour scale for all D maps (their joint softmax), stretched from its min to its max.
    vmin, vmax = float(maps.attention.min()), float(maps.attention.max())
    for d in range(maps.structure_dim):
        image = _overlay_row(
            axes[2 + d],
            maps.frames,
            maps.attention[d],
            label=f"A d={d}",
            vmin=vmin,
            vmax=vmax,
            cmap="inferno",
            query=maps.query,
            query_grid=maps.query_grid,
        )
    # One colour bar for all D rows: they share the scale of the joint softmax.
    _small_colorbar(fig, image, fig.add_subplot(spec[2 : 2 + maps.structure_dim, t_tokens]))
    if maps.vanilla is not None:
        image = _overlay_row(
            axes[-1],
            maps.frames,
            maps.vanilla,
            label="D=0",
            vmin=float(maps.vanilla.min()),
            vmax=float(maps.vanilla.max()),
            cmap="inferno",
            query=maps.query,
            query_grid=maps.query_grid,
        )
        _small_colorbar(fig, image, fig.add_subplot(spec[rows - 1, t_tokens]))
    kt = maps.dynamic_kernel.shape[0]
    klim = float(maps.dynamic_kernel.abs().max()) or 1.0
    # The dynamic kernel of the query's own neighbourhood, one temporal offset per row, beside the maps.
    kernel_spec = spec[1:, t_tokens + 2].subgridspec(max(kt, rows - 1), 1, hspace=0.35)
    kernel_axes = [fig.add_subplot(kernel_spec[r, 0]) for r in range(kt)]
    _kernel_row(kernel_axes, maps.dynamic_kernel, "kappa_ii", klim)
    kernel_axes[0].set_ylabel("")
    for t, ax in enumerate(kernel_axes):
        ax.set_title(f"kappa_ii dt={t - kt // 2}", fontsize=7)
    fig.suptitle(maps.title, fontsize=9, parse_math=False)
    return fig


def _small_colorbar(fig: Figure, image: Any, cax: plt.Axes) -> None:
    bar = fig.colorbar(image, cax=cax)
    bar.ax.tick_params(labelsize=6)
    bar.formatter.set_powerlimits((-2, 3))
    bar.update_ticks()
    bar.ax.yaxis.get_offset_text().set_fontsize(6)


def make_figures(maps: StructureMaps) -> dict[str, Figure]:
    """Every figure for these maps, by file stem (the vanilla one only when a twin was given)."""
    figures = {
        "correlation": plot_correlation(maps),
        "structural_attention": plot_structural_attention(maps),
        "aggregators": plot_aggregators(maps),
        "dynamic_kernel": plot_dynamic_kernel(maps),
    }
    if maps.key_filters is not None:
        figures["key_filters"] = plot_key_filters(maps)
    if maps.vanilla is not None:
        figures["vanilla_attention"] = plot_vanilla(maps)
    figures["overview"] = plot_overview(maps)
    return figures


def save_figures(figures: dict[str, Figure], out: Path, dpi: int = 90, palette: bool = False) -> list[Path]:
    """Write each figure as out/<name>.png and close it; returns the paths written.

    `palette` stores 256-colour PNGs (smaller files, for pictures committed to the docs).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        if palette:
            from PIL import Image

            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=dpi, bbox_inches="tight", facecolor="white")
            buffer.seek(0)
            Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
        else:
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------
# Inputs: the clip and the model
# ---------------------------------------------------------------------------------------------------------


def load_clip(path: Path, protocol: EvalProtocol) -> tuple[Tensor, Tensor]:
    """One view of the video at `path` made by `protocol` as prediction makes it (`src.trained.read_views`:
    the same frames, sampling, crop and normalisation): the middle temporal clip, centre crop.

    Returns (frames (T, crop, crop, 3) in [0, 1] for display, video (1, 3, T, crop, crop) normalised with the
    protocol's mean / std).
    """
    from src.trained import read_views

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--video {path}: no such file or folder")
    clips, crops = protocol.test_views
    views = read_views(path, protocol)  # (clips x crops, 3, T, crop, crop)
    video = views[(clips // 2) * crops + crops // 2].unsqueeze(0).contiguous()
    frames = denormalize(video[0], protocol.mean, protocol.std).permute(1, 2, 3, 0).contiguous()
    return frames, video


@dataclass
class LoadedModel:
    """A model ready to visualise and the protocol its clips follow (a checkpoint's own, or the DataModule's
    defaults for a model without one)."""

    model: nn.Module
    variant: str
    class_names: list[str] | None
    protocol: EvalProtocol


def load_model(
    ckpt: Path | None = None,
    model_name: str | None = None,
    *,
    weights: Path | None = None,
    num_classes: int | None = None,
    kv_stride: int | None = None,
) -> LoadedModel:
    """The network to draw: a checkpoint of this project, rebuilt by `src.trained.load_trained` (its
    variant, options, class names and evaluation protocol come from the file), or `model_name` built
    with its defaults (`kv_stride` and `num_classes` overridable) and random weights or backbone
    `weights` (e.g. an official UniFormer .pth), which must fit it exactly.
    """
    from src.models import build_model

    if ckpt is not None:
        if model_name is not None or weights is not None or kv_stride is not None:
            raise ValueError(
                "--ckpt names its own model: drop --model / --weights / --kv-stride "
                "(those draw a variant with random or raw backbone weights)"
            )
        from src.trained import load_trained

        trained = load_trained(ckpt)
        log.info("loaded %s (%s)", ckpt, trained.variant)
        return LoadedModel(
            trained.module.backbone.eval(), trained.variant, trained.class_names, trained.protocol
        )
    if model_name is None:
        raise ValueError("give a checkpoint (--ckpt) or a model variant (--model structvit_xs)")
    overrides = {} if kv_stride is None else {"kv_stride": kv_stride}
    model = build_model(model_name, num_classes=num_classes or 400, **overrides)
    if weights is not None:
        from src.models.checkpoints import load_pretrained

        report = load_pretrained(model, weights)
        if not report.clean or report.head_dropped:
            # maps of half-loaded weights would show weights nobody trained: refuse instead
            raise ValueError(
                f"--weights {weights}: does not fit {model_name} {overrides} with {num_classes or 400} "
                f"classes (set --num-classes / --kv-stride to the trained model's):\n{report}"
            )
    from src.trained import default_protocol

    return LoadedModel(model.eval(), model_name, None, default_protocol())


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `python -m src.visualize` arguments."""
    p = argparse.ArgumentParser(prog="python -m src.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ckpt", type=Path, help="checkpoint written by `src.cli fit`: the model is rebuilt from it"
    )
    p.add_argument("--model", help="variant (e.g. structvit_xs) to draw with random weights or --weights")
    p.add_argument(
        "--weights", type=Path, help="backbone weights for --model (e.g. an official UniFormer .pth)"
    )
    p.add_argument("--video", type=Path, required=True, help="video file or folder of JPEG frames")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    p.add_argument("--stage", type=int, default=3, help="attention stage (3 or 4); default 3")
    p.add_argument(
        "--block", type=int, default=-1, help="block of the stage (negative counts from the end); default -1"
    )
    p.add_argument("--head", type=int, default=0, help="attention head; default 0")
    p.add_argument(
        "--query", help="query token t,y,x on the layer's token grid; default the centre of the middle frame"
    )
    p.add_argument(
        "--frames",
        type=int,
        help="frames per clip (default: the checkpoint's, else the DataModule's default)",
    )
    p.add_argument(
        "--size", type=int, help="crop size (default: the checkpoint's, else the DataModule's default)"
    )
    p.add_argument("--num-classes", type=int, help="classes of --model (default 400)")
    p.add_argument("--kv-stride", type=int, help="key/value stride S of --model (default: the variant's)")
    p.add_argument("--no-vanilla", action="store_true", help="skip the D = 0 comparison")
    p.add_argument("--only", choices=FIGURE_NAMES, nargs="+", help="write only these figures")
    p.add_argument("--dpi", type=int, default=90, help="resolution of the PNG files")
    p.add_argument("--palette", action="store_true", help="256-colour PNG files (small, for the docs)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights")
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the command line; returns the PNG paths written."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    loaded = load_model(
        args.ckpt, args.model, weights=args.weights, num_classes=args.num_classes, kv_stride=args.kv_stride
    )
    protocol = replace(
        loaded.protocol,
        num_frames=args.frames or loaded.protocol.num_frames,
        crop_size=args.size or loaded.protocol.crop_size,
    )
    frames, video = load_clip(args.video, protocol)
    twin = None if args.no_vanilla else vanilla_twin(loaded.model)
    maps = compute_structure_maps(
        loaded.model,
        video,
        stage=args.stage,
        block=args.block,
        head=args.head,
        query=args.query,
        vanilla_model=twin,
        frames=frames,
        class_names=loaded.class_names,
    )
    figures = make_figures(maps)
    if args.only:
        for name in [n for n in figures if n not in args.only]:
            plt.close(figures.pop(name))
    paths = save_figures(figures, args.out, dpi=args.dpi, palette=args.palette)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
