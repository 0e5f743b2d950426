"""Session-wide fixtures: the tiny synthetic index and one tiny run fitted and tested through the command line,
shared by the CLI, predict, export and DDP tests (one fit instead of one per test file).

The run is read-only for its consumers: a test that writes beside the checkpoint (a prediction without an output,
an export sidecar) copies it first. The session checks at its end that nobody changed the run's files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli_runs import make_tiny_index, ok, run_args, run_cli, snapshot


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> Path:
    """14 classes, 8 train / 4 val / 4 test H.264 clips of 8 frames at 32x32 (the synthetic generator)."""
    return make_tiny_index(tmp_path_factory.mktemp("index") / "synthetic")


@pytest.fixture(scope="session")
def tiny_run(tiny_index, tmp_path_factory) -> Path:
    """One `fit` of structvit_xs through the CLI: 2 epochs of 4 steps, bf16 mixed precision, one CPU process.
    Returns the run folder (config.yaml, hparams.yaml, TensorBoard events, checkpoints/last.ckpt and best-*)."""
    runs = tmp_path_factory.mktemp("runs")
    ok(
        run_cli(
            "fit",
            *run_args(tiny_index, runs, "e2e", "fit"),
            "--trainer.max_epochs",
            "2",
            "--trainer.precision",
            "bf16-mixed",
        )
    )
    run = runs / "e2e" / "fit"
    before = snapshot(run)
    yield run
    assert snapshot(run) == before, f"a test changed the shared run {run}: copy it before writing into it"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """The shared run's `last.ckpt` (read-only: copy it to change it)."""
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_tested(tiny_checkpoint, tiny_index, tmp_path_factory) -> Path:
    """`test` of the shared checkpoint in one process; returns its run folder (confusion matrix etc.)."""
    runs = tmp_path_factory.mktemp("tested")
    ok(run_cli("test", *run_args(tiny_index, runs, "e2e", "test"), "--ckpt_path", str(tiny_checkpoint)))
    return runs / "e2e" / "test"
