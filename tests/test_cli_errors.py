"""Mistakes of input and machine end `python -m src.cli` with one line `error: ...` (exit 2) and no traceback: at
parse time, before anything is written, when the value alone is wrong; from `src.cli.main` when the run meets it
(a missing index, a full disk). A resume takes its weights from the checkpoint only, never from `init_from`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from tests.helpers.cli_runs import TINY, ok, run_args, run_cli_together


def run_main(capsys, *args: str) -> tuple[int, str]:
    """`src.cli.main` in this process (the `python -m src.cli` entry point): (exit code, stderr)."""
    from src.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------ parse time
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("trainer.max_epochs", "-5", "--trainer.max_epochs -5: give a number of epochs >= 0, or -1 for no limit"),
        ("trainer.max_steps", "-3", "--trainer.max_steps -3: give a number of steps >= 0, or -1 for no limit"),
        ("trainer.accumulate_grad_batches", "0", "--trainer.accumulate_grad_batches 0: give a number of batches"),
        # once failed at the first training step ("got 1.5"), after the run folder was written
        ("model.backbone.drop_path_rate", "2.0", 'Parser key "model.backbone.drop_path_rate"'),
        ("model.backbone.checkpoint_stages", "[5]", 'Parser key "model.backbone.checkpoint_stages"'),
        ("model.betas", "[0.9, 1.0]", 'Parser key "model.betas"'),
        ("model.init_from", "{tmp}/nope.pth", "model.init_from: no checkpoint at {tmp}/nope.pth (it does not exist); "
         "give --model.init_from the .pth/.ckpt file to start from, or null to train from scratch"),
        ("model.init_from", "{tmp}", "model.init_from: no checkpoint at {tmp} (it is a directory)"),
    ],
)  # fmt: skip
def test_a_value_wrong_by_itself_is_a_parse_error_and_writes_nothing(
    capsys, tiny_index, tmp_path, option, value, message
):
    runs = tmp_path / "runs"
    value, message = (s.replace("{tmp}", str(tmp_path)) for s in (value, message))
    code, err = run_main(capsys, "fit", *run_args(tiny_index, runs, "bad"), f"--{option}", value)
    assert code == 2 and message in err, err[-2000:]
    assert not runs.exists()  # no run folder, no config.yaml


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_config_without_a_gpu_names_the_flags_that_run_it_on_the_cpu(capsys, tiny_index, tmp_path):
    """configs/custom.yaml (accelerator gpu, bf16-mixed) once ended in Lightning's "No supported gpu backend
    found!" traceback. The flags the message names make the same config run."""
    init = tmp_path / "init.ckpt"
    init.touch()
    args = [
        "fit",
        "--config",
        "configs/custom.yaml",
        "--data.root",
        str(tiny_index),
        "--model.init_from",
        str(init),
    ]
    code, err = run_main(capsys, *args)
    assert code == 2 and err.splitlines()[-1] == (
        "error: --trainer.accelerator gpu: torch finds no GPU on this machine. To run on the CPU add "
        "--trainer.accelerator cpu (precision bf16-mixed runs there too; --trainer.precision 32-true is often "
        "faster on a CPU)"
    )
    from task_fixtures import OneThread  # (imported here: the run of a test below imports this module)

    from src.cli import cli_main

    with OneThread():  # the same config, one step at the tiny size: the named flag is all it needs
        cli = cli_main([*args, "--config", "configs/model/structvit_xs.yaml", *TINY, "--trainer.accelerator", "cpu",
                        "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert cli.trainer.global_step == 1 and cli.trainer.precision == "bf16-mixed"


def test_a_ckpt_path_that_is_not_a_checkpoint_of_this_project_says_what_it_is(capsys, tiny_index, tmp_path):
    """A plain state dict once failed inside predict with a traceback; a directory or /dev/null was reported as
    "does not exist"."""
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, state_dict)
    predict = ["predict", "--data.predict_path", str(tiny_index), "--ckpt_path"]
    test = ["test", *run_args(tiny_index, tmp_path / "runs", "bad"), "--ckpt_path"]
    cases = {
        (
            *predict,
            str(state_dict),
        ): f"{state_dict}: not a checkpoint written by this project's `src.cli fit`",
        (*test, str(tmp_path)): f"--ckpt_path: {tmp_path} is a directory, not a checkpoint file",
        (*test, os.devnull): f"--ckpt_path: {os.devnull} is a device, pipe or socket, not a checkpoint file",
    }
    for args, message in cases.items():
        code, err = run_main(capsys, *args)
        assert code == 2 and message in err.splitlines()[-1], err[-2000:]
    assert not (tmp_path / "runs").exists()


def test_a_config_file_with_a_yaml_error_is_named_with_its_line(capsys, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("model:\n  lr: 1.0e-3\n  betas: [0.9, 0.99\n")
    code, err = run_main(capsys, "fit", "--config", "configs/synthetic.yaml", "--config", str(bad))
    assert code == 2 and "<unicode string>" not in err
    assert err.splitlines()[-1] == (
        f"error: Problems parsing config: {bad}, line 4, column 1: did not find expected ',' or ']' "
        "(while parsing a flow sequence opened at line 3, column 10)"
    )


# ------------------------------------------------------------------------------------------ run time
def test_a_missing_index_is_one_line_without_a_run_folder(capsys, tmp_path):
    runs = tmp_path / "runs"
    code, err = run_main(capsys, "fit", *run_args(tmp_path / "absent", runs, "noindex"))
    assert code == 2 and "Traceback" not in err and not runs.exists()
    assert err.splitlines()[-1] == (
        f"error: no prepared 'synthetic' index at {tmp_path / 'absent'} (classes.txt missing). Run `make "
        f"prepare-synthetic DATA_ROOT={tmp_path}` or point data.root at a prepared index folder."
    )


class FullDiskAt(Callback):
    """From training epoch `epoch` on, rank 0's saves of last.ckpt write into /dev/full, where every write fails
    with ENOSPC: the temporary file of the atomic save (src/checkpoint_io.py) is made a link to it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from src.checkpoint_io import temporary_name

        target = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"  # a broadcast under DDP: on every rank
        if trainer.current_epoch == self.epoch and trainer.is_global_zero:
            temporary_name(target).symlink_to("/dev/full")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_during_a_save_is_one_line_naming_the_checkpoint_and_keeping_the_previous(
    tiny_index, tmp_path
):
    """Once an 80-line traceback ending in torch's "unexpected pos", the ENOSPC buried mid-way. One process and two
    DDP processes, side by side (under DDP rank 0 saves; rank 1, left at the save's barrier, is ended by rank 0 without a traceback)."""
    full = '{"class_path": "tests.test_cli_errors.FullDiskAt", "init_args": {"epoch": 1}}'
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    runs = {name: ["fit", *run_args(tiny_index, tmp_path, name, "v"), "--trainer.max_epochs", "2",
                   f"--trainer.callbacks+={full}", *extra] for name, extra in (("one", []), ("ddp", ddp))}  # fmt: skip
    for name, result in zip(runs, run_cli_together(*runs.values())):
        last = tmp_path / name / "v" / "checkpoints" / "last.ckpt"
        line = (
            f"error: checkpoint {last} not saved: the disk is full (No space left on device); the previous last.ckpt "
            "is kept. Free space on that disk and resume with --ckpt_path last"
        )
        assert result.returncode == 2 and line in result.stderr.splitlines(), result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]  # rank 1 ended with rank 0, silently
        if name == "one":
            assert result.stderr.splitlines()[-1] == line
        assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 0
        assert [p.name for p in last.parent.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------------ resume
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_resume_takes_its_weights_from_the_checkpoint_alone_even_with_init_from_gone(
    tiny_checkpoint, tiny_index, tmp_path
):
    """`fit --model.init_from init.pth`, the file removed, the same command with `--ckpt_path last`: once a
    FileNotFoundError (Lightning hands the checkpoint to the Trainer only after the model's setup, which loaded
    init_from again). One process and two DDP processes (gloo, default progress bar), run side by side."""
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    commands = {}
    for name, extra in (("one", []), ("ddp", ddp)):
        init = tmp_path / f"init-{name}.pth"
        shutil.copy(tiny_checkpoint, init)
        commands[name] = [
            "fit",
            *run_args(tiny_index, tmp_path, name),
            "--model.init_from",
            str(init),
            *extra,
        ]
    for result in run_cli_together(*[[*c, "--trainer.max_epochs", "1"] for c in commands.values()]):
        ok(result)
    for name in commands:
        assert (
            tmp_path / name / "version_0" / "init_report.txt"
        ).is_file()  # the first fit did start from it
        (tmp_path / f"init-{name}.pth").unlink()
    resumed = run_cli_together(
        *[[*c, "--trainer.max_epochs", "2", "--ckpt_path", "last"] for c in commands.values()]
    )
    for name, result in zip(commands, resumed):
        ok(result)
        run = tmp_path / name / "version_1"
        assert not (run / "init_report.txt").exists()
        steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")[
            "global_step"
        ]
        assert steps == (8 if name == "one" else 4)  # 4 steps per epoch in one process, 2 per rank in two
