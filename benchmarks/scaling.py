"""Item 3: time and memory against token count at D = 4, fast path vs reference path.

Tokens grow by the clip length at StructViT-S stage-3 width (C = 320, 5 heads, 14x14 tokens per frame):
T = 1, 2, 4, ... gives N = 196, 392, 784, ... 6272. The reference path stops where its predicted memory or
time exceeds the budget; the row says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.attention import AttentionCase
from benchmarks.structsa_grid import STAGE3_8F, LayerShape


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
