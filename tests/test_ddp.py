"""Multi-process runs the way users start them: CPU DDP over gloo with the default progress bar and loader
workers, two torchrun "nodes", a rank with no evaluation videos, a non-finite loss on one rank, and a rank
that stops answering (collective timeout, SIGTERM while blocked in a collective).

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
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
PROGRESS_BARS = {  # Lightning's default is the rich bar where `rich` is installed (the dev extra), tqdm elsewhere
    "default": [],
    "tqdm": ["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"],
    "none": ["--trainer.enable_progress_bar", "false"],
}


def env(**extra: str) -> dict[str, str]:
    """One torch thread per process (2 cores); the repository on the path for `tests.helpers`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


def start(command: list[str], **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for `proc`; on a hang kill its whole process group (DDP ranks, loader workers) and fail."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"hung: no exit after {timeout} s\n{output[-4000:]}")
    return output


def wait_or_fail(proc: subprocess.Popen, timeout: float, what: str, output: list[str]) -> None:
    """Wait for `proc` whose output another thread collects; on a hang kill its process group and fail."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{what}\n" + "".join(output)[-4000:])


def succeed(proc: subprocess.Popen, timeout: float = 240) -> str:
    output = finish(proc, timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output[-5000:]}"
    return output


def cli(*args: str, module: str = "src.cli", **extra_env: str) -> subprocess.Popen:
    return start([sys.executable, "-m", module, *args], **extra_env)


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    """14 classes, 8 train / 4 val / 4 test H.264 clips of 8 frames at 32x32 (the synthetic generator)."""
    from data_prep.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("index") / "synthetic"
    generate_dataset(out, train=8, val=4, test=4, frames=8, size=32)
    return out


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
def torchrun_nodes(index: Path, runs: Path, name: str, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun "nodes" on 127.0.0.1, one CPU process each, running `fit`."""
    port = str(free_port())
    return [
        start(
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
            ]
        )
        for rank in (0, 1)
    ]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_fit_finishes_with_every_progress_bar_and_gives_the_same_metrics_and_weights(index, tmp_path):
    """The README's multi-process command hung after epoch 1 with the default (rank-0-only) progress bar.

    Two processes of one node (`--trainer.devices 2`) with the default and with no bar, and two torchrun
    "nodes" of one process each with the tqdm bar: every run ends, with the same metrics and weights."""
    runs, outputs = {}, {}
    for bar in ("default", "none"):
        outputs[bar] = succeed(
            cli(
                "fit", *run_args(index, tmp_path, bar), *DDP, "--trainer.max_epochs", "2", *PROGRESS_BARS[bar]
            )
        )
        runs[bar] = tmp_path / bar / "run"
    nodes = torchrun_nodes(index, tmp_path, "tqdm", "--trainer.max_epochs", "2", *PROGRESS_BARS["tqdm"])
    deadline = time.time() + 300
    outputs["tqdm"] = "".join(succeed(node, timeout=max(deadline - time.time(), 1)) for node in nodes)
    runs["tqdm"] = tmp_path / "tqdm" / "run"
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
@pytest.mark.timeout(600)
def test_a_rank_with_no_evaluation_video_still_meets_the_others(index, tmp_path):
    """One val video over two ranks: rank 0's shard is empty, yet both reduce the metrics together."""
    output = succeed(cli("validate", *run_args(index, tmp_path, "one"), *DDP, "--data.limit", "1"))
    values = scalars(tmp_path / "one" / "run")
    assert [v for _, v in values["val/videos"]] == [1.0], output[-2000:]
    assert 0 <= values["val/top1"][0][1] <= 1


