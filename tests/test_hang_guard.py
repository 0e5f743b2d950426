"""HangGuard: the DDP process-group timeout it sets and its bounds (through the CLI), the end-of-evaluation
meeting that tells a slow rank from a hung one (on a real TCPStore, one thread per rank), and a SIGTERM during
a slow validation that ends with a checkpoint `--ckpt_path last` resumes from (a real CLI run).

Its behaviour in real multi-process runs (a stalled rank, a slow rank, SIGTERM while blocked, SIGTERM to every
process) is tested end to end in tests/test_ddp.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed import TCPStore

from src.cli import cli_main, timed_ddp_strategy
from src.hang_guard import EvalRendezvous, PeerHung
from tests.helpers.cli_runs import ROOT, env, ok, run_args, run_cli
from tests.helpers.signal_sync import wait_for_markers

BASE = ["--config", "configs/synthetic.yaml", "--trainer.accelerator", "cpu", "--model.init_from", "null"]


@pytest.fixture(scope="module")
def index(tiny_index) -> Path:
    """The DataModule reads the class list at instantiation: the session's tiny synthetic index."""
    return tiny_index


@pytest.fixture
def build(index, tmp_path):
    def run(*args: str):
        """The CLI up to an instantiated Trainer (no process group is started)."""
        return cli_main(
            [*BASE, "--data.root", str(index), "--trainer.logger.init_args.save_dir", str(tmp_path), *args],
            run=False,
        )

    return run


@pytest.mark.parametrize("strategy", ["ddp", "auto", "ddp_find_unused_parameters_true"])
def test_ddp_strategies_get_the_collective_timeout(build, strategy):
    cli = build(
        "--trainer.devices", "2", "--trainer.strategy", strategy, "--hang_guard.collective_timeout", "42"
    )
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.strategy._timeout == timedelta(seconds=42)  # what init_process_group receives
    if strategy.endswith("_true"):
        assert cli.trainer.strategy._ddp_kwargs["find_unused_parameters"] is True  # registered options kept


