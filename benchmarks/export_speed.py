"""CPU time per clip of an exported model: eager PyTorch vs onnxruntime vs TorchScript.

Why: `python -m src.export` takes a trained model out of Python; this says what running it that way costs or
saves on a CPU, and that the exported files agree with eager PyTorch on the models people use.

For each model (random weights, seed 0: the speed does not depend on them) the backbone is exported by the
same functions the command uses (`src.export.export_onnx` / `export_torchscript`) into a temporary folder,
checked by `src.export.check_export` (max abs logit difference at two batch sizes), then the three runtimes
are timed on the same clip batch, interleaved (eager, onnxruntime, TorchScript, eager, ...), at 1 and 2
threads (torch.set_num_threads; onnxruntime's intra-op threads), after warm-up calls; the figure is the
median of the repeats, divided by the batch size. Models:

- structvit_xs at the synthetic benchmark's protocol (configs/synthetic.yaml: 8 frames, 32x32, 14 classes),
  batch 1 (latency) and 8 (throughput);
- structvit_s at 16x224 (the Kinetics protocol, 400 classes), batch 1, fewer repeats.

    python -m benchmarks.export_speed [--models structvit_xs structvit_s] [--threads 1 2] [--doc BENCHMARKS.md]

Writes benchmarks/results/export_speed.json and, with --doc, the "## Export" section of that file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.machine import machine_info
from benchmarks.tables import write_section
from src.export import (
    DEFAULT_OPSET,
    check_export,
    example_clips,
    export_onnx,
    export_torchscript,
    load_exported,
    require,
)
from src.models import build_model

SECTION = "## Export"
RESULTS = Path(__file__).resolve().parent / "results" / "export_speed.json"
RUNTIMES = ("eager", "onnxruntime", "torchscript")


@dataclass(frozen=True)
class Case:
    """One model to export and time: its clip shape, classes, batch sizes and repeats."""

    variant: str
    clip_shape: tuple[int, int, int, int]
    num_classes: int
    batches: tuple[int, ...]
    repeats: int
    warmup: int
    check_batches: tuple[int, int]
    protocol: str


CASES = {
    "structvit_xs": Case(
        "structvit_xs",
        (3, 8, 32, 32),
        14,
        (1, 8),
        repeats=25,
        warmup=3,
        check_batches=(1, 3),
        protocol="synthetic (configs/synthetic.yaml): 8 frames, 32x32",
    ),
    "structvit_s": Case(
        "structvit_s",
        (3, 16, 224, 224),
        400,
        (1,),
        repeats=3,
        warmup=2,
        check_batches=(1, 2),
        protocol="Kinetics-400: 16 frames, 224x224",
    ),
}


def time_interleaved(
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], clips: torch.Tensor, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each function on `clips`, the functions taking turns at every repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(clips)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(clips)
            times[name].append(time.perf_counter() - start)
    return times


def run_case(case: Case, threads: list[int], folder: Path) -> dict:
    """Export, check and time one model; a JSON-ready record."""
    torch.manual_seed(0)
    torch.set_num_threads(max(threads))
    model = build_model(case.variant, num_classes=case.num_classes).eval()
    record: dict = {
        "variant": case.variant,
        "clip_shape": list(case.clip_shape),
        "num_classes": case.num_classes,
        "protocol": case.protocol,
        "parameters": sum(p.numel() for p in model.parameters()),
        "formats": {},
        "timings": [],
    }
    paths = {}
    for fmt, export in (("onnx", export_onnx), ("torchscript", export_torchscript)):
        path = folder / f"{case.variant}.{'onnx' if fmt == 'onnx' else 'pt'}"
        start = time.perf_counter()
        export(model, case.clip_shape, path)
        seconds = time.perf_counter() - start
        check = check_export(model, path, fmt, case.clip_shape, batch_sizes=case.check_batches)
        paths[fmt] = path
        record["formats"][fmt] = {
            "size_bytes": path.stat().st_size,
            "export_s": round(seconds, 2),
            **check.to_dict(),
        }
        print(
            f"{case.variant} {fmt}: {path.stat().st_size / 1e6:.2f} MB, exported in {seconds:.1f} s, "
            f"max abs diff {check.max_abs_diff:.3g} (batch sizes {check.batch_sizes})",
            flush=True,
        )

    def eager(clips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(clips)

    for n in threads:
        torch.set_num_threads(n)
        fns = {
            "eager": eager,
            "onnxruntime": load_exported(paths["onnx"], "onnx", threads=n),
            "torchscript": load_exported(paths["torchscript"], "torchscript"),
        }
        for batch in case.batches:
            clips = example_clips(case.clip_shape, batch, seed=100 + batch)
            times = time_interleaved(fns, clips, case.repeats, case.warmup)
            row = {"threads": n, "batch": batch, "repeats": case.repeats, "warmup": case.warmup}
            for name, values in times.items():
                row[name] = {
                    "median_ms_per_clip": round(1e3 * statistics.median(values) / batch, 3),
                    "min_ms_per_clip": round(1e3 * min(values) / batch, 3),
                    "max_ms_per_clip": round(1e3 * max(values) / batch, 3),
                }
            record["timings"].append(row)
            print(
                f"{case.variant} threads={n} batch={batch}: "
                + ", ".join(f"{name} {row[name]['median_ms_per_clip']:.2f} ms/clip" for name in RUNTIMES),
                flush=True,
            )
    return record


def section_text(results: dict) -> str:
    """The "## Export" section: machine, command, agreement and size table, time table."""
    m = results["machine"]
    lines = [
        f"Exported files (`python -m src.export`, docs/export.md) against eager PyTorch on the CPU: {m['cpu']}, "
        f"{m['cpu_cores']} cores shared with other jobs (1-minute load {m['load_average_1m']} at the start), "
        f"torch {m['torch']}, onnxruntime {results['onnxruntime']}, {m['date'][:10]}. Random weights (seed 0), "
        "exported by the functions the command uses; ONNX through the TorchScript-based exporter (opset "
        f"{results['opset']}), TorchScript by tracing. `{results['command']}` (`make export-speed`), "
        "benchmarks/results/export_speed.json.",
        "",
        "Agreement with eager PyTorch (largest absolute logit difference on random normal clips, two batch sizes) "
        "and file size:",
        "",
        "| model | clip | format | max abs diff | batch sizes | file size | export time |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in results["models"]:
        clip = "x".join(map(str, rec["clip_shape"][1:]))
        for fmt, f in rec["formats"].items():
            lines.append(
                f"| {rec['variant']} | {clip} | {fmt} | {f['max_abs_diff']:.2g} | "
                f"{', '.join(map(str, f['batch_sizes']))} | {f['size_bytes'] / 1e6:.1f} MB | {f['export_s']:.1f} s |"
            )
    lines += [
        "",
        "Time per clip (median of the repeats; the runtimes interleaved; in parentheses: eager time / this time):",
        "",
        "| model | clip | threads | batch | repeats | eager | onnxruntime | TorchScript |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in results["models"]:
        clip = "x".join(map(str, rec["clip_shape"][1:]))
        for row in rec["timings"]:
            eager = row["eager"]["median_ms_per_clip"]
            cells = [f"{eager:.1f} ms"] + [
                f"{row[name]['median_ms_per_clip']:.1f} ms ({eager / row[name]['median_ms_per_clip']:.2f}x)"
                for name in ("onnxruntime", "torchscript")
            ]
            lines.append(
                f"| {rec['variant']} | {clip} | {row['threads']} | {row['batch']} | {row['repeats']} | "
                + " | ".join(cells)
                + " |"
            )
    worst = max(f["max_abs_diff"] for rec in results["models"] for f in rec["formats"].values())
    lines += [
        "",
        "Reading (this run):",
        "",
        f"- Every exported file agrees with eager PyTorch to {worst:.2g} or better (the command's default "
        "tolerance is 1e-4), at both batch sizes: the batch dimension is dynamic in both formats.",
    ]
    for n in results["threads"]:
        rows = [
            (rec["variant"], row)
            for rec in results["models"]
            for row in rec["timings"]
            if row["threads"] == n
        ]
        parts = []
        for name, label in (("onnxruntime", "onnxruntime"), ("torchscript", "TorchScript")):
            ratios = [row["eager"]["median_ms_per_clip"] / row[name]["median_ms_per_clip"] for _, row in rows]
            best = max(range(len(rows)), key=lambda i: ratios[i])
            parts.append(
                f"{label} runs at {min(ratios):.2f}-{max(ratios):.2f}x the speed of eager PyTorch "
                f"(best: {rows[best][0]}, batch {rows[best][1]['batch']})"
            )
        lines.append(f"- {n} thread{'s' if n > 1 else ''}: " + "; ".join(parts) + ".")
    loads = [m.get("load_average_1m"), results.get("load_average_1m_end")]
    busy = [x for x in loads if x is not None and x > m["cpu_cores"]]
    if busy:
        lines.append(
            f"- The host was oversubscribed (1-minute load {loads[0]} at the start, {loads[1]} at the end, "
            f"on {m['cpu_cores']} cores): timings with {max(results['threads'])} threads measure contention "
            "(torch's OpenMP threads waiting for a core) as much as the runtimes; the 1-thread rows are "
            "the fairer comparison. One run; a few per cent is noise."
        )
    else:
        lines.append("- One run on a shared host; differences of a few per cent are noise.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results written."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, help="override every model's repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, help="update the '## Export' section of this Markdown file")
    args = parser.parse_args(argv)
    onnxruntime = require("onnxruntime", "benchmarks.export_speed")
    results = {
        "machine": machine_info(),
        "command": "python -m benchmarks.export_speed " + shlex.join(argv or sys.argv[1:]),
        "onnxruntime": onnxruntime.__version__,
        "opset": DEFAULT_OPSET,
        "threads": args.threads,
        "models": [],
    }
    results["command"] = results["command"].strip()
    with tempfile.TemporaryDirectory(prefix="export_speed_") as tmp:
        for name in args.models:
            case = CASES[name]
            if args.repeats:
                case = Case(**{**case.__dict__, "repeats": args.repeats})
            results["models"].append(run_case(case, args.threads, Path(tmp)))
    results["load_average_1m_end"] = machine_info()["load_average_1m"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.doc:
        write_section(args.doc, section_text(results), SECTION)
        print(f"wrote the {SECTION!r} section of {args.doc}")
    return results


if __name__ == "__main__":
    main()
