"""Run a benchmark suite and write its results: `python -m benchmarks.run --suite cpu|quick|gpu|target|tiny`.

Writes benchmarks/results/<suite>.json (machine, settings, one row per measurement, written after each
section so an interrupted run keeps what it measured) and the rendered tables to
benchmarks/results/<suite>.md; `--doc BENCHMARKS.md` also replaces that suite's section in the document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.attention import grid_cases, run_cases, scaling_cases
from benchmarks.limits import Budget, device_memory_budget
from benchmarks.machine import machine_info
from benchmarks.model_step import MODEL_CASES, measure_models
from benchmarks.suites import SUITES, Suite
from benchmarks.tables import gpu_training_rates, render, update_document

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("structsa", "scaling", "model", "pipeline", "pytorchvideo", "decoders", "compile", "images")
DEFAULT_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "structvit-lightning" / "bench"
)


def _budget(suite: Suite) -> Budget:
    """The suite's memory budget, capped at 70% of the memory the host has available now."""
    memory = device_memory_budget(suite.device, int(suite.memory_budget_gib * 2**30))
    return Budget(memory_bytes=memory, seconds=suite.reference_case_s)


def run_structsa(suite: Suite, log: Callable[[str], None]) -> list[dict]:
    """Attention layers: fast vs reference vs vanilla at the suite's StructViT-S shapes."""
    cases = grid_cases(suite.shapes, suite.structure_dims, suite.strides, suite.modes)
    return run_cases(cases, **_attention_settings(suite), total_s=suite.structsa_s, log=log)


def run_scaling(suite: Suite, log: Callable[[str], None]) -> list[dict]:
    """Scaling: fast and reference path against token count at D = 4, S = 1."""
    cases = scaling_cases(suite.scaling_frames, suite.scaling_modes, layer=suite.scaling_layer)
    return run_cases(cases, **_attention_settings(suite), total_s=suite.scaling_s, log=log)


def _attention_settings(suite: Suite) -> dict:
    return dict(
        reps=suite.reps,
        warmup=suite.warmup,
        device=suite.device,
        dtype=suite.dtype,
        budget=_budget(suite),
        reference_total_s=suite.reference_total_s,
        reference_reps=suite.reference_reps,
    )


def run_models(suite: Suite, log: Callable[[str], None]) -> list[dict]:
    """Whole models: training-step throughput and peak memory of whole models (timed steps interleaved)."""
    if suite.model_input is None:
        return []
    batch, frames, size = suite.model_input
    cases = [case for case in MODEL_CASES if case.label in suite.model_names]
    rows = measure_models(
        cases,
        batch=batch,
        frames=frames,
        size=size,
        reps=suite.model_reps,
        warmup=suite.model_warmup,
        device=suite.device,
        bf16=suite.model_bf16,
    )
    for row in rows:
        log(
            f"  {row['label']:18s} {row.get('step_ms', row.get('reason'))} ms/step, {row.get('peak_mib')} MiB"
        )
    return rows


