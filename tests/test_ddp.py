"""Multi-process runs the way users start them: CPU DDP over gloo with the default progress bar and loader
workers, two torchrun "nodes", a rank with no evaluation videos, a non-finite loss on one rank, a rank that
stops answering (collective timeout, SIGTERM while blocked in a collective), a rank slower than the collective
timeout in validation, and SIGTERM during validation.

Every run is bounded: a hang kills the whole process group and fails the test with the output so far.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.cli_runs import ROOT, env, image_run_args
from tests.helpers.signal_sync import wait_for_files, wait_for_markers

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
PROGRESS_BARS = {  # Lightning's default is the rich bar where `rich` is installed (the dev extra), tqdm elsewhere
    "default": [],
    "tqdm": ["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"],
    "none": ["--trainer.enable_progress_bar", "false"],
}


class Run:
    """A process (group) of the CLI whose output goes to a file: nothing has to drain a pipe while the test waits
    for an event of the run."""

    def __init__(self, command: list[str], log: Path, **extra_env: str) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env(**extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self, timeout: float) -> str:
        """Wait for the run; on a hang kill its whole process group (DDP ranks, loader workers) and fail."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"hung: no exit after {timeout} s\n{self.output[-4000:]}")
        return self.output

    def succeed(self, timeout: float = 300) -> str:
        output = self.finish(timeout)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{output[-5000:]}"
        return output

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def cli(log: Path, *args: str, module: str = "src.cli", **extra_env: str) -> Run:
    return Run([sys.executable, "-m", module, *args], log, **extra_env)


@pytest.fixture(scope="module")
def index(tiny_index) -> Path:
    """The session's tiny synthetic index (tests/conftest.py): 14 classes, 8 / 4 / 4 clips."""
    return tiny_index


