"""`torch.compile` vs eager, whole models side by side: what `--model.compile` gains (or costs) on a device.

    python -m benchmarks.compile_speed [--quick] [--models structvit_xs structvit_s uniformer_s]
        [--input B T SIZE] [--reps N] [--backend inductor] [--out results.json]

For each model two identical copies (seed 0) are built; one is compiled the way `--model.compile` does it
(`nn.Module.compile`, mode "default"). Two kinds are measured:

- train: one training step (forward, cross-entropy, backward, AdamW), train mode, as benchmarks.model_step;
- inference: a forward under `torch.no_grad` in eval mode, on separate copies.

The first call of each compiled copy compiles (its time, with a cold compile cache, is stated: `compile_s`);
the logits of that first call are compared with the eager copy's on the same input and weights (max
absolute difference, and relative to the largest eager logit). Then the timed calls alternate model by model
and eager / compiled (eager train, compiled train, eager inference, compiled inference, next model, ...), so
a change in the host's load hits both sides alike; the figure is the median of `reps` calls. Dynamo's graph
and graph-break counts come with each row.

`make bench` runs this as its `compile` section (benchmarks/suites.py sets the shapes); `--quick` runs
structvit_xs alone at a toy shape with the aot_eager backend (a test's check that the harness works; the
numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.model_step import ModelCase, Trainee
from benchmarks.timing import synchronize, time_call

# Drop path off: its random masks differ between eager and inductor (which draws from its own generator), and
# the logits are compared; it is a few elementwise operations of the step.
NO_DROP_PATH = {"drop_path_rate": 0.0}
CASES = (
    ModelCase("structvit_xs", "structvit_xs", NO_DROP_PATH),
    ModelCase("structvit_s", "structvit_s", NO_DROP_PATH),  # D = 4, S = 1
    ModelCase("uniformer_s", "uniformer_s", NO_DROP_PATH),
)
KINDS = ("train", "inference")
# the smoke test: aot_eager (dynamo and AOTAutograd as for inductor, without its C++ build: minutes on 2 cores)
QUICK = dict(labels=("structvit_xs",), batch=2, frames=4, size=32, reps=2, backend="aot_eager")


@contextlib.contextmanager
def cold_compile_cache() -> Iterator[Path]:
    """Inductor's on-disk caches in a fresh folder, so `compile_s` is a first compile (not a cache hit)."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="compile-speed-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield Path(folder)
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def _dynamo_counts() -> dict:
    """Dynamo's totals so far in this process (a row's own: the difference around its first call)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


class _Side:
    """One copy of a model for one kind (train or inference), eager or compiled; `call()` runs it once and
    returns the logits."""

    def __init__(self, case: ModelCase, kind: str, device: str, bf16: bool, num_classes: int) -> None:
        self.trainee = Trainee(case, device, bf16, num_classes)  # seed 0: the two sides start equal
        self.kind = kind
        if kind == "inference":
            self.trainee.model.eval()

    def compile(self, mode: str, backend: str) -> None:
        # what VideoClassifier.configure_model does; a mode is an inductor option only
        options = {"mode": mode} if backend == "inductor" else {}
        self.trainee.model.compile(backend=backend, **options)

    def call(self, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        trainee = self.trainee
        if self.kind == "inference":
            with torch.no_grad(), trainee.autocast:
                return trainee.model(clips)
        trainee.optimizer.zero_grad(set_to_none=True)
        with trainee.autocast:
            logits = trainee.model(clips)
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        trainee.optimizer.step()
        return logits.detach()


def measure(
    cases: tuple[ModelCase, ...] | list[ModelCase] = CASES,
    *,
    batch: int,
    frames: int,
    size: int,
    reps: int = 5,
    device: str = "cpu",
    bf16: bool = False,
    mode: str = "default",
    backend: str = "inductor",
    num_classes: int = 400,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per model and kind: eager and compiled median ms, compile time, logit difference, graphs."""
    import torch._dynamo

    torch.manual_seed(0)
    clips = torch.randn(batch, 3, frames, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    pairs: list[tuple[dict, _Side, _Side]] = []
    # every compiled copy shares nn.Module's call code, one cache entry per model and kind: room for all
    limit = max(8, 2 * len(KINDS) * len(cases))
    with cold_compile_cache(), torch._dynamo.config.patch(recompile_limit=limit):
        for case in cases:
            for kind in KINDS:
                eager = _Side(case, kind, device, bf16, num_classes)
                compiled = _Side(case, kind, device, bf16, num_classes)
                compiled.trainee.model.load_state_dict(eager.trainee.model.state_dict())
                compiled.compile(mode, backend)
                before = _dynamo_counts()
                expected = eager.call(clips, labels)
                synchronize(device)
                start = time.perf_counter()
                got = compiled.call(clips, labels)
                synchronize(device)
                compile_s = time.perf_counter() - start
                diff = (got.double() - expected.double()).abs().max().item()
                scale = expected.double().abs().max().item()
                row = {
                    "label": case.label,
                    "model": case.name,
                    "overrides": case.overrides,
                    "kind": kind,
                    "input": [batch, 3, frames, size, size],
                    "device": device,
                    "precision": "bf16-autocast" if bf16 else "fp32",
                    "backend": backend,
                    "mode": mode,
                    "params_m": round(sum(p.numel() for p in eager.trainee.model.parameters()) / 1e6, 2),
                    "compile_s": round(compile_s, 1),
                    "max_abs_diff": diff,
                    "rel_diff": diff / scale if scale > 0 else diff,
                    **{k: v - before[k] for k, v in _dynamo_counts().items()},
                }
                log(
                    f"  {case.label:14s} {kind:9s} compiled in {compile_s:.1f} s, "
                    f"{row['graphs']} graph(s), {row['graph_breaks']} break(s), max |diff| {diff:.2g}"
                )
                pairs.append((row, eager, compiled))
        for _, eager, compiled in pairs:  # the warm-up call of each side (optimiser state, allocator)
            eager.call(clips, labels)
            compiled.call(clips, labels)
        samples = [{"eager": [], "compiled": []} for _ in pairs]
        for _ in range(reps):
            for times, (_, eager, compiled) in zip(samples, pairs):
                for side, fn in (("eager", eager), ("compiled", compiled)):
                    call = lambda fn=fn: fn.call(clips, labels)  # noqa: E731
                    times[side].append(time_call(call, reps=1, warmup=0, device=device).median_s)
    rows = []
    for (row, _, _), times in zip(pairs, samples):
        eager_ms, compiled_ms = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
        rows.append(
            {
                **row,
                "status": "ok",
                "eager_ms": round(eager_ms, 2),
                "compiled_ms": round(compiled_ms, 2),
                "speedup": round(eager_ms / compiled_ms, 3),
                "eager_range_ms": [round(min(times["eager"]) * 1e3, 2), round(max(times["eager"]) * 1e3, 2)],
                "compiled_range_ms": [
                    round(min(times["compiled"]) * 1e3, 2),
                    round(max(times["compiled"]) * 1e3, 2),
                ],
                "reps": reps,
            }
        )
        log(f"  {row['label']:14s} {row['kind']:9s} eager {eager_ms:.1f} ms, compiled {compiled_ms:.1f} ms")
    return rows


def cases_named(labels: tuple[str, ...] | list[str]) -> list[ModelCase]:
    """The CASES with these labels, in the order given (an unknown label: a one-line error)."""
    known = {c.label: c for c in CASES}
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise ValueError(f"compile_speed: unknown model(s) {unknown}; choose from {sorted(known)}")
    return [known[label] for label in labels]


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the rows as JSON (with the machine and the command)."""
    from benchmarks.machine import machine_info
    from benchmarks.tables import compile_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="structvit_xs alone at 2x3x4x32², aot_eager (a smoke test)"
    )
    parser.add_argument("--models", nargs="+", default=[c.label for c in CASES])
    parser.add_argument("--input", nargs=3, type=int, metavar=("B", "T", "SIZE"), default=(2, 8, 112))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--backend", default=None, help="torch.compile backend (default inductor; aot_eager with --quick)"
    )
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the GPU setting)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (as benchmarks.run)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        labels, (batch, frames, size), reps = (
            QUICK["labels"],
            (QUICK["batch"], QUICK["frames"], QUICK["size"]),
            QUICK["reps"],
        )
    else:
        labels, (batch, frames, size), reps = args.models, args.input, args.reps
    backend = args.backend or (QUICK["backend"] if args.quick else "inductor")
    try:
        cases = cases_named(labels)
    except ValueError as err:
        parser.error(str(err))
    started = time.perf_counter()
    rows = measure(
        cases,
        batch=batch,
        frames=frames,
        size=size,
        reps=reps,
        device=args.device,
        bf16=args.bf16,
        mode=args.mode,
        backend=backend,
    )
    print(compile_table(rows))
    if args.out is not None:
        results = {
            "command": "python -m benchmarks.compile_speed "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info(),
            "duration_s": round(time.perf_counter() - started, 1),
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


__all__ = ["CASES", "QUICK", "cases_named", "cold_compile_cache", "measure"]

if __name__ == "__main__":
    sys.exit(main())
