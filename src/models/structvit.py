"""StructViT: UniFormer (docs/method.md, 'Network layout') with every self-attention replaced by StructSA.

With structure_dim = 0 the network is UniFormer exactly. Module names follow UniFormer's state-dict keys
(`patch_embed1..4`, `blocks1..4`, `norm`, `head`) so official UniFormer checkpoints load unchanged.
Everything is 3-D; images are clips with T = 1 (a video model accepts them too: its temporal taps then
see only zero padding), and `image=True` builds the image network itself (temporal kernel size 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from .depthwise import DepthwiseConv3d
from .structsa import StructInit, StructSA


class PatchEmbed(nn.Module):
    """Conv3d patchify then LayerNorm over channels: (B, Cin, T, H, W) -> (B, C, T', H', W')."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int],
        padding: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_dim, dim, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim)  # eps 1e-5, as UniFormer's patch embeddings

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class ConvStem(nn.Module):
    """Two overlapping 3x3(x3) convolutions then LayerNorm, downsampling like the patchify stem (time /2, space /4).

    Why: a ViT with a small convolutional stem optimises far faster from scratch than with a patchify stem
    (Xiao et al., "Early convolutions help transformers see better", NeurIPS 2021); structvit_xs, trained
    from scratch on a CPU, uses it. Output shape equals PatchEmbed's for the same input.
    """

    def __init__(self, in_dim: int, dim: int, video: bool) -> None:
        super().__init__()
        kt, pt, st = (3, 1, 2) if video else (1, 0, 1)
        hidden = max(dim // 2, 8)
        self.conv1 = nn.Conv3d(in_dim, hidden, (kt, 3, 3), stride=(1, 2, 2), padding=(pt, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(hidden)
        self.act = nn.GELU()
        self.proj = nn.Conv3d(hidden, dim, (kt, 3, 3), stride=(st, 2, 2), padding=(pt, 1, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.act(self.bn1(self.conv1(x))))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


def _dwconv(dim: int, k: int, video: bool) -> nn.Conv3d:
    kt = k if video else 1  # images: temporal kernel 1 (the 2-D network)
    return DepthwiseConv3d(dim, dim, (kt, k, k), padding=(kt // 2, k // 2, k // 2))


class ConvMlp(nn.Module):
    """1x1x1 conv MLP of the conv blocks: fc1 (C -> rC), GELU, fc2 (rC -> C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Mlp(nn.Module):
    """Token MLP of the attention blocks: fc1 (C -> rC), GELU, fc2 (rC -> C)."""

    # not torchvision.ops.MLP: a Sequential (keys 0 / 3), UniFormer checkpoints load by mlp.fc1 / mlp.fc2 (tests)

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBlock(nn.Module):
    """UniFormer's local block (stages 1-2): CPE, BN + 1x1 / 5x5x5 depthwise / 1x1 aggregation, BN + MLP."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float, video: bool) -> None:
        super().__init__()
        self.pos_embed = _dwconv(dim, 3, video)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = _dwconv(dim, 5, video)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.drop_path = StochasticDepth(drop_path, mode="row")  # per-sample residual drop
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AttentionBlock(nn.Module):
    """UniFormer's global block (stages 3-4) with StructSA: CPE, LN + StructSA, LN + MLP over T·H·W tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        video: bool,
        structure_dim: int,
        kv_stride: int,
        qkv_bias: bool,
        attn_fp32: bool,
        struct_init: StructInit = "random",
    ) -> None:
        super().__init__()
        self.pos_embed = _dwconv(dim, 3, video)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = StructSA(
            dim,
            num_heads,
            structure_dim=structure_dim,
            kernel_size=(3 if video else 1, 3, 3),
            kv_stride=kv_stride,
            qkv_bias=qkv_bias,
            attn_fp32=attn_fp32,
            struct_init=struct_init,
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")  # per-sample residual drop
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x)
        b, c, t, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens), (t, h, w)))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return tokens.transpose(1, 2).reshape(b, c, t, h, w)


def _recompute_safe(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """Wrap a block for checkpointing so the backward recomputation does not update BatchNorm stats twice."""
    calls = 0

    def run(x: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return block(x)
        norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [
            (m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
            for m in norms
        ]
        for m in norms:
            m.momentum = 0.0  # running = 1·running + 0·batch: the recomputation leaves the stats as they are
        try:
            return block(x)
        finally:
            for m, (momentum, tracked) in zip(norms, saved):
                m.momentum = momentum
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)

    return run


class StructViT(nn.Module):
    """StructViT / UniFormer backbone and classifier.

    Args:
        depths: blocks per stage (stages 1-2 conv blocks, 3-4 StructSA blocks).
        dims: channels per stage.
        head_dim: channels per attention head (64 in the paper).
        structure_dim: D of every StructSA (0 = UniFormer).
        kv_stride: spatial key/value stride S of every StructSA.
        num_classes: classifier outputs (0 = no classifier, `forward` returns pooled features).
        drop_path_rate: stochastic depth, linspace(0, rate) over all blocks in order.
        checkpoint_stages: stages (1..4) whose blocks run under activation checkpointing.
        attn_fp32: StructSA maths in float32 under autocast.
        image: build the image network (temporal kernel size 1 everywhere; inputs (B, 3, H, W)).
        stem: "patch" (UniFormer's 4x4 patchify convolution) or "conv" (ConvStem: two 3x3x3 convolutions).
        struct_init: how StructSA's key/value filters start (see `StructSA`; "identity" = UniFormer exactly).
        mlp_ratio, qkv_bias, in_chans: as in UniFormer.

    Input (B, 3, T, H, W) or (B, 3, H, W); output logits (B, num_classes).
    """

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 8, 3),
        dims: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        structure_dim: int = 4,
        kv_stride: int = 1,
        num_classes: int = 400,
        drop_path_rate: float = 0.0,
        checkpoint_stages: Sequence[int] = (),
        attn_fp32: bool = False,
        image: bool = False,
        stem: str = "patch",
        struct_init: StructInit = "random",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"StructViT: depths={list(depths)} and dims={list(dims)} must list 4 stages")
        if stem not in ("patch", "conv"):
            raise ValueError(f"StructViT: stem={stem!r}; use 'patch' (UniFormer's) or 'conv' (ConvStem)")
        bad = [s for s in checkpoint_stages if s not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(
                f"StructViT: checkpoint_stages={list(checkpoint_stages)} has {bad}; stages are 1..4"
            )
        for dim in dims[2:]:
            if dim % head_dim:
                raise ValueError(f"StructViT: stage width {dim} is not a multiple of head_dim={head_dim}")
        self.depths, self.dims, self.head_dim = list(depths), list(dims), head_dim
        self.structure_dim, self.kv_stride, self.image = structure_dim, kv_stride, image
        self.checkpoint_stages = sorted(set(checkpoint_stages))
        self.num_features = dims[3]
        stem_k, stem_s, stem_p = (
            ((1, 4, 4), (1, 4, 4), (0, 0, 0)) if image else ((3, 4, 4), (2, 4, 4), (1, 0, 0))
        )
        self.stem = stem
        if stem == "conv":
            self.patch_embed1 = ConvStem(in_chans, dims[0], not image)
        else:
            self.patch_embed1 = PatchEmbed(in_chans, dims[0], stem_k, stem_s, stem_p)
        for i in (2, 3, 4):
            setattr(
                self, f"patch_embed{i}", PatchEmbed(dims[i - 2], dims[i - 1], (1, 2, 2), (1, 2, 2), (0, 0, 0))
            )
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linspace(0, rate, total)
        start = 0
        for stage, (depth, dim) in enumerate(zip(depths, dims), start=1):
            if stage <= 2:
                blocks = [ConvBlock(dim, mlp_ratio, rates[start + j], not image) for j in range(depth)]
            else:
                blocks = [
                    AttentionBlock(
                        dim,
                        dim // head_dim,
                        mlp_ratio,
                        rates[start + j],
                        not image,
                        structure_dim,
                        kv_stride,
                        qkv_bias,
                        attn_fp32,
                        struct_init,
                    )
                    for j in range(depth)
                ]
            setattr(self, f"blocks{stage}", nn.ModuleList(blocks))
            start += depth
        self.norm = nn.BatchNorm3d(dims[3])
        self.head = nn.Linear(dims[3], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else 0

    def structsa_modules(self) -> list[StructSA]:
        """Every StructSA of the network, in order."""
        return [m for m in self.modules() if isinstance(m, StructSA)]

    def init_identity(self) -> None:
        """Set all StructSA filters to the identity (with S = 1 the network computes UniFormer exactly)."""
        for m in self.structsa_modules():
            m.init_identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh Linear(C4, num_classes) (0 = none)."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that skip weight decay: biases and every other 1-D parameter (norms)."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    def _as_clip(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(2)  # image (B, 3, H, W) -> clip with T = 1
        if x.dim() != 5:
            raise ValueError(f"StructViT: expected (B, 3, T, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
        if self.image and x.shape[2] != 1:
            raise ValueError(
                f"StructViT: image model got a clip of T={x.shape[2]} frames; build it with image=False"
            )
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone: (B, 3, T, H, W) or (B, 3, H, W) -> feature map (B, C4, T/2, H/32, W/32) after `norm`."""
        x = self._as_clip(x)
        for stage in (1, 2, 3, 4):
            x = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"blocks{stage}"):
                if stage in self.checkpoint_stages and torch.is_grad_enabled():
                    x = checkpoint(_recompute_safe(block), x, use_reentrant=False)
                else:
                    x = block(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool over (T, H, W), then the classifier: (B, C4, T, H, W) -> (B, classes)."""
        x = x.flatten(2).mean(-1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
