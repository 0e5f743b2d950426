"""A pure-attention video network: per-frame patch embedding, then StructSA blocks only.

Why: StructViT's convolution stages (and the conv stem, and every block's depthwise position encoding) can
see motion on their own, so they hide what the attention contributes. This network has no temporal mixing
outside StructSA: the patch embedding works frame by frame, the blocks are pre-norm StructSA + MLP, the head
averages the tokens. With D = 0 and no position embedding it is blind to where and when a token is (a set
function of the tokens); with a learned position embedding plain attention can in principle match tokens
across frames by position. It is the model of the motion-only ablation (BENCHMARKS.md "Motion").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .structsa import StructInit, StructSA

PosEmbed = Literal["none", "learned"]


class PureAttentionBlock(nn.Module):
    """Pre-norm transformer block over (B, N, C) tokens on a (T, H, W) grid: x + StructSA(LN x), x + MLP(LN x)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        structure_dim: int,
        kv_stride: int,
        struct_init: StructInit,
        attn_fp32: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = StructSA(
            dim,
            num_heads,
            structure_dim=structure_dim,
            kernel_size=(3, 3, 3),
            kv_stride=kv_stride,
            attn_fp32=attn_fp32,
            struct_init=struct_init,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        # not torchvision.ops.MLP: its Dropout layers move the second Linear from mlp.2 to mlp.3 (saved checkpoints)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), grid)
        return x + self.mlp(self.norm2(x))


class PureAttentionNet(nn.Module):
    """Per-frame patchify (no temporal kernel) + `depth` StructSA blocks + mean pool + linear classifier.

    Args:
        num_classes: classifier outputs (0 = `forward` returns the pooled features).
        dim, depth, num_heads, mlp_ratio: width, blocks, heads, MLP expansion.
        patch_size: spatial patch of the per-frame embedding (a Conv3d with kernel and stride (1, p, p)).
        structure_dim, kv_stride, struct_init, attn_fp32: of every StructSA (see `StructSA`).
        pos_embed: "none" (the network sees no token position) or "learned" (one vector per (t, y, x) token,
            sized for num_frames x crop_size²; other input sizes are refused).
        num_frames, crop_size: the input size the learned position embedding is made for.

    Input (B, 3, T, H, W), output logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int = 8,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        structure_dim: int = 4,
        kv_stride: int = 1,
        struct_init: StructInit = "random",
        attn_fp32: bool = False,
        pos_embed: PosEmbed = "none",
        num_frames: int = 4,
        crop_size: int = 32,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if pos_embed not in ("none", "learned"):
            raise ValueError(f"PureAttentionNet: pos_embed={pos_embed!r}; use 'none' or 'learned'")
        if crop_size % patch_size:
            raise ValueError(
                f"PureAttentionNet: crop_size={crop_size} is not a multiple of patch_size={patch_size}"
            )
        self.patch_size, self.structure_dim, self.num_features = patch_size, structure_dim, dim
        self.patch_embed = nn.Conv3d(
            in_chans, dim, (1, patch_size, patch_size), stride=(1, patch_size, patch_size)
        )
        self.grid = (num_frames, crop_size // patch_size, crop_size // patch_size)
        tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim)) if pos_embed == "learned" else None
        self.blocks = nn.ModuleList(
            PureAttentionBlock(dim, num_heads, mlp_ratio, structure_dim, kv_stride, struct_init, attn_fp32)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_classes(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else 0

    def structsa_modules(self) -> list[StructSA]:
        """Every StructSA of the network, in order."""
        return [block.attn for block in self.blocks]

    def init_identity(self) -> None:
        """Every StructSA filter to the identity: with S = 1 the network computes plain attention exactly."""
        for m in self.structsa_modules():
            m.init_identity()

    def no_weight_decay(self) -> set[str]:
        """Biases, norms and the position embedding skip weight decay."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1 or name == "pos_embed"}

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """(B, 3, T, H, W) -> tokens (B, N, C) after the last block, and their (T, H', W') grid."""
        if x.dim() != 5:
            raise ValueError(f"PureAttentionNet: expected (B, 3, T, H, W), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        b, c, t, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            if (t, h, w) != self.grid:
                raise ValueError(
                    f"PureAttentionNet: the learned position embedding is for a {self.grid} token grid "
                    f"(num_frames x (crop_size / patch_size)²), got {(t, h, w)}"
                )
            tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens, (t, h, w))
        return tokens, (t, h, w)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features (B, C): the mean of the normalised tokens."""
        tokens, _ = self.forward_tokens(x)
        return self.norm(tokens).mean(1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
