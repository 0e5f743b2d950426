"""Bounds what a stuck multi-process run can cost, and never ends one that is still working: a timeout on every
collective, an evaluation end that tells a slow rank from a hung one, a SIGTERM stop that all ranks take at the
same safe point (with a checkpoint), and an exit on SIGTERM/SIGINT even while the main thread is blocked in a
collective.

A process blocked in a collective (an all-reduce waiting for a rank that died, hangs, or runs a different
collective) never returns to the Python interpreter, so Lightning's SIGTERM handler, which runs between two
bytecodes of the main thread, never runs either: the job sits on its allocation until SIGKILL. The rule, in
one line: **progress, not wall time, decides** — a process or a rank that is still completing batches is
never ended; one that has completed none for the limit is.

- `collective_timeout`: the process-group timeout the CLI gives the DDP strategy (`src.cli`); a collective that
  waits longer fails with an error on the waiting ranks instead of waiting for torch's 30-minute default.
  Training keeps the ranks in step (equal shards, an all-reduce every step), so there a collective only waits
  for one step of a peer. Evaluation shards are not equal in work (a rank whose videos are long or hit decode
  timeouts takes longer), so the ranks do not enter the metric all-gather directly (the one collective inside
  an evaluation loop is DDP's buffer broadcast in every rank's first validation step): at the end of every
  evaluation epoch (validation, sanity check, test, predict) each rank posts "done" to the process group's
  key-value store and polls it (`EvalRendezvous`) while the unfinished ranks post a heartbeat every batch. A
  rank that is still stepping keeps the others waiting as long as it needs; only when no unfinished rank has
  completed a batch for `collective_timeout` seconds do the waiting ranks stop with an error naming it.
- `signal_grace`: a watcher thread learns of SIGTERM/SIGINT through `signal.set_wakeup_fd`, which the C-level
  signal handler writes at once, whatever the main thread is doing. From the signal on it watches the
  process's progress (batches completed in any loop, checkpoint saves, peers' progress seen while waiting for
  them); when none has been made for `signal_grace` seconds, the process is blocked: the watcher says so and
  ends it with exit code 128 + the signal number. A process that keeps completing batches is left to reach its
  safe point, however long its validation is.

The SIGTERM stop itself: Lightning 2.6's SIGTERM handler runs a `dist.broadcast` inside the signal handler, i.e.
at whatever point each rank happens to be (one rank inside a gradient all-reduce, another between steps, a rank
that received the signal twice broadcasting twice): the collectives no longer pair up and the run deadlocks
instead of saving `last.ckpt` (seen with SIGTERM sent to every process of a 2-rank run). This guard replaces
that handler (in every stage) with one that only records the signal. The ranks then stop together at the next
safe point:
- in training, at the start of the next batch: all ranks agree in one all-reduce;
- in an evaluation loop (validation in `fit`, or `validate` / `test` / `predict`), after the current batch: a
  rank that has the signal raises a flag in the store, every rank reads it after its next batch (at most a
  second later) and posts "stop" to the end-of-evaluation meeting, and all ranks leave the loop there (no
  collective can run per evaluation batch: the ranks' shards differ in length).
Every rank then raises `SIGTERMException` with exit code 143 (128 + SIGTERM); in `fit`, `SigtermCheckpoint`
saves `last.ckpt` on every rank at the same step: the last completed training step, with the interrupted
validation marked as not run, so `--ckpt_path last` runs it again and goes on.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

WATCHED = (signal.SIGTERM, signal.SIGINT)
SIGTERM_EXIT = 128 + signal.SIGTERM  # the shell's status of a process ended by SIGTERM: `fit && test` stops


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


def end_loader_workers() -> None:
    """At exit after a SIGTERM stop: kill the DataLoader workers still alive (daemonic children).

    A stop inside an evaluation loop leaves its loader's iterator referenced by the exception's traceback, so
    its workers are not shut down; multiprocessing's exit handler then sends them SIGTERM, which they ignore
    (`src.data.datamodule`: they must outlive a SIGTERM to the job until the checkpoint is saved), and joins
    them for ever. The checkpoint is saved by then: nothing they hold is needed.
    """
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


class PeerHung(RuntimeError):
    """Some ranks completed no evaluation batch for `collective_timeout` s while the others waited for them."""


class EvalRendezvous:
    """The end of an evaluation epoch, met through the process group's key-value store instead of a collective.

    Each rank calls `start_round` at the start of every evaluation epoch, `beat` after every batch (a
    heartbeat, throttled to one store write per `beat_interval`), and `meet` at the end: it posts "done" (and
    whether it stops for SIGTERM), then polls until every rank has posted. While it waits, any heartbeat or
    "done" of another rank is progress; `timeout` s without any raises `PeerHung` naming the ranks that never
    posted. `meet` returns True when any rank posted "stop": every rank reads the same posts, so all decide
    alike. A few store round trips per second per rank; nothing per batch beyond the throttled heartbeat.

    Args:
        store: the default process group's store (a TCPStore under Lightning and torchrun).
        rank, world_size: this process's global rank and the number of ranks.
        timeout: seconds without progress of any unfinished rank before they count as hung.
        on_progress: called whenever another rank's progress is seen while waiting (the watcher's heartbeat).
    """

    def __init__(
        self,
        store: Any,
        rank: int,
        world_size: int,
        timeout: float,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout = float(timeout)
        self.beat_interval = min(1.0, self.timeout / 10)
        self.on_progress = on_progress
        # one namespace per rendezvous object: every rank builds its own at the same point of the program,
        # so the n-th object of each rank shares keys with the n-th object of the others
        generation = (int(store.add("hang_guard/objects", 1)) - 1) // world_size
        self.prefix = f"hang_guard/{generation}"
        self.round = 0
        self._last_beat = 0.0
        self._stop_posted = False

    def _key(self, name: str, round_: int | None = None) -> str:
        return f"{self.prefix}/{self.round if round_ is None else round_}/{name}"

    def start_round(self) -> None:
        """A new evaluation epoch (every rank starts the same ones, in the same order)."""
        self.round += 1
        self._last_beat = 0.0
        old = self.round - 2  # every rank has left round - 2: it posted in round - 1, after reading round - 2
        if old >= 1:
            for name in (f"done/{self.rank}",) + (("done", "stop", "beats") if self.rank == 0 else ()):
                self.store.delete_key(self._key(name, old))

    def request_stop(self) -> None:
        """Ask every rank to end this evaluation at its next batch (this rank received SIGTERM)."""
        if not self._stop_posted:
            self._stop_posted = True
            self.store.add(f"{self.prefix}/sigterm", 1)

    def beat(self) -> bool:
        """After a batch: post a heartbeat (throttled); True when some rank has asked to stop."""
        now = time.monotonic()
        if now - self._last_beat < self.beat_interval:
            return False
        self._last_beat = now
        self.store.add(self._key("beats"), 1)
        return self.stop_requested()

    def stop_requested(self) -> bool:
        """Whether some rank has asked to stop (one store round trip)."""
        return int(self.store.add(f"{self.prefix}/sigterm", 0)) > 0

    def meet(
        self, stop: bool, stage: str = "evaluation", pending_stop: Callable[[], bool] = lambda: False
    ) -> bool:
        """Post "done" (with `stop`), wait while the unfinished ranks make progress; True if any rank stops.

        `pending_stop`: polled while waiting; when it turns True (SIGTERM arrived here meanwhile), the other
        ranks are asked to stop at their next batch, so a preemption does not wait for their whole shard."""
        if stop:
            self.store.add(self._key("stop"), 1)
        self.store.set(self._key(f"done/{self.rank}"), "1")
        done = int(self.store.add(self._key("done"), 1))
        seen: tuple[int, int] | None = None
        changed = time.monotonic()
        pause = 0.002
        while done < self.world_size:
            if pending_stop():
                self.request_stop()
            beats = int(self.store.add(self._key("beats"), 0))
            now = time.monotonic()
            if (done, beats) != seen:
                if seen is not None:
                    self.on_progress()
                seen, changed = (done, beats), now
            elif now - changed > self.timeout:
                missing = [
                    r for r in range(self.world_size) if not self.store.check([self._key(f"done/{r}")])
                ]
                raise PeerHung(
                    f"[hang guard] rank {self.rank} of {self.world_size}: rank(s) {missing} completed no "
                    f"{stage} batch for hang_guard.collective_timeout={self.timeout:g} s while the other ranks "
                    "waited for them at the end of the epoch; they died or hang (their own log says which). "
                    "The run stops here; resume from the last checkpoint with --ckpt_path last."
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
            done = int(self.store.add(self._key("done"), 0))
        return int(self.store.add(self._key("stop"), 0)) > 0


def default_store() -> Any | None:
    """The default process group's key-value store, or None without one (single process, a non-c10d group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, ValueError, RuntimeError):
        return None


