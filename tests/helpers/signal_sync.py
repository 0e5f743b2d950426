"""A callback that holds a training run at a chosen step until the test has sent it SIGTERM, so the step at
which the signal lands is exact (no reading of progress bars, no sleeps that order events).

Load it through the command line:
    --trainer.callbacks+='{"class_path": "tests.helpers.signal_sync.WaitForSigtermAt",
                           "init_args": {"step": 6, "marker_dir": "/tmp/x"}}'
After the optimiser step that makes `trainer.global_step == step`, every rank writes `marker_dir/rank<r>` and
waits (at most `timeout` s) until its process has received SIGTERM; the signal goes through the handler that was
installed (the hang guard's, or Lightning's), which then stops the run at the next step boundary as it would
on a cluster. The test waits for the markers of all ranks, then signals.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class WaitForSigtermAt(Callback):
    def __init__(self, step: int, marker_dir: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker_dir = Path(marker_dir)
        self.timeout = timeout

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        received = []
        previous = signal.getsignal(signal.SIGTERM)

        def record(signum, frame):
            received.append(signum)
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, record)
        try:
            self.marker_dir.mkdir(parents=True, exist_ok=True)
            (self.marker_dir / f"rank{trainer.global_rank}").write_text(str(trainer.global_step))
            deadline = time.monotonic() + self.timeout
            while not received:  # the signal interrupts the wait; its handler runs in this thread
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no SIGTERM within {self.timeout} s of reaching step {self.step}")
                time.sleep(0.01)
        finally:
            signal.signal(signal.SIGTERM, previous)


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
