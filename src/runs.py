"""Run folders and what is inside them, found in one place for the CLI, the demo and the studies.

A run is `<save_dir>/<name>/version_<n>/` (the TensorBoardLogger layout `src.cli` writes): config.yaml,
TensorBoard events, `checkpoints/best-*.ckpt` and `last.ckpt`, and a `test/` folder (confusion_matrix.csv
and the test scalars) after `src.cli test`. This module picks version numbers and checkpoints, reads test
results back, and runs `python -m src.cli` in a subprocess the way the demo and the studies do.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from src.models.checkpoints import CheckpointFileError, load_checkpoint_file
from src.paths import REPO_ROOT

# a child of Lightning's logger, so the warnings print where the CLI's own messages do
log = logging.getLogger("lightning.pytorch").getChild("cli")


def versions(save_dir: Path, name: str) -> list[int]:
    """The numbers n of the `version_<n>` folders under `<save_dir>/<name>/`, ascending."""
    root = Path(save_dir) / name
    numbers = [p.name.split("_", 1)[1] for p in root.glob("version_*")]
    return sorted(int(n) for n in numbers if n.isdigit())


def next_version(save_dir: Path, name: str) -> int:
    """The first unused `version_<n>` under `<save_dir>/<name>/` (what TensorBoardLogger would pick)."""
    return max(versions(save_dir, name), default=-1) + 1


def best_checkpoint(run_dir: Path) -> Path:
    """The `best-*.ckpt` that ModelCheckpoint kept (highest val/top1), else `last.ckpt`."""
    folder = Path(run_dir) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(f"no checkpoint in {folder}: did the fit step finish?")


def last_checkpoint(save_dir: Path, name: str) -> Path:
    """The newest intact `last.ckpt` under `<save_dir>/<name>/version_*/checkpoints/` (`--ckpt_path last`).

    A newest file that is truncated or corrupt (a write cut short by a full disk) is reported and skipped for
    the newest intact checkpoint of the run's versions (last or best). Raises FileNotFoundError when the run
    has no last.ckpt, CheckpointFileError when none of its checkpoints is intact."""
    root = Path(save_dir) / name
    candidates = sorted(root.glob("version_*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt under {root}/version_*/checkpoints/; "
            "give a checkpoint path or check trainer.logger.init_args.save_dir / name"
        )
    newest = candidates[-1]
    fallbacks = sorted(
        root.glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for candidate in fallbacks:
        try:
            load_checkpoint_file(candidate, mmap=True)
        except CheckpointFileError as err:
            log.warning("--ckpt_path last: skipping %s", err)
            continue
        if candidate != newest:
            log.warning(
                "--ckpt_path last: %s is corrupt; resuming from the newest intact checkpoint %s instead",
                newest,
                candidate,
            )
        return candidate
    raise CheckpointFileError(f"--ckpt_path last: no intact checkpoint under {root}/version_*/checkpoints/")


@dataclass
class TestResults:
    """Accuracies (fractions in [0, 1]) of one test run, from its confusion matrix and logged metrics.

    `reversed_pairs` is top-1 restricted to clips whose true class belongs to a time-reversed pair;
    `reversed_confusion` is the fraction of those clips predicted as the partner class (the frame-order error).
    """

    __test__ = False  # not a pytest test class, despite the name

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


test_results.__test__ = False  # a reader, not a pytest test


def cli_env(threads: int | None) -> dict[str, str]:
    """The environment of the subprocesses: unbuffered output, and OMP_NUM_THREADS when `threads` is set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_cli(
    args: list[str], *, threads: int | None = None, quiet: bool = False, log: Path | None = None
) -> float:
    """Run `python -m src.cli ARGS` from the repository root; returns its wall time, raises on failure.

    The command is printed first, so it can be re-run by hand. With `quiet` or `log` its output is captured
    (and written to `log`), otherwise it goes to this process's terminal."""
    command = [sys.executable, "-m", "src.cli", *args]
    print("$ python -m src.cli " + " ".join(args), flush=True)
    start = time.perf_counter()
    if quiet or log is not None:
        result = subprocess.run(command, cwd=REPO_ROOT, env=cli_env(threads), capture_output=True, text=True)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"`python -m src.cli {args[0]}` failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
            )
    else:
        code = subprocess.call(command, cwd=REPO_ROOT, env=cli_env(threads))
        if code != 0:
            raise RuntimeError(f"`python -m src.cli {args[0]}` failed (exit {code}); its output is above")
    return time.perf_counter() - start
