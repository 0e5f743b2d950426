"""Parameters and GFLOPs (multiply-adds, the fvcore convention of the paper) counted from the real forward.

The model is built and run on the meta device, so even StructViT-B at 32x224² costs no memory and no
arithmetic; `torch.utils.flop_counter.FlopCounterMode` records every convolution, matmul and attention
(it sees scaled_dot_product_attention only on meta). Norms and elementwise ops are not counted (fvcore
counts norms too; they are a negligible share here).

    python -m src.models.flops --model structvit_s --frames 16 --size 224 --num-classes 400
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import build_model, list_models


@dataclass
class FlopReport:
    """Parameter count and multiply-adds of one forward pass of one view."""

    model: str
    input_shape: tuple[int, ...]
    params: int
    gflops: float  # multiply-adds / 1e9
    per_stage: dict[str, float] = field(default_factory=dict)  # top-level module -> GFLOPs (multiply-adds)

    def __str__(self) -> str:
        lines = [
            f"model {self.model}  input {tuple(self.input_shape)}",
            f"params {self.params / 1e6:.2f}M  GFLOPs {self.gflops:.2f} (multiply-adds per view)",
        ]
        lines += [f"  {name:<14} {g:8.3f}" for name, g in self.per_stage.items()]
        return "\n".join(lines)


def count_flops(model: nn.Module, input_shape: tuple[int, ...], name: str | None = None) -> FlopReport:
    """Count parameters and multiply-adds of model on one input of input_shape (batch 1 expected)."""
    device = next(model.parameters()).device
    x = torch.zeros(input_shape, device=device)
    counter = FlopCounterMode(display=False, depth=3)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    root = type(model).__name__
    counts = {name: sum(ops.values()) / 2e9 for name, ops in counter.get_flop_counts().items()}
    per_stage: dict[str, float] = {}
    for child_name, child in model.named_children():
        if isinstance(child, nn.ModuleList):  # a ModuleList is never called: sum its blocks
            total = sum(counts.get(f"{root}.{child_name}.{i}", 0.0) for i in range(len(child)))
        else:
            total = counts.get(f"{root}.{child_name}", 0.0)
        if total:
            per_stage[child_name] = total
    return FlopReport(
        model=name or root,
        input_shape=tuple(input_shape),
        params=sum(p.numel() for p in model.parameters()),
        gflops=counter.get_total_flops() / 2e9,
        per_stage=per_stage,
    )


def model_flops(
    name: str, *, frames: int = 16, size: int = 224, num_classes: int = 400, image: bool = False, **overrides
) -> FlopReport:
    """Build a registered model on the meta device and count it for one (1, 3, T, size, size) view."""
    if image:
        overrides["image"] = True
    try:
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes, **overrides)
    except (RuntimeError, NotImplementedError):  # builders that read tensor values (pytorchvideo's MViT)
        model = build_model(name, num_classes=num_classes, **overrides).to("meta")
    shape = (1, 3, size, size) if image else (1, 3, frames, size, size)
    label = name + "".join(f" {k}={v}" for k, v in overrides.items())
    return count_flops(model, shape, name=label)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--structure-dim", type=int, default=None, help="D (StructViT family)")
    parser.add_argument("--kv-stride", type=int, default=None, help="S (StructViT family)")
    parser.add_argument("--image", action="store_true", help="count the image network on (1, 3, size, size)")
    args = parser.parse_args(argv)
    overrides = {}
    if args.structure_dim is not None:
        overrides["structure_dim"] = args.structure_dim
    if args.kv_stride is not None:
        overrides["kv_stride"] = args.kv_stride
    if args.model in ("x3d_m", "mvit_b_16x4"):
        overrides.update(num_frames=args.frames, crop_size=args.size)
    print(
        model_flops(
            args.model,
            frames=args.frames,
            size=args.size,
            num_classes=args.num_classes,
            image=args.image,
            **overrides,
        )
    )


if __name__ == "__main__":
    main()
