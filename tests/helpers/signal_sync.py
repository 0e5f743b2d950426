"""Callbacks that hold a run at a chosen point until the test has sent it SIGTERM, so the point at which the
signal lands is exact (no reading of progress bars, no sleeps that order events), and one that makes
validation slow.

Load them through the command line:
    --trainer.callbacks+='{"class_path": "tests.helpers.signal_sync.WaitForSigtermAt",
                           "init_args": {"step": 6, "marker_dir": "/tmp/x"}}'
- `WaitForSigtermAt`: after the optimiser step that makes `trainer.global_step == step`, every rank writes
  `marker_dir/rank<r>` and waits (at most `timeout` s) until its process has received SIGTERM;
- `SlowValidation`: every validation batch from batch `after` on, outside the sanity check, takes `seconds`
  longer (on the ranks listed in `ranks`, default all); with `marker_dir`, after batch `hold_at` of the first
  validation each rank writes its marker and waits for SIGTERM the same way.
The signal goes through the handler that was installed (the hang guard's, or Lightning's), which then stops the
run at its next safe point as it would on a cluster. The test waits for the markers of all ranks, then signals.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


def hold_until_sigterm(trainer: pl.Trainer, marker_dir: Path, timeout: float, where: str) -> None:
    """Write `marker_dir/rank<r>`, then wait until this process has received SIGTERM (at most `timeout` s)."""
    received = []
    previous = signal.getsignal(signal.SIGTERM)

    def record(signum, frame):
        received.append(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, record)
    try:
        marker_dir.mkdir(parents=True, exist_ok=True)
        (marker_dir / f"rank{trainer.global_rank}").write_text(str(trainer.global_step))
        deadline = time.monotonic() + timeout
        while not received:  # the signal interrupts the wait; its handler runs in this thread
            if time.monotonic() > deadline:
                raise RuntimeError(f"no SIGTERM within {timeout} s of reaching {where}")
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)


class WaitForSigtermAt(Callback):
    def __init__(self, step: int, marker_dir: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker_dir = Path(marker_dir)
        self.timeout = timeout

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            hold_until_sigterm(trainer, self.marker_dir, self.timeout, f"step {self.step}")


class SlowValidation(Callback):
    def __init__(
        self,
        seconds: float,
        ranks: list[int] | None = None,
        after: int = 0,
        marker_dir: str | None = None,
        hold_at: int = 0,
        timeout: float = 120.0,
    ) -> None:
        self.seconds = seconds
        self.ranks = ranks
        self.after = after
        self.marker_dir = Path(marker_dir) if marker_dir else None
        self.hold_at = hold_at
        self.timeout = timeout
        self._held = False

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int, *_) -> None:
        slowed = self.ranks is None or trainer.global_rank in self.ranks
        if slowed and not trainer.sanity_checking and batch_idx >= self.after:
            time.sleep(self.seconds)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int, *_
    ) -> None:
        if self.marker_dir and not self._held and not trainer.sanity_checking and batch_idx == self.hold_at:
            self._held = True
            hold_until_sigterm(trainer, self.marker_dir, self.timeout, f"validation batch {self.hold_at}")


def wait_for_files(paths: list[Path], proc, timeout: float = 240.0) -> bool:
    """Wait until every file of `paths` exists (True), or `proc` has exited or `timeout` s passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if all(Path(p).is_file() for p in paths):
            return True
        time.sleep(0.05)
    return False


def wait_for_markers(marker_dir: Path, ranks: int, proc, timeout: float = 240.0) -> bool:
    """Wait until the markers of `ranks` ranks exist in `marker_dir` (True), or `proc` has exited or `timeout`
    s passed (False)."""
    return wait_for_files([Path(marker_dir) / f"rank{r}" for r in range(ranks)], proc, timeout)
