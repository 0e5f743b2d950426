"""HangGuard's configuration through the CLI: the DDP process-group timeout it sets, and its bounds.

Its behaviour in real multi-process runs (a stalled rank, SIGTERM while blocked, SIGTERM to every process)
is tested end to end in tests/test_ddp.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy

from src.cli import cli_main, timed_ddp_strategy

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
