"""What a newcomer relies on: the package runs, make lists its targets, conda and pip agree."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    """'Jsonargparse[signatures] == 4.53.0' -> 'jsonargparse[signatures]==4.53.0' (PEP 503 name, no spaces)."""
    name, rest = re.match(r"([a-z0-9_.\-]+)(.*)", requirement.replace(" ", "").lower()).groups()
    return re.sub(r"[-_.]+", "-", name) + rest


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_cli_help_lists_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "src.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in result.stdout


def test_make_help_lists_every_target():
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    declared = set(re.findall(r"^([a-zA-Z0-9_-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    for target in ("install", "test", "lint", "help", "demo", "bench", "prepare-k400", "prepare-synthetic"):
        assert target in listed
    assert declared == listed, f"targets without a '## ' help line: {sorted(declared - listed)}"
    readme = (ROOT / "README.md").read_text()
    missing = sorted(t for t in listed if f"`make {t}`" not in readme)
    assert not missing, f"README.md does not name these make targets: {missing}"


def test_environment_yml_names_the_same_packages_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    project = _pyproject()["project"]
    pyproject_pins = {
        _normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    }
    assert conda_pins == pyproject_pins, (
        f"only in environment.yml: {sorted(conda_pins - pyproject_pins)}; "
        f"only in pyproject.toml: {sorted(pyproject_pins - conda_pins)}"
    )
    assert any(r.startswith("-e .") for r in pip_section), "environment.yml must install the project itself"


def test_the_installed_packages_are_the_pinned_versions():
    """Every `name==version` pin of pyproject (dependencies and the dev extra) is what this environment runs."""
    from importlib.metadata import PackageNotFoundError, version

    project = _pyproject()["project"]
    pins = [_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    exact = dict(
        re.fullmatch(r"([a-z0-9-]+)(?:\[[^\]]*\])?==([^;]+)", pin).groups() for pin in pins if "==" in pin
    )
    assert {"torch", "torchvision", "lightning"} <= set(exact)
    wrong = {}
    for name, pinned in exact.items():
        try:
            installed = version(name).split("+")[0]  # a local build tag (+cpu, +cu128) is the same release
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"pinned vs installed: {wrong}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_layout_of_the_design():
    for path in ("src/models", "src/data", "configs", "data_prep", "benchmarks", "tests"):
        assert (ROOT / path).exists(), f"missing {path}"