def run_args(index: Path, runs: Path, name: str, version: str = "run") -> list[str]:
    """A tiny run of the synthetic config with the project's defaults (progress bar, one loader worker)."""
    return [
        "--config",
        "configs/synthetic.yaml",
        "--data.root",
        str(index),
        "--data.num_frames",
        "8",
        "--data.crop_size",
        "32",
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "1",
        "--data.test_views",
        "[2, 1]",
        "--model.init_from",
        "null",
        "--model.warmup_epochs",
        "1",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        version,
        "--trainer.default_root_dir",
        str(runs / name),
        "--trainer.log_every_n_steps",
        "1",
    ]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    skip = ("perf/", "lr")  # wall-clock rates differ from run to run
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if not tag.startswith(skip)
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------- progress bars
def torchrun_nodes(index: Path, runs: Path, name: str, *extra: str) -> list[Run]:
    """Two torchrun "nodes" on 127.0.0.1, one CPU process each, running `fit`; logs in `runs/<name>-node<r>.log`."""
    port = str(free_port())
    runs.mkdir(parents=True, exist_ok=True)
    return [
        Run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                "-m",
                "src.cli",
                "fit",
                *run_args(index, runs, name),
                "--trainer.num_nodes",
                "2",
                "--trainer.devices",
                "1",
                "--trainer.strategy",
                "ddp",
                "--trainer.accelerator",
                "cpu",
                *extra,
            ],
            runs / f"{name}-node{rank}.log",
        )
        for rank in (0, 1)
    ]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_fit_finishes_with_every_progress_bar_and_gives_the_same_metrics_and_weights(index, tmp_path):
    """The README's multi-process command hung after epoch 1 with the default (rank-0-only) progress bar.

    Two processes of one node (`--trainer.devices 2`) with the default and with no bar, and two torchrun
    "nodes" of one process each with the tqdm bar, launched together: every run ends, with the same metrics
    and weights."""
    launched = {
        bar: [
            cli(
                tmp_path / f"{bar}.log",
                "fit",
                *run_args(index, tmp_path, bar),
                *DDP,
                "--trainer.max_epochs",
                "2",
                *PROGRESS_BARS[bar],
            )
        ]  # fmt: skip
        for bar in ("default", "none")
    }
    launched["tqdm"] = torchrun_nodes(
        index, tmp_path, "tqdm", "--trainer.max_epochs", "2", *PROGRESS_BARS["tqdm"]
    )
    try:
        outputs = {bar: "".join(run.succeed(timeout=600) for run in runs) for bar, runs in launched.items()}
    finally:
        for runs in launched.values():
            for run in runs:
                run.kill()
    runs = {bar: tmp_path / bar / "run" for bar in launched}
    assert re.search(r"Epoch 1/1 ", outputs["default"]), "the default here is the rich bar"
    assert re.search(r"Epoch 1: +100%", outputs["tqdm"]) and not re.search(
        r"Epoch 1: +100%", outputs["default"]
    )

    reference = scalars(runs["none"])
    for tag in (
        "train/loss_epoch",
        "train/top1",
        "train/decode_failures",
        "val/top1",
        "val/loss",
        "val/videos",
        "val/decode_failures",
        "val/single_view/top1",
    ):
        assert tag in reference, sorted(reference)
    assert [v for _, v in reference["val/videos"]] == [4.0, 4.0]  # both ranks' shards, once per epoch
    states = {
        bar: torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
        for bar, run in runs.items()
    }
    for bar in ("default", "tqdm"):
        assert scalars(runs[bar]) == reference, f"{bar} progress bar changed the logged metrics"
        assert (
            states[bar]["global_step"] == states["none"]["global_step"] == 4
        )  # 2 epochs x 8 clips / (2 x 2)
        for key, value in states["none"]["state_dict"].items():
            assert torch.equal(states[bar]["state_dict"][key], value), f"{bar}: {key} differs"
        best = sorted((runs[bar] / "checkpoints").glob("best-*.ckpt"))
        assert [p.name for p in best] == [
            p.name for p in sorted((runs["none"] / "checkpoints").glob("best-*.ckpt"))
        ]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_imagenet_config_fits_under_ddp_with_the_default_progress_bar(tmp_path):
    """configs/imagenet.yaml (the image DataModule) on two gloo processes with the default bar: it ends, every val
    image is scored once over the two shards, and both ranks train on a corrupt file counted, not fatal."""
    from data_prep.synthetic_images import generate

    root = tmp_path / "images"
    generate(root, classes=4, train_per_class=8, val_per_class=3, size=40, corrupt=True)  # no doctor: met raw
    run = cli(
        tmp_path / "ddp.log",
        "fit",
        *image_run_args(root, tmp_path, "imagenet", "ddp"),
        *DDP,
        "--trainer.max_epochs",
        "2",
        "--data.max_failure_rate",
        "0.2",  # the truncated JPEG: 1 of 32 images
    )
    try:
        output = run.succeed(timeout=300)
    finally:
        run.kill()
    assert re.search(r"Epoch 1/1 ", output), "the default (rich) bar"
    values = scalars(tmp_path / "imagenet" / "ddp")
    assert [v for _, v in values["val/videos"]] == [12.0, 12.0]  # 4 classes x 3, both shards, each epoch
    assert sum(v for _, v in values["train/decode_failures"]) >= 1
    assert (
        sorted(p.name for p in (tmp_path / "imagenet" / "ddp" / "checkpoints").glob("*.ckpt"))[-1]
        == "last.ckpt"
    )


# ---------------------------------------------------------------------------------- faults on one rank
def fault_run(index: Path, runs: Path, name: str, fault: str, *args: str, **extra_env: str) -> Run:
    runs.mkdir(parents=True, exist_ok=True)
    return cli(
        runs / f"{name}.log",
        "fit",
        *run_args(index, runs, name),
        *DDP,
        *args,
        module="tests.helpers.ddp_faults",
        STRUCTVIT_FAULT=fault,
        STRUCTVIT_FAULT_OUT=str(runs / name / "ranks"),
        **extra_env,
    )


@pytest.fixture(scope="module")
def one_val_video_index(tmp_path_factory) -> Path:
    """The tiny index with one validation video: over two ranks, rank 0's evaluation shard is empty."""
    from data_prep.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("index1") / "synthetic"
    generate_dataset(out, train=8, val=1, test=1, frames=8, size=32)
    return out


