"""Checkpoint files written atomically beside their target: a save cut short (kill -9, a full disk) leaves at
most a hidden temporary file in the run's own checkpoint folder, removed at the next save there, and never a
half-written checkpoint under the real name.

Lightning's own `TorchCheckpointIO` builds the whole file in memory and writes it through an fsspec transaction
whose temporary file lives in $TMPDIR: a kill leaves that file behind where nobody looks, and the final move
crosses file systems (a copy, not an atomic rename) when $TMPDIR is elsewhere.

A save that runs out of space raises `DiskFullError` naming the checkpoint (torch's own error is a zip writer's
"unexpected pos", with the ENOSPC buried in its context).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger("lightning.pytorch").getChild("checkpoint_io")
TMP_MARK = ".tmp-"
OUT_OF_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}


class DiskFullError(OSError):
    """A checkpoint save that ran out of space; the file under the checkpoint's name is untouched."""

    def __str__(self) -> str:
        return str(self.strerror)


def out_of_space(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT error behind `err` (itself, its cause or its context), if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OUT_OF_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def temporary_name(path: Path) -> Path:
    """The hidden temporary file of `path` for this process: `.name.tmp-<pid>` in the same folder."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that interrupted saves of other processes left in `folder`."""
    removed = []
    for stale in folder.glob(f".*.ckpt{TMP_MARK}*"):
        if stale.name.endswith(f"{TMP_MARK}{os.getpid()}"):
            continue
        try:
            stale.unlink()
            removed.append(stale)
        except OSError:
            pass
    if removed:
        log.info("removed %d temporary file(s) of interrupted checkpoint saves in %s", len(removed), folder)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into a temporary file beside the target, flushed to disk, then renamed over it (atomic on
    one file system). Remote paths (`s3://`, ...) keep Lightning's own behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"storage_options is not supported by {type(self).__name__} for local files")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent not in self._cleaned:
            remove_stale_temporaries(path.parent)
            self._cleaned.add(path.parent)
        tmp = temporary_name(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            full = out_of_space(err)
            if full is None:
                raise
            kept = f"the previous {path.name} is kept" if path.exists() else "no earlier file had that name"
            raise DiskFullError(
                full.errno,
                f"checkpoint {path} not saved: {OUT_OF_SPACE[full.errno]} ({os.strerror(full.errno)}); {kept}. "
                "Free space on that disk and resume with --ckpt_path last",
                str(path),
            ) from err
