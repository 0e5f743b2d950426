"""Model registry: every network is a small named function, built by name from a config.

StructViT family (docs/method.md, 'Network layout'; head_dim 64 unless noted):

| name          | D | S | depths          | channels              | heads (st. 3, 4) | drop path |
|---------------|---|---|-----------------|-----------------------|------------------|-----------|
| structvit_xs  | 4 | 1 | [1, 1, 2, 1]    | [32, 64, 128, 192]    | 4, 6 (head_dim 32) | 0.0     |
| structvit_s   | 4 | 1 | [3, 4, 8, 3]    | [64, 128, 320, 512]   | 5, 8             | 0.1       |
| structvit_b   | 4 | 1 | [5, 8, 20, 7]   | [64, 128, 320, 512]   | 5, 8             | 0.3       |
| structvit_l   | 4 | 1 | [5, 10, 24, 7]  | [128, 192, 448, 640]  | 7, 10            | 0.4       |
| uniformer_s/b | 0 | - | as structvit_s/b |                      |                  | 0.1 / 0.3 |

structvit_xs is this project's CPU variant (not in the paper; its size: `python -m src.models.flops --model
structvit_xs --frames 16 --size 96 --num-classes 10`). Its head_dim is 32 so stages 3-4 still have
several heads (4 and 6), and its stem is convolutional (`stem="conv"`, two 3x3x3 convolutions
instead of the 4x4 patchify), because trained from scratch on small clips it starts learning epochs earlier
than the patchify stem (BENCHMARKS.md "Stem").

pure_attention_tiny (src.models.pure_attention) is the motion ablation's network: no convolution across
frames outside StructSA, so what it learns about motion comes from the attention.

The overrides a name accepts (`model_options`) are its network's constructor arguments minus the layout
the name fixes (`network_options`): StructViT's for the UniFormer-family names (D, S, drop path,
activation checkpointing, float32 attention, the 2-D image network, stem, StructSA's filter start; see
its docstring), PureAttentionNet's for pure_attention_tiny. The pytorchvideo baselines x3d_m and
mvit_b_16x4 accept num_frames and crop_size (their heads / position embeddings depend on the input size).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from .pure_attention import PureAttentionNet
from .structvit import StructViT

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_OPTIONS: dict[str, frozenset[str]] = {}


def network_options(network: Callable[..., nn.Module], layout: tuple[str, ...]) -> frozenset[str]:
    """The keyword arguments of `network` a config may set: all of them but `num_classes` and the `layout`
    a registered name fixes (its depths, widths, ...)."""
    return frozenset(inspect.signature(network).parameters) - {"num_classes", *layout}


_UNIFORMER_OVERRIDES = network_options(
    StructViT, ("depths", "dims", "head_dim", "mlp_ratio", "qkv_bias", "in_chans")
)
_PURE_OVERRIDES = network_options(
    PureAttentionNet, ("dim", "depth", "num_heads", "mlp_ratio", "patch_size", "in_chans")
)
_BASELINE_OVERRIDES = frozenset(
    {"num_frames", "crop_size"}
)  # arguments of the builders below, not of a class


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, options: frozenset[str] = frozenset()
) -> Callable[..., nn.Module]:
    """Register a model function under its own name (decorator: `@register_model` or
    `@register_model(options=...)`, the overrides it accepts, see `model_options`)."""
    if fn is None:
        return lambda f: register_model(f, options=options)
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"register_model: a model named {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    _OPTIONS[fn.__name__] = frozenset(options)
    return fn


def model_options(name: str) -> frozenset[str]:
    """The overrides `build_model(name, ...)` accepts (empty for a function registered without them)."""
    if name not in _REGISTRY:
        raise ValueError(f"model_options: unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _OPTIONS[name]


def list_models() -> list[str]:
    """Names that build_model accepts, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int = 400, **overrides) -> nn.Module:
    """Build a registered model by name; overrides change the variant's defaults (unknown ones: TypeError)."""
    if name not in _REGISTRY:
        raise ValueError(f"build_model: unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes, **overrides)


def _check_overrides(name: str, overrides: dict) -> None:
    allowed = _OPTIONS[name]
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(
            f"build_model({name!r}): unknown override(s) {', '.join(unknown)}; "
            f"this model accepts {', '.join(sorted(allowed))}"
        )


def _uniformer_family(name: str, num_classes: int, overrides: dict, **layout) -> StructViT:
    _check_overrides(name, overrides)
    kwargs = {**layout, **overrides}
    if "checkpoint_stages" in kwargs and kwargs["checkpoint_stages"] is None:
        kwargs["checkpoint_stages"] = ()
    return StructViT(num_classes=num_classes, **kwargs)


_S = dict(depths=(3, 4, 8, 3), dims=(64, 128, 320, 512))
_B = dict(depths=(5, 8, 20, 7), dims=(64, 128, 320, 512))
_L = dict(depths=(5, 10, 24, 7), dims=(128, 192, 448, 640))


@register_model(options=_UNIFORMER_OVERRIDES)
def structvit_xs(num_classes: int = 400, **overrides) -> StructViT:
    """CPU-sized StructViT (this project's): depths [1,1,2,1], channels [32,64,128,192], head_dim 32, D=4, conv stem."""
    layout = dict(
        depths=(1, 1, 2, 1),
        dims=(32, 64, 128, 192),
        head_dim=32,
        structure_dim=4,
        kv_stride=1,
        drop_path_rate=0.0,
        stem="conv",
    )
    return _uniformer_family("structvit_xs", num_classes, overrides, **layout)


@register_model(options=_UNIFORMER_OVERRIDES)
def structvit_s(num_classes: int = 400, **overrides) -> StructViT:
    """StructViT-S-4-1 (kv_stride=2 gives the paper's S-4-2)."""
    return _uniformer_family("structvit_s", num_classes, overrides, **_S, structure_dim=4, drop_path_rate=0.1)


@register_model(options=_UNIFORMER_OVERRIDES)
def structvit_b(num_classes: int = 400, **overrides) -> StructViT:
    """StructViT-B-4-1."""
    return _uniformer_family("structvit_b", num_classes, overrides, **_B, structure_dim=4, drop_path_rate=0.3)


@register_model(options=_UNIFORMER_OVERRIDES)
def structvit_l(num_classes: int = 400, **overrides) -> StructViT:
    """StructViT-L-4-1."""
    return _uniformer_family("structvit_l", num_classes, overrides, **_L, structure_dim=4, drop_path_rate=0.4)


@register_model(options=_UNIFORMER_OVERRIDES)
def uniformer_s(num_classes: int = 400, **overrides) -> StructViT:
    """UniFormer-S: StructViT-S with D = 0 (plain multi-head self-attention)."""
    return _uniformer_family("uniformer_s", num_classes, overrides, **_S, structure_dim=0, drop_path_rate=0.1)


@register_model(options=_UNIFORMER_OVERRIDES)
def uniformer_b(num_classes: int = 400, **overrides) -> StructViT:
    """UniFormer-B: StructViT-B with D = 0."""
    return _uniformer_family("uniformer_b", num_classes, overrides, **_B, structure_dim=0, drop_path_rate=0.3)


@register_model(options=_PURE_OVERRIDES)
def pure_attention_tiny(num_classes: int = 8, **overrides) -> PureAttentionNet:
    """Motion-ablation network: per-frame 4x4 patches, 2 pre-norm StructSA + MLP blocks, dim 64, 2 heads, D=4."""
    _check_overrides("pure_attention_tiny", overrides)
    return PureAttentionNet(num_classes=num_classes, dim=64, depth=2, num_heads=2, patch_size=4, **overrides)


@register_model(options=_BASELINE_OVERRIDES)
def x3d_m(num_classes: int = 400, **overrides) -> nn.Module:
    """pytorchvideo's X3D-M (16 frames, 224 crop by default); returns logits (no softmax in the head)."""
    _check_overrides("x3d_m", overrides)
    from pytorchvideo.models.x3d import create_x3d

    return create_x3d(
        input_clip_length=overrides.get("num_frames", 16),
        input_crop_size=overrides.get("crop_size", 224),
        depth_factor=2.2,
        model_num_class=num_classes,
        head_activation=None,
    )


@register_model(options=_BASELINE_OVERRIDES)
def mvit_b_16x4(num_classes: int = 400, **overrides) -> nn.Module:
    """pytorchvideo's MViT-B 16x4 (Fan et al. 2021): its Kinetics-400 layout, logits out."""
    _check_overrides("mvit_b_16x4", overrides)
    from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers

    return create_multiscale_vision_transformers(
        spatial_size=overrides.get("crop_size", 224),
        temporal_size=overrides.get("num_frames", 16),
        embed_dim_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
        atten_head_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
        pool_q_stride_size=[[1, 1, 2, 2], [3, 1, 2, 2], [14, 1, 2, 2]],
        pool_kv_stride_adaptive=[1, 8, 8],
        pool_kvq_kernel=[3, 3, 3],
        head_num_classes=num_classes,
        droppath_rate_block=0.2,
    )