# ---------------------------------------------------------------------------------- faults on one rank
def fault_run(
    index: Path, runs: Path, name: str, fault: str, *args: str, **extra_env: str
) -> subprocess.Popen:
    return cli(
        "fit",
        *run_args(index, runs, name),
        *DDP,
        *args,
        module="tests.helpers.ddp_faults",
        STRUCTVIT_FAULT=fault,
        STRUCTVIT_FAULT_OUT=str(runs / name / "ranks"),
        **extra_env,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_all_ranks(index, tmp_path):
    output = succeed(fault_run(index, tmp_path, "nan", "nan", "--trainer.max_epochs", "2"))
    ranks = [json.loads((tmp_path / "nan" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["nonfinite_skips"] for r in ranks] == [1, 1], output[-3000:]
    assert [r["global_step"] for r in ranks] == [4, 4]  # 4 batches; the skipped one still counts as a step
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # the ranks' weights stayed identical
    assert "non-finite loss" in output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stalled_rank_ends_the_run_after_the_collective_timeout(index, tmp_path):
    began = time.time()
    proc = fault_run(
        index,
        tmp_path,
        "stall",
        "stall",
        "--trainer.max_epochs",
        "2",
        "--hang_guard.collective_timeout",
        "15",
        STRUCTVIT_STALL_S="600",
    )
    output = finish(proc, timeout=240)
    assert proc.returncode != 0
    assert "rank 1: stalling" in output
    assert "hang_guard.collective_timeout=15 s" in output, output[-4000:]
    assert time.time() - began < 200  # not the 600 s stall, nor torch's 30-minute default


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_while_blocked_in_a_collective_ends_the_run_with_a_message(index, tmp_path):
    proc = fault_run(
        index,
        tmp_path,
        "sigterm",
        "stall",
        "--trainer.max_epochs",
        "2",
        "--hang_guard.signal_grace",
        "3",
        STRUCTVIT_STALL_S="600",
    )
    seen = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "rank 1: stalling" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not seen.wait(240):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("rank 1 never stalled\n" + "".join(lines)[-4000:])
    time.sleep(3)  # rank 0 is now waiting in a collective for rank 1
    signalled = time.time()
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM and torchrun do: every process of the job
    wait_or_fail(proc, 60, "SIGTERM did not end the blocked run", lines)
    reader.join(timeout=10)
    output = "".join(lines)
    assert time.time() - signalled < 30
    assert proc.returncode != 0
    assert "[hang guard]" in output and "SIGTERM received 3 s ago" in output, output[-4000:]
    time.sleep(1)
    listing = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-g", str(proc.pid)], capture_output=True, text=True
    ).stdout
    alive = [
        line for line in listing.splitlines() if line.split()[1][0] != "Z"
    ]  # zombies are dead, not yet reaped
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not alive, f"processes of the run outlived it: {alive}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_every_process_stops_all_ranks_at_one_step_and_resumes_there(index, tmp_path):
    """Lightning's own handler broadcast inside the signal handler and deadlocked; every rank now stops together."""
    args = [
        *run_args(index, tmp_path, "preempt"),
        *DDP,
        "--data.batch_size",
        "1",
        "--trainer.max_epochs",
        "3",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",
    ]
    proc = cli("fit", *args[:-1], "--trainer.logger.init_args.version", "first", args[-1])
    buffer: list[str] = []
    hit = threading.Event()

    def watch() -> None:  # tqdm lines end in \r: read characters; signal in the middle of epoch 1 (4 steps)
        text = ""
        while ch := proc.stdout.read(1):
            buffer.append(ch)
            text = (text + ch)[-400:]
            if not hit.is_set() and re.search(r"Epoch 1: +\d+%\S* *\| *[12]/4", text):
                hit.set()
                os.killpg(proc.pid, signal.SIGTERM)

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    wait_or_fail(proc, 300, "the SIGTERM'd run did not end", buffer)
    reader.join(timeout=10)
    output = "".join(buffer)
    assert hit.is_set(), output[-3000:]
    assert "SIGTERM: stopping all 2 processes" in output and "[hang guard]" not in output, output[-4000:]
    last = tmp_path / "preempt" / "first" / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert 4 < step < 8, step  # in the middle of epoch 1

    succeed(cli("fit", *args[:-1], "--trainer.logger.init_args.version", "resumed", "--ckpt_path", str(last)))
    resumed = torch.load(
        tmp_path / "preempt" / "resumed" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu"
    )
    assert resumed["global_step"] == 12 and resumed["epoch"] == 2  # 3 epochs x 4 steps, as uninterrupted
