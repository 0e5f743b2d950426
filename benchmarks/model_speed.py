"""Fast-vs-reference StructSA timing for one layer (forward + backward), median of repeats after warm-up.

Default: one stage-3 layer of StructViT-S at 8 frames (C 320, 5 heads, grid (4, 14, 14), N 784, D 4, S 1).

    python -m benchmarks.model_speed --dim 320 --heads 5 --grid 4 14 14 --structure-dim 4 --kv-stride 1 --repeats 5
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import Timing, time_call
from src.models.structsa import StructSA


def time_layer(
    module: StructSA, x: torch.Tensor, grid: tuple[int, int, int], path: str, repeats: int
) -> Timing:
    """Seconds per forward + backward of module's `path` ("fast" or "reference"), one warm-up run first."""
    fn = module.forward if path == "fast" else module.forward_reference

    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        fn(x, grid).sum().backward()

    return time_call(step, reps=repeats, warmup=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--grid", type=int, nargs=3, default=[4, 14, 14])
    parser.add_argument("--structure-dim", type=int, default=4)
    parser.add_argument("--kv-stride", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    grid = tuple(args.grid)
    module = StructSA(args.dim, args.heads, structure_dim=args.structure_dim, kv_stride=args.kv_stride)
    x = torch.randn(args.batch, grid[0] * grid[1] * grid[2], args.dim, requires_grad=True)
    medians = {}
    for path in ("fast", "reference"):
        timing = time_layer(module, x, grid, path, args.repeats)
        medians[path] = timing.median_s
        print(
            f"{path:<9} median {timing.median_s * 1e3:9.1f} ms  min {timing.min_s * 1e3:.0f}  "
            f"max {timing.max_s * 1e3:.0f}  ({timing.reps} runs)"
        )
    print(
        f"reference / fast = {medians['reference'] / medians['fast']:.1f}x  "
        f"(threads {torch.get_num_threads()}, x {tuple(x.shape)}, grid {grid}, D {args.structure_dim}, "
        f"S {args.kv_stride})"
    )


if __name__ == "__main__":
    main()