@pytest.fixture(scope="module")
def eight_val_videos_index(tmp_path_factory) -> Path:
    """The tiny index with 8 validation videos: 4 per rank over two ranks."""
    from data_prep.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("index8") / "synthetic"
    generate_dataset(out, train=8, val=8, test=1, frames=8, size=32)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_non_finite_loss_on_one_rank_skips_the_step_and_an_empty_eval_shard_still_meets_the_others(
    one_val_video_index, tmp_path
):
    """One 2-process fit checks two faults: rank 1's loss is NaN at step 1 (every rank skips that step and
    the weights stay identical), and the one validation video leaves rank 0's shard empty, yet both ranks
    reduce the validation metrics together at every epoch."""
    output = fault_run(one_val_video_index, tmp_path, "nan", "nan", "--trainer.max_epochs", "2").succeed()
    ranks = [json.loads((tmp_path / "nan" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["nonfinite_skips"] for r in ranks] == [1, 1], output[-3000:]
    assert [r["global_step"] for r in ranks] == [4, 4]  # 4 batches; the skipped one still counts as a step
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # the ranks' weights stayed identical
    assert "non-finite loss" in output

    values = scalars(tmp_path / "nan" / "run")
    assert [v for _, v in values["val/videos"]] == [1.0, 1.0], output[-2000:]  # one video, once per epoch
    assert all(0 <= v <= 1 for _, v in values["val/top1"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stalled_rank_ends_the_run_at_the_collective_timeout_or_at_sigterm_after_the_grace(index, tmp_path):
    """Rank 1 stalls (600 s) after epoch 0 while rank 0 waits for it in a barrier; two runs, launched together:
    - without a signal, the collective timeout (30 s, not torch's 30 minutes) ends the run with its message
      (it also bounds the ranks' rendezvous: below 30 s, a rank that starts slowly on a busy machine fails it);
    - SIGTERM to every process of the other, once both ranks are there, ends it after the grace (3 s without
      progress) with the hang guard's message, and no process of the run outlives it."""
    timeout_run = fault_run(index, tmp_path, "stall", "stall", "--trainer.max_epochs", "2",
                            "--hang_guard.collective_timeout", "30", STRUCTVIT_STALL_S="600")  # fmt: skip
    sigterm_run = fault_run(index, tmp_path, "sigterm", "stall", "--trainer.max_epochs", "2",
                            "--hang_guard.signal_grace", "3", STRUCTVIT_STALL_S="600")  # fmt: skip
    try:
        stalled = tmp_path / "sigterm" / "ranks"
        reached = wait_for_files([stalled / "stalled-rank1", stalled / "blocked-rank0"], sigterm_run.proc)
        if not reached:
            sigterm_run.kill()
            pytest.fail(
                "rank 1 never stalled or rank 0 never reached the barrier\n" + sigterm_run.output[-4000:]
            )
        os.killpg(sigterm_run.proc.pid, signal.SIGTERM)  # as SLURM and torchrun do: every process of the job
        output = sigterm_run.finish(timeout=120)
        assert sigterm_run.proc.returncode != 0
        assert "[hang guard]" in output and "no progress for 3 s" in output, output[-4000:]
        alive = live_processes(sigterm_run.proc.pid)
        assert not alive, f"processes of the run outlived it: {alive}"

        output = timeout_run.finish(timeout=300)  # the stall alone would last 600 s
        assert timeout_run.proc.returncode != 0
        assert "rank 1: stalling" in output
        assert "hang_guard.collective_timeout=30 s" in output, output[-4000:]
        assert not (tmp_path / "stall" / "ranks" / "rank0.json").exists()  # the run did not finish training
    finally:
        for run in (timeout_run, sigterm_run):
            run.kill()


def live_processes(group: int, timeout: float = 30) -> list[str]:
    """The processes of process group `group` still alive (zombies are dead, not yet reaped), once they are
    all gone or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        listing = subprocess.run(
            ["ps", "-o", "pid=,stat=,args=", "-g", str(group)], capture_output=True, text=True
        ).stdout
        alive = [line for line in listing.splitlines() if line.split()[1][0] != "Z"]
        if not alive or time.monotonic() > deadline:
            if alive:
                os.killpg(group, signal.SIGKILL)
            return alive
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_every_process_stops_all_ranks_at_one_step_and_resumes_there(index, tmp_path):
    """Lightning's own handler broadcast inside the signal handler and deadlocked; every rank now stops together.

    Both ranks hold after step 6 (the middle of epoch 1 of 4 steps) until they have received the signal
    (tests/helpers/signal_sync.py): the run stops at exactly that step and resumes there."""
    markers = tmp_path / "markers"
    hold = json.dumps(
        {
            "class_path": "tests.helpers.signal_sync.WaitForSigtermAt",
            "init_args": {"step": 6, "marker_dir": str(markers)},
        }
    )
    args = [
        *run_args(index, tmp_path, "preempt"),
        *DDP,
        "--data.batch_size",
        "1",
        "--trainer.max_epochs",
        "3",
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    first = cli(tmp_path / "first.log", "fit", *args, "--trainer.logger.init_args.version", "first",
                f"--trainer.callbacks+={hold}")  # fmt: skip
    try:
        reached = wait_for_markers(markers, 2, first.proc)
        if reached:
            os.killpg(first.proc.pid, signal.SIGTERM)
        output = first.finish(timeout=120)
    finally:
        first.kill()
    assert reached, f"the ranks never reached step 6\n{output[-3000:]}"
    assert "SIGTERM: stopping all 2 processes at global step 6" in output, output[-4000:]
    assert "[hang guard]" not in output, output[-4000:]
    last = tmp_path / "preempt" / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 6

    cli(tmp_path / "resumed.log", "fit", *args, "--trainer.logger.init_args.version", "resumed",
        "--ckpt_path", str(last)).succeed()  # fmt: skip
    resumed = torch.load(
        tmp_path / "preempt" / "resumed" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu"
    )
    assert resumed["global_step"] == 12 and resumed["epoch"] == 2  # 3 epochs x 4 steps, as uninterrupted


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_slow_rank_is_waited_for_and_sigterm_in_validation_stops_every_rank_with_a_checkpoint(
    index, eight_val_videos_index, tmp_path
):
    """Two 2-process fits with slow validations (eval batches of one video), launched together:
    - 8 validation videos, 4 per rank: rank 1 takes 12 s more for each of its batches 1-3, 36 s in all, beyond
      `collective_timeout` 30 s (batch 0 is left fast: every rank's first validation step broadcasts DDP's
      buffers, a collective that would split the wait). Rank 0 used to wait in the metric all-gather and time
      out ("hang_guard.collective_timeout=30 s", exit 1, no checkpoint); it now waits while rank 1 completes
      batches, and the run ends with last.ckpt;
    - both ranks hold after their first validation batch until SIGTERM reaches every process, with
      `signal_grace` 10 s and a 12-s batch left to run: every rank leaves the validation there (they agree
      through the store, no collective per batch), last.ckpt holds the training step, exit 143."""
    slow = {
        "class_path": "tests.helpers.signal_sync.SlowValidation",
        "init_args": {"seconds": 12, "ranks": [1], "after": 1},
    }
    markers = tmp_path / "markers"
    held = {
        "class_path": "tests.helpers.signal_sync.SlowValidation",
        "init_args": {"seconds": 12, "marker_dir": str(markers), "hold_at": 0},
    }
    common = [
        *DDP,
        "--trainer.max_epochs",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--data.eval_batch_size",
        "1",
    ]
    slow_run = cli(tmp_path / "slow.log", "fit", *run_args(eight_val_videos_index, tmp_path, "slow"), *common,
                   "--hang_guard.collective_timeout", "30", f"--trainer.callbacks+={json.dumps(slow)}")  # fmt: skip
    term_run = cli(tmp_path / "term.log", "fit", *run_args(index, tmp_path, "term"), *common,
                   "--hang_guard.signal_grace", "10", f"--trainer.callbacks+={json.dumps(held)}")  # fmt: skip
    try:
        reached = wait_for_markers(markers, 2, term_run.proc)
        if reached:
            os.killpg(term_run.proc.pid, signal.SIGTERM)
        output = term_run.finish(timeout=120)
        assert reached, f"the ranks never reached their validation\n{output[-3000:]}"
        assert "[hang guard]" not in output, output[-4000:]
        assert "SIGTERM: stopping all 2 processes in validation (global step 2)" in output, output[-4000:]
        assert term_run.proc.returncode == 143
        last = tmp_path / "term" / "run" / "checkpoints" / "last.ckpt"
        state = torch.load(last, weights_only=False, map_location="cpu")
        assert (state["global_step"], state["epoch"]) == (2, 0)  # 8 clips / (2 ranks x 2): epoch 0 trained

        output = slow_run.succeed(timeout=400)
        assert "[hang guard]" not in output and "Timed out" not in output, output[-4000:]
        assert (tmp_path / "slow" / "run" / "checkpoints" / "last.ckpt").is_file()
        assert [v for _, v in scalars(tmp_path / "slow" / "run")["val/videos"]] == [8.0]  # both shards scored
    finally:
        for run in (slow_run, term_run):
            run.kill()
