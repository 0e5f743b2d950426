"""Bounds what a stuck multi-process run can cost: a timeout on every collective, a SIGTERM stop that all ranks
take at the same step, and an exit on SIGTERM/SIGINT even while the main thread is blocked in a collective.

A process blocked in a collective (an all-reduce waiting for a rank that died, hangs, or runs a different
collective) never returns to the Python interpreter, so Lightning's SIGTERM handler, which runs between two
bytecodes of the main thread, never runs either: the job sits on its allocation until SIGKILL. Two guards:

- `collective_timeout`: the process-group timeout the CLI gives the DDP strategy (`src.cli`); a collective that
  waits longer fails with an error on the waiting ranks instead of waiting for torch's 30-minute default.
- `signal_grace`: a watcher thread learns of SIGTERM/SIGINT through `signal.set_wakeup_fd`, which the C-level
  signal handler writes at once, whatever the main thread is doing. If the run has not ended `signal_grace`
  seconds later (Lightning saves `last.ckpt` and stops between two steps, which takes seconds), the process is
  blocked: the watcher says so and ends the process with exit code 128 + the signal number.

The SIGTERM stop itself: Lightning 2.6's SIGTERM handler runs a `dist.broadcast` inside the signal handler, i.e.
at whatever point each rank happens to be (one rank inside a gradient all-reduce, another between steps, a rank
that received the signal twice broadcasting twice): the collectives no longer pair up and the run deadlocks
instead of saving `last.ckpt` (seen with SIGTERM sent to every process of a 2-rank run). During training this
guard replaces that handler with one that only records the signal; at the start of every training batch all
ranks agree on it in one all-reduce and stop together (SIGTERMException), so `SigtermCheckpoint` saves a
consistent `last.ckpt` on every rank at the same step.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
from datetime import timedelta

import lightning.pytorch as pl
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

WATCHED = (signal.SIGTERM, signal.SIGINT)


def forget_wakeup_fd() -> None:
    """In a forked child (a DataLoader worker): stop writing signals into the parent's watcher socket.

    Without this, a worker that torch terminates with SIGTERM at shutdown would look like a SIGTERM to the
    training process.
    """
    if threading.current_thread() is threading.main_thread():
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass


class HangGuard(Callback):
    """Ends a run that a hung collective would otherwise keep forever.

    Args:
        collective_timeout: seconds a DDP collective (all-reduce, broadcast, barrier) may wait for the other
            ranks before it fails with an error; also the timeout of the process-group rendezvous. Large enough
            for the slowest thing one rank does while the others wait (rank 0 writing a checkpoint to a slow
            file system, one validation batch more on some ranks).
        signal_grace: seconds after SIGTERM or SIGINT before the process exits on its own when the run has not
            stopped by then (it is blocked). A normal stop takes seconds: Lightning saves `last.ckpt` between
            two steps. Keep it below the cluster's kill delay (SLURM's KillWait, often 30 s after the signal
            the job was sent with `--signal`).
    """

    def __init__(self, collective_timeout: PositiveInt = 600, signal_grace: PositiveInt = 60) -> None:
        self.collective_timeout = int(collective_timeout)
        self.signal_grace = int(signal_grace)
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1
        self._describe = "this process"
        self._launcher = None  # Lightning's launcher of the other local ranks, when this process started them
        self._sigterm = False
        self._previous_handler = None

    @property
    def timeout(self) -> timedelta:
        """`collective_timeout` as the `timedelta` torch.distributed takes."""
        return timedelta(seconds=self.collective_timeout)

    # ------------------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start the watcher (once, from the main thread, where `set_wakeup_fd` is allowed)."""
        if self._thread is not None or threading.current_thread() is not threading.main_thread():
            return
        self._describe = f"rank {trainer.global_rank} of {trainer.world_size}"
        self._launcher = getattr(trainer.strategy, "launcher", None)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter
            reader.close()
            writer.close()
            return
        self._sockets = (reader, writer)
        self._stopped.clear()
        self._thread = threading.Thread(target=self._watch, args=(reader,), name="hang-guard", daemon=True)
        self._thread.start()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take over SIGTERM from Lightning (registered by now) with a handler that runs no collective."""
        if threading.current_thread() is threading.main_thread() and self._previous_handler is None:
            self._sigterm = False
            self._previous_handler = signal.signal(signal.SIGTERM, self._record_sigterm)

    def _record_sigterm(self, signum: int, frame: object) -> None:
        if not self._sigterm:
            self._signal_started_ranks(signum)  # the ranks this process started get it too
        self._sigterm = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        """Every rank, every step, at the same point: stop together when any rank has received SIGTERM."""
        stop = self._sigterm
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            rank_zero_info(
                f"SIGTERM: stopping all {trainer.world_size} processes at global step {trainer.global_step}"
            )
            raise SIGTERMException()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Stop the watcher and give the wakeup fd and the SIGTERM handler back to whoever had them."""
        self._restore_sigterm()
        if self._thread is None:
            return
        self._stopped.set()
        try:
            signal.set_wakeup_fd(self._previous_fd)
        except ValueError:
            pass
        reader, writer = self._sockets
        writer.close()  # the watcher's recv returns b"" and it ends
        self._thread.join(timeout=5)
        reader.close()
        self._thread, self._sockets = None, None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Say what a collective timeout means, beside torch's own message."""
        if (
            trainer.world_size > 1
            and isinstance(exception, RuntimeError)
            and re.search(r"time[sd]? ?out", str(exception), re.I)
        ):
            sys.stderr.write(
                f"\n[hang guard] rank {trainer.global_rank} of {trainer.world_size}: a collective waited longer than "
                f"hang_guard.collective_timeout={self.collective_timeout} s for the other ranks; one of them died, "
                "hangs, or ran a different collective (its own log says which). The run stops here; resume from "
                "the last checkpoint with --ckpt_path last.\n"
            )
            sys.stderr.flush()
            self._signal_started_ranks(signal.SIGKILL)

    def _signal_started_ranks(self, signum: int) -> None:
        """Send `signum` to the ranks this process launched (`--trainer.devices N` without torchrun). SIGKILL
        ends them when this process gives up: a rank left waiting for a collective that will never come would
        keep the allocation (torchrun does this for its own)."""
        if self._launcher is not None:
            try:
                self._launcher.kill(signum)
            except (OSError, AttributeError, NotImplementedError):
                pass

    # --------------------------------------------------------------------------------------- watcher
    def _watch(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(256)
            except OSError:
                return
            if not data:
                return
            received = [signum for signum in data if signum in WATCHED]
            if received:
                break
        signum = received[0]
        if self._stopped.wait(self.signal_grace):
            return  # the run ended normally within the grace period
        name = signal.Signals(signum).name
        sys.stderr.write(
            f"\n[hang guard] {self._describe}: {name} received {self.signal_grace} s ago and the run has not stopped. "
            "The process is blocked, most likely in a collective (all-reduce, broadcast, barrier) waiting for a "
            "rank that died, hangs or runs something else. Exiting now without saving: the last checkpoint on "
            "disk (last.ckpt of this run) is the state to resume from with --ckpt_path last. "
            "(hang_guard.signal_grace sets this delay.)\n"
        )
        sys.stderr.flush()
        self._signal_started_ranks(signal.SIGKILL)
        os._exit(128 + signum)
