"""Read frames from a folder of JPEG frames (`00001.jpg`, `00002.jpg`, ...): frame i is the i-th file in
name order. A folder has no frame rate, so it cannot be cut by a segment in seconds."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.data.decoding.base import DecodeError, Segment, VideoInfo, validate_indices

JPEG_SUFFIXES = (".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


class NotFramesError(DecodeError):
    """The folder holds a video or a sub-folder, so it is not one frame video: no retry can change that."""

    retryable = False


def jpeg_files(folder: Path) -> list[Path]:
    """The JPEG frames of `folder` in name order; DecodeError when it holds none, or holds anything that is a
    video (a video file or a sub-folder): then it is a folder of videos, never collapsed into one frame video."""
    with os.scandir(folder) as listing:  # d_type: no stat per frame
        entries = [(e.name, e.is_dir()) for e in listing if not e.name.startswith(".")]
    videos = sorted(n + "/" * d for n, d in entries if d or n.lower().endswith(VIDEO_SUFFIXES))
    if videos:
        shown = ", ".join(videos[:3]) + (" ..." if len(videos) > 3 else "")
        raise NotFramesError(
            folder,
            f"a folder holding videos or sub-folders ({shown}) is not a frame folder (it holds frames only): "
            "give each video its own row or path",
        )
    files = sorted(folder / n for n, _ in entries if Path(n).suffix.lower() in JPEG_SUFFIXES)
    if not files:
        raise DecodeError(folder, "folder holds no .jpg frames (expected 00001.jpg, 00002.jpg, ...)")
    return files


def probe_folder(path: Path) -> VideoInfo:
    """Frame count and size (of the first frame) of a JPEG folder; no frame rate."""
    from PIL import Image

    files = jpeg_files(path)
    try:
        with Image.open(files[0]) as img:
            width, height = img.size
    except Exception as err:
        raise DecodeError(files[0], f"unreadable JPEG: {err}") from err
    return VideoInfo(len(files), None, width, height, "jpeg")


def read_folder(path: Path, indices: Sequence[int], segment: Segment | None = None) -> torch.Tensor:
    """Frames `indices` of the JPEG folder `path` as uint8 (T, H, W, 3), in the order (and multiplicity) asked.

    A segment is refused unless it starts at 0 (the whole folder): a folder holds one event's frames."""
    if segment is not None and any(v is not None and not math.isclose(v, 0.0) for v in segment[:1]):
        raise DecodeError(path, "segments are not supported for JPEG folders (extract the event's frames)")
    from PIL import Image

    files = jpeg_files(path)
    indices = validate_indices(path, indices, len(files))
    cache: dict[int, np.ndarray] = {}
    for i in indices:
        if i not in cache:
            try:
                with Image.open(files[i]) as img:
                    cache[i] = np.asarray(img.convert("RGB"))
            except Exception as err:
                raise DecodeError(files[i], f"unreadable JPEG: {err}") from err
    shapes = {cache[i].shape for i in cache}
    if len(shapes) > 1:
        raise DecodeError(path, f"JPEG frames differ in size {sorted(shapes)}")
    return torch.from_numpy(np.stack([cache[i] for i in indices]))