def test_the_default_timeout_is_ten_minutes_not_torchs_thirty(build):
    cli = build("--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert cli.trainer.strategy._timeout == timedelta(minutes=10)
    assert any(type(c).__name__ == "HangGuard" for c in cli.trainer.callbacks)


def test_a_single_device_run_keeps_its_strategy(build):
    cli = build("--trainer.devices", "1", "--trainer.strategy", "auto")
    assert not isinstance(cli.trainer.strategy, DDPStrategy)


def test_only_ddp_family_names_are_rebuilt():
    assert isinstance(timed_ddp_strategy("ddp_spawn", timedelta(seconds=5)), DDPStrategy)
    assert timed_ddp_strategy("single_device", timedelta(seconds=5)) is None
    assert timed_ddp_strategy("no_such_strategy", timedelta(seconds=5)) is None


@pytest.mark.parametrize("option", ["--hang_guard.collective_timeout", "--hang_guard.signal_grace"])
def test_non_positive_values_fail_at_parse_time(capsys, build, option):
    with pytest.raises(SystemExit):
        build(option, "0")
    assert option.removeprefix("--") in capsys.readouterr().err


# ------------------------------------------------------------------------ the end-of-evaluation meeting
def two_ranks(timeout: float, **extra) -> list[EvalRendezvous]:
    """Rank 0 and rank 1 of a 2-rank meeting on a real TCPStore (rank 0 hosts it, as in a process group)."""
    server = TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    client = TCPStore("127.0.0.1", server.port, 2, is_master=False)
    return [EvalRendezvous(store, rank, 2, timeout, **extra) for rank, store in enumerate((server, client))]


def in_thread(fn) -> dict:
    """Run `fn` in a thread; the dict gets its "result" or "error" and "seconds" once `join` is called."""
    out: dict = {}

    def run():
        start = time.monotonic()
        try:
            out["result"] = fn()
        except Exception as err:  # the test reads it
            out["error"] = err
        out["seconds"] = time.monotonic() - start

    out["thread"] = threading.Thread(target=run)
    out["thread"].start()
    return out


def test_a_rank_that_keeps_stepping_is_waited_for_past_the_timeout():
    """Rank 1 takes 6 x 0.3 s, three times the 0.6 s timeout, but completes a batch every 0.3 s: rank 0 waits
    for it (and counts what it sees as progress) instead of declaring it hung."""
    progress = []
    fast, slow = two_ranks(0.6, on_progress=lambda: progress.append(1))
    fast.start_round(), slow.start_round()
    waiting = in_thread(lambda: fast.meet(stop=False))
    for _ in range(6):
        time.sleep(0.3)
        assert not slow.beat()
    assert slow.meet(stop=False) is False
    waiting["thread"].join(30)
    assert "error" not in waiting, waiting.get("error")
    assert waiting["result"] is False and waiting["seconds"] > 1.5
    assert len(progress) >= 5  # the waiting rank's watcher saw it make progress


def test_a_rank_that_stops_stepping_is_named_after_the_timeout():
    fast, hung = two_ranks(0.5)
    fast.start_round(), hung.start_round()
    waiting = in_thread(lambda: fast.meet(stop=False, stage="validation"))
    time.sleep(0.2)
    hung.beat()  # one batch, then nothing
    waiting["thread"].join(30)
    assert isinstance(waiting.get("error"), PeerHung)
    assert 0.5 <= waiting["seconds"] < 5
    assert "rank(s) [1] completed no validation batch for hang_guard.collective_timeout=0.5 s" in str(
        waiting["error"]
    )


def test_a_stop_on_one_rank_reaches_a_rank_still_stepping_and_both_decide_to_stop():
    """Rank 0 finished its shard and waits; SIGTERM reaches it there: rank 1 learns it at its next batch and
    both leave the evaluation with the same decision; the next round starts clean of the old posts."""
    signalled = threading.Event()
    done, stepping = two_ranks(30.0)
    done.start_round(), stepping.start_round()
    waiting = in_thread(lambda: done.meet(stop=False, pending_stop=signalled.is_set))
    assert not stepping.beat()
    signalled.set()
    deadline = time.monotonic() + 10
    while not stepping.stop_requested():
        assert time.monotonic() < deadline, "the stop never reached the other rank"
        time.sleep(0.01)
    assert stepping.meet(stop=True) is True
    waiting["thread"].join(30)
    assert waiting.get("result") is True, waiting

    for rank in (done, stepping):
        rank.start_round()
    both = [in_thread(lambda r=r: r.meet(stop=False)) for r in (done, stepping)]
    for waiting in both:
        waiting["thread"].join(30)
    assert [w.get("result") for w in both] == [False, False]  # a round's posts do not leak into the next


# ------------------------------------------------------------------------ SIGTERM during a slow validation
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_during_a_slow_validation_saves_last_and_resuming_validates_then_trains_on(index, tmp_path):
    """Validation batches of 3 s, SIGTERM after the first of 4, `signal_grace` 5 s: the rest of the validation
    (9 s) outlasts the grace. The guard's watcher used to end the process 5 s after the signal ("blocked ...
    Exiting now without saving", exit 143, no checkpoint); now the run stops after that batch, saves last.ckpt
    at step 4 (the training of epoch 0), and `--ckpt_path last` validates epoch 0 again, then trains epoch 1."""
    markers = tmp_path / "markers"
    slow = {
        "class_path": "tests.helpers.signal_sync.SlowValidation",
        "init_args": {"seconds": 3.0, "marker_dir": str(markers), "hold_at": 0},
    }
    common = [
        *run_args(index, tmp_path, "preempt"),
        "--trainer.max_epochs",
        "2",
        "--data.eval_batch_size",
        "1",
    ]
    log = tmp_path / "interrupted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.cli", "fit", *common,
             "--hang_guard.signal_grace", "5", f"--trainer.callbacks+={json.dumps(slow)}"],
            cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            reached = wait_for_markers(markers, 1, proc)
            if reached:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    output = log.read_text()
    assert reached, f"the run never reached its validation\n{output[-3000:]}"
    assert "[hang guard]" not in output, output[-3000:]
    assert "SIGTERM: stopping all 1 processes in validation after batch 0 (global step 4)" in output, output[
        -3000:
    ]
    assert proc.returncode == 143  # 128 + SIGTERM: a preempted run is not a finished one
    last = tmp_path / "preempt" / "version_0" / "checkpoints" / "last.ckpt"
    assert "SIGTERM: saved" in output and "its interrupted validation runs again on resume" in output
    state = torch.load(last, weights_only=False, map_location="cpu")
    assert (state["global_step"], state["epoch"]) == (4, 0)
    assert not list(last.parent.glob("best-*"))  # the validation never finished

    ok(run_cli("fit", *common, "--ckpt_path", "last"))
    resumed = tmp_path / "preempt" / "version_1" / "checkpoints"
    state = torch.load(resumed / "last.ckpt", weights_only=False, map_location="cpu")
    assert (state["global_step"], state["epoch"]) == (8, 1)  # 2 epochs x 4 steps, as uninterrupted
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed.parent))
    events.Reload()
    assert [e.value for e in events.Scalars("val/videos")] == [
        4.0,
        4.0,
    ]  # epoch 0 validated again, then epoch 1
