"""Which scaled-dot-product-attention kernel a call really ran, read from the profiler's operator names.

`F.scaled_dot_product_attention` silently falls back to the math kernel (which materialises the N x N'
attention matrix) when an input breaks a fused kernel's rules, e.g. a last dimension with stride != 1;
the benchmark rows record the kernel so such a fallback shows in the tables instead of hiding in the timings.
"""

from __future__ import annotations

from collections.abc import Iterable

# aten operator name fragment -> kernel name, most specific first
_KERNELS = (
    ("_scaled_dot_product_flash_attention_for_cpu", "flash-cpu"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_efficient_attention", "mem-efficient"),
    ("_scaled_dot_product_attention_math", "math"),
)


def sdpa_kernel(op_names: Iterable[str]) -> str:
    """The SDPA kernel among `op_names`: flash-cpu, flash, cudnn, mem-efficient, math, or 'none'."""
    names = list(op_names)
    for fragment, kernel in _KERNELS:
        if any(fragment in name for name in names):
            return kernel
    if any(name.endswith("scaled_dot_product_attention") for name in names):
        return "math"  # the composite op ran without a fused kernel below it
    return "none"


def sdpa_kernels(op_names: Iterable[str]) -> list[str]:
    """Every SDPA kernel among `op_names` (a whole network may mix fused and math calls)."""
    names = list(op_names)
    found = [kernel for fragment, kernel in _KERNELS if any(fragment in name for name in names)]
    return [
        k for i, k in enumerate(found) if k not in found[:i] and not (k == "flash" and "flash-cpu" in found)
    ]
