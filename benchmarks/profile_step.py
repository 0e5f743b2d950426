"""Where the extra time of one model's training step goes, against another's: torch.profiler, op by op.

`python -m benchmarks.profile_step --input 2,8,112 uniformer_s structvit_s:kv_stride=2` profiles one
steady-state training step (forward, loss, backward, AdamW) of each model and prints the operators whose
self CPU time differs most, so a missed speed target points at the code to fix.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def parse_model(spec: str) -> tuple[str, dict]:
    """'structvit_s:kv_stride=2,structure_dim=4' -> ('structvit_s', {'kv_stride': 2, 'structure_dim': 4})."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if not value:
            raise ValueError(f"model spec {spec!r}: override {item!r} must be key=value")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, overrides


def step_profile(spec: str, shape: tuple[int, int, int], num_classes: int = 400) -> dict[str, float]:
    """Self CPU milliseconds per operator of one training step (after one warm-up step) of model `spec`."""
    from src.models import build_model

    name, overrides = parse_model(spec)
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, **overrides).train()
    optimizer = torch.optim.AdamW(model.parameters())
    batch, frames, size = shape
    clips = torch.randn(batch, 3, frames, size, size)
    labels = torch.randint(0, num_classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(clips), labels).backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def compare(base: dict[str, float], other: dict[str, float], top: int = 12) -> str:
    """A text table of the operators with the largest self-time difference (other - base), in ms."""
    ops = sorted(set(base) | set(other), key=lambda k: -abs(other.get(k, 0.0) - base.get(k, 0.0)))[:top]
    lines = [f"{'operator':58s} {'base ms':>9s} {'other ms':>9s} {'delta':>9s}"]
    for op in ops:
        b, o = base.get(op, 0.0), other.get(op, 0.0)
        lines.append(f"{op[:58]:58s} {b:9.1f} {o:9.1f} {o - b:+9.1f}")
    lines.append(
        f"{'total self CPU':58s} {sum(base.values()):9.1f} {sum(other.values()):9.1f} "
        f"{sum(other.values()) - sum(base.values()):+9.1f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Profile two models' training steps and print where their times differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="model spec, e.g. uniformer_s")
    parser.add_argument("other", help="model spec, e.g. structvit_s:kv_stride=2")
    parser.add_argument("--input", default="2,8,112", help="batch,frames,size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.split(","))
    if len(shape) != 3:
        parser.error(f"--input {args.input!r}: give batch,frames,size, e.g. 2,8,112")
    print(compare(step_profile(args.base, shape), step_profile(args.other, shape), args.top))


if __name__ == "__main__":
    main()
