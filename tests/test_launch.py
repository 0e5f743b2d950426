"""The SLURM launch script (configs/launch/slurm.sbatch) runs on a fresh clone: run by bash with the variables
SLURM sets and `srun` shimmed by a script that records its command and runs it up to the CLI's parse."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli_runs import ROOT

SCRIPT = ROOT / "configs" / "launch" / "slurm.sbatch"
SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NNODES": "2",
    "SLURM_GPUS_PER_NODE": "a100:4",
    "SLURM_CPUS_PER_TASK": "6",
    "SLURM_NTASKS_PER_NODE": "4",
}


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def shim_bin(tmp_path: Path) -> Path:
    """A bin folder with `srun`: it records its arguments (the program as the path it resolves to), then runs them with --print_config appended (the
    real CLI parses the whole command, the config included, and prints the resolved recipe)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(
        bin_dir / "srun",
        f'#!/bin/bash\nprintf "%s\\n" "$(command -v "$1")" "${{@:2}}" > "{tmp_path}/srun_args"\n'
        'exec "$@" --print_config\n',
    )
    return bin_dir


def _run(submit_dir: Path, bin_dir: Path, **extra: str) -> subprocess.CompletedProcess:
    path = f"{bin_dir}:/usr/bin:/bin"  # no .venv on the PATH: the script must activate an environment itself
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": path, "SLURM_SUBMIT_DIR": str(submit_dir)}
    env.update(SLURM_ENV, **extra)
    args = ["bash", str(SCRIPT), "configs/k400.yaml", "--data.batch_size", "4"]
    return subprocess.run(args, env=env, cwd="/", capture_output=True, text=True, timeout=120)


def _printed_recipe(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-2000:]
    return yaml.safe_load(result.stdout)


def test_the_job_log_goes_to_a_folder_that_exists_before_any_run() -> None:
    """SLURM opens --output before the script runs and creates no folder: runs/ does not exist on a fresh clone."""
    (output,) = re.findall(r"^#SBATCH --output=(\S+)$", SCRIPT.read_text(), flags=re.M)
    folder = Path(output).parent
    assert folder == Path("."), f"--output={output} needs {folder}/, which a fresh clone does not have"


@pytest.mark.timeout(180)
def test_script_activates_the_venv_and_launches_one_fit_per_task_with_the_slurm_geometry(
    shim_bin: Path, tmp_path: Path
) -> None:
    recipe = _printed_recipe(_run(ROOT, shim_bin))
    args = (tmp_path / "srun_args").read_text().splitlines()
    assert Path(args[0]).name == "python" and args[1:4] == ["-m", "src.cli", "fit"]
    assert Path(args[0]).parent == ROOT / ".venv" / "bin"  # the venv, not the system's
    trainer = recipe["trainer"]
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["strategy"]) == (2, "4", "ddp")  # "a100:4"
    data = recipe["data"]["init_args"]
    assert data["num_workers"] == 5 and data["batch_size"] == 4


@pytest.mark.timeout(180)
def test_without_a_venv_the_conda_environment_is_activated_through_its_shell_hook(
    shim_bin: Path, tmp_path: Path
) -> None:
    """`conda activate` fails in a batch shell unless conda's hook was evaluated; a fake conda checks that."""
    submit = tmp_path / "clone"
    submit.mkdir()
    for name in ("src", "configs"):
        (submit / name).symlink_to(ROOT / name)
    venv_bin = ROOT / ".venv" / "bin"
    hook = (
        'conda() { if [ "$1" = activate ]; then echo "$2" > ' + f'"{tmp_path}/activated"; '
        f'export PATH="{venv_bin}:$PATH"; fi; }}'
    )
    _executable(shim_bin / "conda", f"#!/bin/bash\n[ \"$1 $2\" = 'shell.bash hook' ] && echo '{hook}'\n")
    recipe = _printed_recipe(_run(submit, shim_bin, CONDA_ENV="video"))
    assert (tmp_path / "activated").read_text().strip() == "video"
    assert str(recipe["trainer"]["devices"]) == "4"


def test_no_environment_at_all_is_one_clear_line(shim_bin: Path, tmp_path: Path) -> None:
    result = _run(tmp_path, shim_bin)
    assert result.returncode == 1
    assert "no .venv in" in result.stderr and "make install" in result.stderr
    assert not (tmp_path / "srun_args").exists()
