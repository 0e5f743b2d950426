"""Running `python -m src.cli` on the tiny synthetic index: the arguments of a tiny CPU run and the subprocess call.

Shared by tests/conftest.py (the session's fitted run), tests/test_cli.py and tests/test_export.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--data.dataset",
    "synthetic",
    "--data.num_frames",
    "8",
    "--data.crop_size",
    "32",
    "--data.batch_size",
    "2",
    "--data.num_workers",
    "0",
    "--data.test_views",
    "[2, 1]",
    "--model.init_from",
    "null",
]
CPU = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "1",
    "--trainer.strategy",
    "auto",
]  # bar and summary on


def env(**extra: str) -> dict[str, str]:
    """One torch thread per process (more only thrash on a shared 2-core machine); the repository on the path
    for `tests.helpers` callbacks."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def run_cli(
    *args: str, timeout: int = 300, cwd: Path = ROOT, **extra_env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.cli", *args],
        cwd=cwd,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_together(
    *commands: list[str], timeout: int = 400, cwd: Path = ROOT
) -> list[subprocess.CompletedProcess]:
    """`run_cli` for several independent commands launched at once (their start-up, mostly imports on one core,
    overlaps); the results in the order of `commands`."""
    import tempfile

    with tempfile.TemporaryDirectory() as logs:
        procs = []
        for i, args in enumerate(commands):
            out, err = open(Path(logs) / f"{i}.out", "w+"), open(Path(logs) / f"{i}.err", "w+")
            proc = subprocess.Popen(
                [sys.executable, "-m", "src.cli", *args], cwd=cwd, env=env(), stdout=out, stderr=err
            )
            procs.append((proc, out, err))
        results = []
        try:
            for proc, out, err in procs:
                proc.wait(timeout=timeout)
                out.seek(0)
                err.seek(0)
                results.append(
                    subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
                )
        finally:
            for proc, out, err in procs:
                proc.kill()
                out.close()
                err.close()
    return results


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


def run_args(index: Path, runs: Path, name: str, version: str | None = None) -> list[str]:
    """The synthetic config at the tiny size on one CPU process, logging into `runs/name[/version]`."""
    args = [
        "--config",
        "configs/synthetic.yaml",
        *TINY,
        *CPU,
        "--data.root",
        str(index),
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.default_root_dir",
        str(runs / name),
        "--trainer.log_every_n_steps",
        "1",
        "--throughput.window",
        "2",
        "--model.warmup_epochs",
        "1",
    ]
    if version:
        args += ["--trainer.logger.init_args.version", version]
    return args


def make_tiny_index(out: Path) -> Path:
    """14 classes, 8 train / 4 val / 4 test H.264 clips of 8 frames at 32x32 (the synthetic generator)."""
    from data_prep.synthetic import generate_dataset

    generate_dataset(out, train=8, val=4, test=4, frames=8, size=32)
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (ns): to check that nobody changed it."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def image_run_args(root: Path, runs: Path, name: str, version: str | None = None) -> list[str]:
    """configs/imagenet.yaml at a tiny size on one CPU process (structvit_xs's image network, 32² crops, two loader
    workers, the progress bar on), logging into `runs/name[/version]`."""
    args = [
        "--config",
        "configs/imagenet.yaml",
        "--model.backbone.variant",
        "structvit_xs",
        "--model.backbone.stem",
        "conv",
        "--model.backbone.drop_path_rate",
        "0.0",
        "--model.warmup_epochs",
        "1",
        "--model.lr",
        "1e-3",
        "--model.lr_batch",
        "4",  # the global batch of 8 trains at 2e-3
        "--data.root",
        str(root),
        "--data.crop_size",
        "32",
        "--data.batch_size",
        "8",
        "--data.eval_batch_size",
        "8",
        "--data.num_workers",
        "2",
        "--data.pin_memory",
        "false",
        *CPU,
        "--trainer.precision",
        "32-true",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.default_root_dir",
        str(runs / name),
        "--trainer.log_every_n_steps",
        "1",
    ]
    if version:
        args += ["--trainer.logger.init_args.version", version]
    return args