def run_pipeline(suite: Suite, log: Callable[[str], None], cache_dir: Path) -> list[dict]:
    """Data pipeline: decode only and decode + augment per worker, per backend; the DataLoader with N workers."""
    from benchmarks.pipeline import measure_decode, measure_device_part, measure_loader
    from benchmarks.videos import video_set
    from src.data.decoding.torchcodec_reader import torchcodec_available

    rows = []
    reps, warmup = suite.pipeline_reps, 1 if suite.pipeline_reps > 1 else 0
    index_dirs = {}
    for kind in suite.video_kinds:  # every video first: once decord has loaded, PyAV cannot encode VP9
        start = time.perf_counter()
        index_dirs[kind.name] = video_set(kind, suite.videos_per_kind, cache_dir)
        log(
            f"  {kind.name}: {suite.videos_per_kind} videos at {index_dirs[kind.name]} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    for kind in suite.video_kinds:
        index_dir = index_dirs[kind.name]
        # before (augmentation in the workers) and after (on the device) side by side, every backend
        jobs = [(measure_decode, (kind, index_dir, b), {}) for b in suite.backends]
        jobs += [
            (measure_loader, (kind, index_dir, b, 0), {"augment_on": where})
            for where in ("cpu", "device")
            for b in suite.backends
        ]
        if torchcodec_available() is None:  # the optional third decoder, where it is installed and works
            jobs += [(measure_decode, (kind, index_dir, "torchcodec"), {})]
            jobs += [(measure_loader, (kind, index_dir, "torchcodec", 0), {"augment_on": "device"})]
        jobs += [  # repeated augmentation (num_repeats 2, UniFormer's recipe): what one decode gives twice
            (
                measure_loader,
                (kind, index_dir, suite.backends[0], 0),
                {"augment_on": "device", "num_repeats": 2},
            )
        ]
        jobs += [(measure_device_part, (kind, index_dir, suite.backends[0]), {})]
        jobs += [
            (measure_loader, (kind, index_dir, suite.backends[0], w), {"augment_on": "device"})
            for w in suite.loader_workers
        ]
        for fn, args, options in jobs:
            row = _guarded(
                lambda fn=fn, args=args, options=options: fn(*args, reps=reps, warmup=warmup, **options),
                kind=kind.name,
            )
            log(
                f"  {kind.name:5s} {row.get('stage', fn.__name__):15s} {row.get('backend', ''):7s} "
                f"workers={row.get('workers', '?')}: {row.get('clips_per_s', row.get('reason'))} clips/s"
            )
            rows.append(row)
    return rows


def run_pytorchvideo(suite: Suite, log: Callable[[str], None], cache_dir: Path) -> list[dict]:
    """This pipeline (augmentation in the worker, and on the device: CPU part) against PyTorchVideo's
    datasets on the same files, per core; see benchmarks/pytorchvideo_compare.py."""
    from benchmarks.pytorchvideo_compare import measure

    crop, frames = suite.pytorchvideo_clip or (None, None)
    return measure(
        kinds=suite.video_kinds,
        cache_dir=cache_dir,
        clips=suite.pytorchvideo_clips,
        reps=suite.pipeline_reps,
        ours_variants={
            "augment on CPU": {"augment_on": "cpu"},
            "augment on device": {"augment_on": "device"},
        },
        crop_size=crop,
        num_frames=frames,
        backends=tuple(b for b in suite.backends if b in ("pyav", "decord")),
        log=log,
    )


def run_decoders(suite: Suite, log: Callable[[str], None], cache_dir: Path) -> list[dict]:
    """The decoders compared fairly (benchmarks/decoders.py): clips per CPU-second of each reader on
    `decoder_files` distinct files per codec, cold caches, rows interleaved, decode only and whole worker."""
    from benchmarks.decoders import measure

    if not suite.decoder_kinds:
        return []
    return measure(
        suite.decoder_kinds,
        cache_dir,
        files=suite.decoder_files,
        passes=suite.decoder_passes,
        warmup_files=suite.decoder_warmup_files,
        clip=suite.decoder_clip,
        log=log,
    )


def run_images(suite: Suite, log: Callable[[str], None], cache_dir: Path) -> list[dict]:
    """Still images (benchmarks/images.py): decode and whole train loader per core, ours vs ImageFolder + PIL;
    the suite's size from `SUITE_SETTINGS` (none: skipped)."""
    from benchmarks.images import SUITE_SETTINGS, measure

    settings = SUITE_SETTINGS.get(suite.name)
    return measure(cache_dir=cache_dir, log=log, **settings) if settings else []


def run_compile(suite: Suite, log: Callable[[str], None]) -> list[dict]:
    """torch.compile vs eager (benchmarks/compile_speed.py): training step and inference per model, calls
    interleaved, compile time and logit difference; bf16 autocast where the suite's model rows use it."""
    from benchmarks.compile_speed import cases_named, measure

    if suite.compile_input is None:
        return []
    batch, frames, size = suite.compile_input
    return measure(
        cases_named(suite.compile_models),
        batch=batch,
        frames=frames,
        size=size,
        reps=suite.compile_reps,
        device=suite.device,
        bf16=suite.model_bf16,
        backend=suite.compile_backend,
        log=log,
    )


def _guarded(fn: Callable[[], dict], **context) -> dict:
    """Run one measurement; an exception becomes an error row (the run goes on and exits non-zero)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - reported in the results and the exit status
        traceback.print_exc()
        return {**context, "status": "error", "reason": f"{type(err).__name__}: {err}"[:300]}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the suite's sections, write JSON and tables; non-zero on any error row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where generated videos are kept"
    )
    parser.add_argument(
        "--doc", type=Path, default=None, help="also replace this suite's section of this file"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared host OpenMP's spinning barriers make multi-thread "
        "timings swing several-fold)",
    )
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only {sorted(unknown)}: choose from {SECTIONS}")
    if suite.device == "cuda" and not torch.cuda.is_available():
        print(
            f"suite {suite.name!r} needs a CUDA GPU and none is visible; run --suite cpu here",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(args.threads)
    out_dir = args.out or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {
        "suite": suite.name,
        "command": command.strip(),
        "machine": machine_info(),
        "settings": {k: v for k, v in asdict(suite).items() if k not in ("shapes", "video_kinds")}
        | {"dtype": str(suite.dtype), "budget_memory_gib": round(_budget(suite).memory_bytes / 2**30, 2)},
        "json": _display_path(out_dir / f"{suite.name}.json"),
        "sections": {},
    }
    runners = {
        "structsa": lambda: run_structsa(suite, print),
        "scaling": lambda: run_scaling(suite, print),
        "model": lambda: run_models(suite, print),
        "pipeline": lambda: run_pipeline(suite, print, args.cache_dir),
        "pytorchvideo": lambda: run_pytorchvideo(suite, print, args.cache_dir),
        "decoders": lambda: run_decoders(suite, print, args.cache_dir),
        "compile": lambda: run_compile(suite, print),
        "images": lambda: run_images(suite, print, args.cache_dir),
    }
    previous = out_dir / f"{suite.name}.json"
    if set(sections) != set(SECTIONS) and previous.is_file():
        # A partial re-run keeps the other sections of the last full run; each section says when it ran.
        old = json.loads(previous.read_text())
        kept = {k: v for k, v in old.get("sections", {}).items() if k not in sections}
        results["sections"].update(kept)
        results["section_runs"] = {k: v for k, v in old.get("section_runs", {}).items() if k in kept}
        for k in kept:
            results["section_runs"].setdefault(
                k, {"date": old["machine"]["date"], "load_average_1m": old["machine"].get("load_average_1m")}
            )
    started = time.perf_counter()
    for section in sections:
        print(f"[{section}] ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
        section_start = time.perf_counter()
        guarded = section in ("pipeline", "pytorchvideo", "decoders", "compile", "images")
        rows = _section_rows(runners[section], section) if guarded else runners[section]()
        results["sections"][section] = rows
        results.setdefault("section_runs", {})[section] = {
            "date": results["machine"]["date"],
            "load_average_1m": results["machine"].get("load_average_1m"),
        }
        results.setdefault("section_seconds", {})[section] = round(time.perf_counter() - section_start, 1)
        results["duration_s"] = round(time.perf_counter() - started, 1)
        _write(out_dir, suite.name, results, args.doc)
    errors = [r for rows in results["sections"].values() for r in rows if r.get("status") == "error"]
    print(
        f"done in {results['duration_s']:.0f} s: {out_dir / (suite.name + '.json')}"
        + (f"; {len(errors)} measurement(s) failed" if errors else "")
    )
    return 1 if errors else 0


def _display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (as the tables should cite it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _section_rows(runner: Callable[[], list[dict]], section: str) -> list[dict]:
    """The data sections need the data modules (and pytorchvideo), the compile section a working compiler
    toolchain for inductor; if one fails, one error row says why."""
    result = _guarded(lambda: {"rows": runner()}, stage=section)
    return result["rows"] if "rows" in result else [result]


def _write(out_dir: Path, suite: str, results: dict, doc: Path | None) -> None:
    (out_dir / f"{suite}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    tables = render(results, gpu_training_rates(out_dir))
    (out_dir / f"{suite}.md").write_text(tables)
    if doc is not None:
        update_document(doc, suite, tables)


if __name__ == "__main__":
    sys.exit(main())
