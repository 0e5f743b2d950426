"""`make demo`: the whole pipeline on the synthetic motion benchmark, on a laptop CPU.

Generates the benchmark (cached), trains structvit_xs with `configs/synthetic.yaml` through the same
`python -m src.cli fit` as every other dataset, tests the best checkpoint, predicts a few clips, and prints
test top-1 / top-5 / mean-class accuracy and the accuracy on the time-reversed class pairs (the clips a
model that ignores frame order cannot tell apart).

    python -m src.demo --data-root data --runs runs [--fast] [-- extra `src.cli fit` arguments]

Each step runs the real command line in a subprocess and prints it, so any step can be re-run by hand. The
run folder is `<runs>/synthetic/version_<n>/` (fit), with `test/` and `predict/` inside it; a summary is
written to `demo_summary.json` there. `--fast` is the tiny variant the tests run (56 clips of 8 frames at
32x32, 2 epochs): it checks that everything connects, not that the model learns.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from src.paths import REPO_ROOT, configs_dir
from src.runs import best_checkpoint, cli_env, next_version, run_cli, test_results

RUN_NAME = "synthetic"

# The tiny variant for the tests: every stage runs; it checks the wiring, not the learning.
FAST_DATA = {"train": 28, "val": 14, "test": 14, "frames": 8, "size": 32}
FAST_FIT = [
    "--trainer.max_epochs",
    "2",
    "--data.num_frames",
    "8",
    "--data.crop_size",
    "32",
    "--data.batch_size",
    "7",
    "--data.num_workers",
    "1",
    "--trainer.log_every_n_steps",
    "1",
]


def default_threads() -> int:
    """Cores left beside the config's two loader workers (at least 1): on 2 cores one torch thread, because
    OpenMP threads spinning beside the loader workers slow the training down."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) - 2)


def prepare_data(data_root: Path, fast: bool, workers: int) -> tuple[Path, dict, float]:
    """Generate (or find cached) the benchmark with `python -m data_prep.synthetic` in a subprocess; returns
    (index folder, the manifest.json the generator wrote, seconds)."""
    root = Path(data_root) / ("synthetic_fast" if fast else "synthetic")
    options = [f"--{key}={value}" for key, value in (FAST_DATA if fast else {}).items()]
    args = ["--out", str(root), "--workers", str(workers), *options]
    print("$ python -m data_prep.synthetic " + " ".join(args), flush=True)
    start = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-m", "data_prep.synthetic", *args], cwd=REPO_ROOT, env=cli_env(None)
    )
    if code != 0:
        raise RuntimeError(f"`python -m data_prep.synthetic` failed (exit {code}); its output is above")
    manifest = json.loads((root / "manifest.json").read_text())
    return root, manifest, time.perf_counter() - start


