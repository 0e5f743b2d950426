"""Checkpoints are written beside their target and renamed into place; a kill mid-save leaves no partial
checkpoint under the real name and no temporary file in $TMPDIR, and the next save clears what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.checkpoint_io import AtomicCheckpointIO

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
