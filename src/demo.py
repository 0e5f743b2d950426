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
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic.yaml"
RUN_NAME = "synthetic"

# The tiny variant for the tests: every stage runs, in about a minute on two shared cores.
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


@dataclass
class TestResults:
    """Accuracies (fractions in [0, 1]) of one test run, from its confusion matrix and logged metrics.

    `reversed_pairs` is top-1 restricted to clips whose true class belongs to a time-reversed pair;
    `reversed_confusion` is the fraction of those clips predicted as the partner class (the frame-order error).
    """

    clips: int
    top1: float
    top5: float | None
    mean_class: float
    reversed_pairs: float | None
    reversed_clips: int
    reversed_confusion: float | None
    per_class: dict[str, float] = field(default_factory=dict)


def read_confusion(path: Path) -> tuple[list[str], list[list[int]]]:
    """The (class names, rows = true class / columns = predicted) matrix that the test step wrote."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the test step writes it; did `src.cli test` finish?")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    matrix = [[int(v) for v in row[1:]] for row in rows[1:]]
    if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
        raise ValueError(f"{path}: not a square confusion matrix over {len(names)} classes")
    return names, matrix


def event_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of every scalar tag in the TensorBoard event files directly inside `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, tuple[int, float]] = {}
    for event_file in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            last = acc.Scalars(tag)[-1]
            values[tag] = (last.step, last.value)
    return {tag: value for tag, (_, value) in values.items()}


def summarize(
    names: list[str], matrix: list[list[int]], pairs: list[list[int]], top5: float | None = None
) -> TestResults:
    """Top-1, mean-class and reversed-pair accuracy from a confusion matrix; `pairs` are class-index pairs."""
    support = [sum(row) for row in matrix]
    correct = [matrix[i][i] for i in range(len(names))]
    clips = sum(support)
    if clips == 0:
        raise ValueError("the confusion matrix is empty: no test clip was evaluated")
    per_class = {names[i]: correct[i] / support[i] for i in range(len(names)) if support[i]}
    paired = {i: j for a, b in pairs for i, j in ((a, b), (b, a))}
    rev_clips = sum(support[i] for i in paired)
    rev_correct = sum(correct[i] for i in paired)
    rev_swapped = sum(matrix[i][j] for i, j in paired.items())
    return TestResults(
        clips=clips,
        top1=sum(correct) / clips,
        top5=top5,
        mean_class=sum(per_class.values()) / len(per_class),
        reversed_pairs=rev_correct / rev_clips if rev_clips else None,
        reversed_clips=rev_clips,
        reversed_confusion=rev_swapped / rev_clips if rev_clips else None,
        per_class=per_class,
    )


def test_results(test_dir: Path, pairs: list[list[int]]) -> TestResults:
    """Results of the test run logged in `test_dir` (confusion_matrix.csv and the TensorBoard scalars)."""
    names, matrix = read_confusion(test_dir / "confusion_matrix.csv")
    top5 = event_scalars(test_dir).get("test/top5")
    return summarize(names, matrix, pairs, top5)


def next_version(save_dir: Path, name: str) -> int:
    """The first unused `version_<n>` under `<save_dir>/<name>/` (what TensorBoardLogger would pick)."""
    root = Path(save_dir) / name
    used = [int(p.name.split("_", 1)[1]) for p in root.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(used, default=-1) + 1


def best_checkpoint(run_dir: Path) -> Path:
    """The `best-*.ckpt` that ModelCheckpoint kept (highest val/top1), else `last.ckpt`."""
    folder = Path(run_dir) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(f"no checkpoint in {folder}: did the fit step finish?")


def default_threads() -> int:
    """Cores left beside the config's two loader workers (at least 1): on 2 cores one torch thread, because
    two OpenMP threads next to the workers thrash (measured: 34 clips/s with 1 thread, 4-6 with 2)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) - 2)


def cli_env(threads: int | None) -> dict[str, str]:
    """The environment of the subprocesses: unbuffered output, and OMP_NUM_THREADS when `threads` is set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_cli(
    args: list[str], *, threads: int | None = None, quiet: bool = False, log: Path | None = None
) -> float:
    """Run `python -m src.cli ARGS` from the repository root; returns its wall time, raises on failure."""
    command = [sys.executable, "-m", "src.cli", *args]
    print("$ python -m src.cli " + " ".join(args), flush=True)
    start = time.perf_counter()
    if quiet or log is not None:
        result = subprocess.run(command, cwd=REPO, env=cli_env(threads), capture_output=True, text=True)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"`python -m src.cli {args[0]}` failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
    else:
        code = subprocess.call(command, cwd=REPO, env=cli_env(threads))
        if code != 0:
            raise RuntimeError(f"`python -m src.cli {args[0]}` failed (exit {code}); its output is above")
    return time.perf_counter() - start


def prepare_data(data_root: Path, fast: bool, workers: int) -> tuple[Path, dict, float]:
    """Generate (or find cached) the benchmark; returns (index folder, manifest, seconds)."""
    from data_prep.synthetic import generate_dataset

    root = Path(data_root) / ("synthetic_fast" if fast else "synthetic")
    start = time.perf_counter()
    manifest = generate_dataset(root, workers=workers, progress=True, **(FAST_DATA if fast else {}))
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
    run_dir = Path(runs) / name / f"version_{version}"
    common = ["--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name]
    fit_args = [
        "fit",
        "--config",
        str(CONFIG.relative_to(REPO)),
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
    config = run_dir / "config.yaml"
    after_fit = ["--config", str(config), "--ckpt_path", str(checkpoint), *common]
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