class HangGuard(Callback):
    """Ends a run that a hung collective would otherwise keep forever, and stops a preempted run at a safe point.

    Args:
        collective_timeout: seconds a DDP collective (all-reduce, broadcast, barrier) may wait for the other
            ranks before it fails with an error; also the timeout of the process-group rendezvous, and how long
            the ranks that finished an evaluation epoch wait for one that completes no batch at all (a rank
            that is still stepping is waited for). Large enough for the slowest single thing one rank does
            while the others wait: one evaluation batch whose videos all hit the decode timeout, rank 0
            writing a checkpoint to a slow file system.
        signal_grace: seconds without progress (no batch completed, no checkpoint saved) after SIGTERM or
            SIGINT before the process exits on its own: it is blocked. A normal stop completes the current
            batch and saves `last.ckpt`. Keep it below the cluster's kill delay (SLURM's KillWait, often 30 s
            after the signal the job was sent with `--signal`) and above the longest single batch.
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
        self._previous_handler: Any = None
        self._progress = 0  # batches completed (any loop) + saves + peers' progress seen: read by the watcher
        self._rendezvous: EvalRendezvous | None = None
        self._exiting = False  # stopped at a safe point after SIGTERM, on the way out

    @property
    def timeout(self) -> timedelta:
        """`collective_timeout` as the `timedelta` torch.distributed takes."""
        return timedelta(seconds=self.collective_timeout)

    def note_progress(self) -> None:
        """The process made progress: the watcher's wait after a signal starts again."""
        self._progress += 1

    # ------------------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start the watcher (once, from the main thread, where `set_wakeup_fd` is allowed)."""
        self._sigterm = False
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

    # Lightning registers its SIGTERM handler after the `setup` and `on_fit_start` hooks: take it over at the
    # first hook of every stage that comes after (its broadcast inside the handler is what deadlocked).
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_sigterm()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take over SIGTERM from Lightning (registered by now) with a handler that runs no collective."""
        self._take_sigterm()

    def _take_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) != self._record_sigterm:
            self._previous_handler = signal.signal(signal.SIGTERM, self._record_sigterm)

    def _record_sigterm(self, signum: int, frame: object) -> None:
        if not self._sigterm:
            self._signal_started_ranks(signum)  # the ranks this process started get it too
        self._sigterm = True

    def _restore_sigterm(self) -> None:
        """Give SIGTERM back to Lightning's handler before Lightning's teardown restores the original one."""
        if threading.current_thread() is threading.main_thread() and self._previous_handler is not None:
            if signal.getsignal(signal.SIGTERM) == self._record_sigterm:
                signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None

    def _received(self, trainer: pl.Trainer) -> bool:
        """SIGTERM through this guard's handler, or through Lightning's before this guard took over."""
        return self._sigterm or bool(getattr(trainer, "received_sigterm", False))

    def _stop(self, trainer: pl.Trainer, where: str) -> None:
        rank_zero_info(f"SIGTERM: stopping all {trainer.world_size} processes {where}")
        raise SIGTERMException(SIGTERM_EXIT)

    # -------------------------------------------------------------------------------------- training
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        """Every rank, every step, at the same point: stop together when any rank has received SIGTERM."""
        stop = self._received(trainer)
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._stop(trainer, f"at global step {trainer.global_step}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.note_progress()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigterm()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.note_progress()  # a save is progress: a slow file system does not make the process look blocked

    # ------------------------------------------------------------------------------------ evaluation
    def _eval_rendezvous(self, trainer: pl.Trainer) -> EvalRendezvous | None:
        if trainer.world_size < 2:
            return None
        if self._rendezvous is None:
            store = default_store()
            if store is None:
                return None
            self._rendezvous = EvalRendezvous(
                store, trainer.global_rank, trainer.world_size, self.collective_timeout, self.note_progress
            )
        return self._rendezvous

    def _eval_start(self, trainer: pl.Trainer) -> None:
        self._take_sigterm()
        rendezvous = self._eval_rendezvous(trainer)
        if rendezvous is not None:
            rendezvous.start_round()

    def _eval_batch_end(self, trainer: pl.Trainer, stage: str, batch_idx: int) -> None:
        """After every evaluation batch: a heartbeat; on SIGTERM (here or on any rank), all ranks end the loop."""
        self.note_progress()
        received = self._received(trainer)
        rendezvous = self._eval_rendezvous(trainer)
        if rendezvous is None:
            if received:
                self._stop(trainer, f"in {stage} after batch {batch_idx} (global step {trainer.global_step})")
            return
        if received:
            rendezvous.request_stop()
        if rendezvous.beat() or received:
            rendezvous.meet(stop=True, stage=stage)  # every rank decides "stop" there: one stop vote suffices
            self._stop(trainer, f"in {stage} (global step {trainer.global_step})")

    def _eval_epoch_end(self, trainer: pl.Trainer, stage: str) -> None:
        """Before the metric all-gather: wait for every rank to finish its shard, as long as it makes progress."""
        rendezvous = self._eval_rendezvous(trainer)
        if rendezvous is None:
            if self._received(trainer):
                self._stop(trainer, f"at the end of {stage} (global step {trainer.global_step})")
            return
        stop = self._received(trainer) or rendezvous.stop_requested()
        if rendezvous.meet(stop, stage=stage, pending_stop=lambda: self._received(trainer)):
            self._stop(trainer, f"at the end of {stage} (global step {trainer.global_step})")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_sigterm()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, "sanity check" if trainer.sanity_checking else "validation", batch_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_end(trainer, "sanity check" if trainer.sanity_checking else "validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # `validate`; in `fit`, training goes on
            self._restore_sigterm()

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, "test", batch_idx)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_end(trainer, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigterm()

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(trainer, "predict", batch_idx)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_end(trainer, "predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_sigterm()

    # ---------------------------------------------------------------------------------------- the end
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
        """Say what a collective timeout means, beside torch's own message; on any error but the SIGTERM stop, end
        the ranks this process started."""
        if isinstance(exception, SIGTERMException):
            # the stop, and SigtermCheckpoint's save (an earlier callback), are done: what is left is the exit
            self._exiting = True
            self.note_progress()
            # atexit runs the newest first: before multiprocessing's handler, registered at its import
            atexit.register(end_loader_workers)
        elif isinstance(exception, PeerHung):
            self._signal_started_ranks(signal.SIGKILL)  # the hung ones would keep the allocation
        elif (
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
        else:
            # any other error ends the run here (a full disk, a bad value, a bug): the ranks this process started
            # would only wait at the next collective and die later with a second, misleading traceback
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
        signalled = time.monotonic()
        seen, since = self._progress, signalled
        poll = min(1.0, self.signal_grace / 10)
        while not self._stopped.wait(poll):
            now = time.monotonic()
            if self._progress != seen:  # a batch completed: the run is on its way to its safe point
                seen, since = self._progress, now
            elif now - since >= self.signal_grace:
                break
        else:
            return  # the run ended normally
        name = signal.Signals(signum).name
        if self._exiting:
            sys.stderr.write(
                f"\n[hang guard] {self._describe}: stopped at a safe point after {name}, but the process has not "
                f"exited {self.signal_grace} s later; ending it now (hang_guard.signal_grace sets this delay).\n"
            )
            sys.stderr.flush()
            os._exit(128 + signum)
        sys.stderr.write(
            f"\n[hang guard] {self._describe}: {name} received {time.monotonic() - signalled:.0f} s ago and no "
            f"progress for {self.signal_grace} s (no batch completed, nothing saved). The process is blocked, most "
            "likely in a collective (all-reduce, broadcast, barrier) waiting for a rank that died, hangs or runs "
            "something else. Exiting now without saving: the last checkpoint on disk (last.ckpt of this run) is the "
            "state to resume from with --ckpt_path last. (hang_guard.signal_grace sets this delay.)\n"
        )
        sys.stderr.flush()
        self._signal_started_ranks(signal.SIGKILL)
        os._exit(128 + signum)
