"""Where the repository's own folders are, found once for every module that reads them; which file a path is."""

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


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file `path` leads to (links followed), None if there is none: two paths name the
    same file, hard or symbolic links included, when their identities are equal."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino
