"""Checkpoints are written beside their target and renamed into place; a kill mid-save leaves no partial
checkpoint under the real name and no temporary file in $TMPDIR, and the next save clears what it left."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.checkpoint_io import AtomicCheckpointIO, DiskFullError, temporary_name

ROOT = Path(__file__).resolve().parents[1]
SAVER = """
import sys, torch
from src.checkpoint_io import AtomicCheckpointIO
AtomicCheckpointIO().save_checkpoint({"w": torch.randn(64, 1024, 1024)}, sys.argv[1])  # 256 MiB
"""


@pytest.mark.timeout(120)
def test_a_kill_during_a_save_leaves_the_old_checkpoint_and_nothing_in_tmpdir(tmp_path):
    target = tmp_path / "ckpts" / "last.ckpt"
    target.parent.mkdir()
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, target)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(target)],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"},
    )
    partial = target.parent / f".last.ckpt.tmp-{proc.pid}"
    deadline = time.time() + 60
    while not (partial.exists() and partial.stat().st_size > 1 << 20) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert partial.exists(), "the save never started writing beside its target"
    assert torch.load(target, weights_only=True)["step"] == 1  # the previous checkpoint, intact
    assert list(tmpdir.iterdir()) == []

    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, target)  # the next run's first save
    assert not partial.exists()
    assert torch.load(target, weights_only=True)["step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_during_a_save_names_the_checkpoint_and_keeps_the_previous(tmp_path):
    """torch's own error is its zip writer's "unexpected pos", the ENOSPC only in its context. The temporary file
    of the save is made a link to /dev/full, where every write fails with ENOSPC."""
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, target)
    temporary_name(target).symlink_to("/dev/full")
    with pytest.raises(DiskFullError) as raised:
        io.save_checkpoint({"w": torch.randn(256, 256)}, target)
    assert str(raised.value) == (
        f"checkpoint {target} not saved: the disk is full (No space left on device); the previous last.ckpt is kept. "
        "Free space on that disk and resume with --ckpt_path last"
    )
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temporary file (link) is gone