def sample_clips(
    index: Path, manifest: dict, out_dir: Path, per_class: int = 1, pairs: int = 2
) -> list[Path]:
    """Copy one test clip of each class of the first `pairs` reversed pairs into `out_dir` (for predict)."""
    classes = [i for pair in manifest.get("reversed_pairs", [])[:pairs] for i in pair]
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen: list[Path] = []
    with open(index / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for label in classes:
        for row in [r for r in rows if int(r["label"]) == label][:per_class]:
            target = out_dir / Path(row["path"]).name
            shutil.copyfile(index / row["path"], target)
            chosen.append(target)
    return chosen


def read_predictions(path: Path) -> list[dict]:
    """The JSON-lines records the prediction writer wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:5.1f} %"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def _show(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it (what `make demo` users typed)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def report(summary: dict) -> str:
    """The text the demo prints at the end."""
    r = summary["results"]
    t = summary["seconds"]
    lines = [
        "",
        f"== Results: {summary['model']} on the synthetic motion benchmark, test split ({r['clips']} clips, "
        f"{summary['checkpoint_name']}) ==",
        f"  top-1                {_pct(r['top1'])}",
        f"  top-5                {_pct(r['top5'])}",
        f"  mean-class           {_pct(r['mean_class'])}",
        f"  time-reversed pairs  {_pct(r['reversed_pairs'])}   ({r['reversed_clips']} clips of "
        f"{2 * len(summary['reversed_pairs'])} paired classes; {_pct(r['reversed_confusion']).strip()} taken for "
        "the time-reversed partner)",
    ]
    if summary["predictions"]:
        lines.append("  predict (test clips):")
        for item in summary["predictions"]:
            lines.append(f"    {item['file']:<28} -> {item['class']:<12} p={item['prob']:.2f}")
    lines += [
        f"  wall time            {_minutes(t['total'])} (data {t['data']:.0f} s, fit {t['fit']:.0f} s, "
        f"test {t['test']:.0f} s, predict {t['predict']:.0f} s); load average {summary['loadavg_start']:.1f} -> "
        f"{summary['loadavg_end']:.1f} on {os.cpu_count()} cores",
        f"  target (>= 90 % top-1 in <= 15 min): {'met' if summary['target_met'] else 'NOT met'}",
        "",
        f"Run folder: {_show(summary['run_dir'])} (config.yaml, checkpoints/, test/ reports, predict/, "
        "demo_summary.json)",
        f"TensorBoard logs: {_show(summary['runs'])} -- open them with `make tensorboard RUNS={_show(summary['runs'])}` "
        f"(or `tensorboard --logdir {_show(summary['runs'])}`) and browse http://localhost:6006",
    ]
    return "\n".join(lines)


def run_demo(
    data_root: Path,
    runs: Path,
    *,
    fast: bool = False,
    extra: list[str] | None = None,
    threads: int | None = None,
    quiet: bool = False,
) -> dict:
    """Generate, fit, test, predict; returns the summary (also written to `<run_dir>/demo_summary.json`)."""
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    name = RUN_NAME + ("_fast" if fast else "")
    print(f"[1/4] data: generating (or finding cached) the synthetic benchmark under {data_root}", flush=True)
    index, manifest, data_s = prepare_data(data_root, fast, workers=os.cpu_count() or 1)
    counts = manifest["counts"]
    print(
        f"      {index}: {counts['train']} train / {counts['val']} val / {counts['test']} test clips, "
        f"{manifest['num_classes']} classes, {len(manifest['reversed_pairs'])} time-reversed pairs "
        f"(fingerprint {manifest['fingerprint']}), {data_s:.1f} s",
        flush=True,
    )

    version = next_version(runs, name)
    config = configs_dir() / "synthetic.yaml"
    run_dir = Path(runs) / name / f"version_{version}"
    common = ["--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name]
    fit_args = [
        "fit",
        "--config",
        str(config.relative_to(REPO_ROOT)),
        "--data.root",
        str(Path(index).resolve()),
        *common,
        "--trainer.logger.init_args.version",
        str(version),
        *(FAST_FIT if fast else []),
        *(extra or []),
    ]
    print(f"[2/4] fit: training {'' if not fast else '(fast variant) '}into {run_dir}", flush=True)
    fit_s = run_cli(fit_args, threads=threads, quiet=quiet)

    checkpoint = best_checkpoint(run_dir)
    after_fit = ["--config", str(run_dir / "config.yaml"), "--ckpt_path", str(checkpoint), *common]
    print(f"[3/4] test: {checkpoint.name} on the test split", flush=True)
    test_s = run_cli(
        ["test", *after_fit, "--trainer.logger.init_args.version", f"version_{version}/test"],
        threads=threads,
        quiet=quiet,
    )
    results = test_results(run_dir / "test", manifest["reversed_pairs"])

    print("[4/4] predict: a few test clips through `src.cli predict`", flush=True)
    samples = sample_clips(index, manifest, run_dir / "predict" / "clips")
    # the checkpoint alone: its classes and evaluation protocol come from the file, no config or data.root
    predict_s = run_cli(
        [
            "predict",
            "--ckpt_path",
            str(checkpoint),
            "--data.predict_path",
            str(samples[0].parent),
            "--predict_writer.output",
            str(run_dir / "predict" / "predictions.jsonl"),
            "--predict_writer.features",
            "true",
        ],
        threads=threads,
        quiet=quiet,
    )
    predictions = [
        {"file": Path(rec["path"]).name, "class": rec["top5"][0]["class"], "prob": rec["top5"][0]["prob"]}
        for rec in read_predictions(run_dir / "predict" / "predictions.jsonl")
    ]
    total = time.perf_counter() - start
    summary = {
        "model": "structvit_xs",
        "fast": fast,
        "index": str(index),
        "fingerprint": manifest["fingerprint"],
        "reversed_pairs": manifest["reversed_pairs"],
        "runs": str(runs),
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "checkpoint_name": checkpoint.name,
        "fit_command": "python -m src.cli " + " ".join(fit_args),
        "results": asdict(results),
        "predictions": predictions,
        "seconds": {"data": data_s, "fit": fit_s, "test": test_s, "predict": predict_s, "total": total},
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
        "target_met": results.top1 >= 0.9 and total <= 15 * 60,
    }
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(report(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line of `make demo`; arguments it does not know are passed on to `src.cli fit`."""
    parser = argparse.ArgumentParser(prog="python -m src.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("DATA_ROOT") or "data"),
        help="where the benchmark is generated (<data-root>/synthetic); default $DATA_ROOT or ./data",
    )
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="TensorBoard / checkpoint root (default runs)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="tiny data and 2 epochs: the end-to-end check of the tests"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch CPU threads of the src.cli processes (OMP_NUM_THREADS; default: the cores "
        "left beside two loader workers, at least 1: %(default)s here)",
    )
    parser.add_argument("--quiet", action="store_true", help="hide the output of the src.cli steps")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    if any(not a.startswith("--") for a in extra[:1]):
        parser.error(f"unexpected argument {extra[0]!r}; extra arguments go to `src.cli fit` as --key value")
    run_demo(
        args.data_root.resolve(),
        args.runs.resolve(),
        fast=args.fast,
        extra=extra,
        threads=args.threads,
        quiet=args.quiet,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
