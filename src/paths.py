"""Where the repository's own folders are, found once for every module that reads them."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def configs_dir() -> Path:
    """The `configs/` folder of this checkout; a clear error when the package runs without it."""
    path = REPO_ROOT / "configs"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no configs/ folder at {path}: run from a clone of the repository installed with "
            "`make install` (pip install -e .), which keeps configs/ beside src/"
        )
    return path
