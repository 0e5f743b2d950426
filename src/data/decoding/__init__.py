"""Read exact frames from a video file or a folder of JPEG frames, with PyAV, decord or torchcodec.

`read_frames(source, indices)` returns the frames at the video's own frame indices (0-based, counted in
order of presentation), so sampling never depends on timestamps and variable frame rates are handled by
construction. `segment=(start, end)` in seconds restricts a long file to one trimmed event; indices are then
relative to the segment's first frame. Every failure raises `DecodeError(path, reason)`.

One module per backend over the shared `base` (errors, VideoInfo, validation, segment arithmetic):
`decord_reader` (the default), `pyav_reader` (its fallback), `torchcodec_reader` (optional) and
`frames_reader` (JPEG folders, whatever the backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from src.data.decoding.base import (
    ALL_BACKENDS,
    BACKENDS,
    FALLBACK,
    OPTIONAL_BACKENDS,
    DecodeError,
    DecodeTimeoutError,
    MissingVideoError,
    Segment,
    VideoInfo,
    check_source,
    segment_range,
    validate_indices,
)
from src.data.decoding.decord_reader import decord_used_in_this_process, read_decord
from src.data.decoding.frames_reader import JPEG_SUFFIXES, probe_folder, read_folder
from src.data.decoding.pyav_reader import probe_video, read_pyav
from src.data.decoding.torchcodec_reader import read_torchcodec

__all__ = [
    "ALL_BACKENDS",
    "BACKENDS",
    "FALLBACK",
    "JPEG_SUFFIXES",
    "OPTIONAL_BACKENDS",
    "DecodeError",
    "DecodeTimeoutError",
    "MissingVideoError",
    "Segment",
    "VideoInfo",
    "check_source",
    "decord_used_in_this_process",
    "probe",
    "read_frames",
    "segment_range",
    "validate_indices",
]


def probe(source: str | Path) -> VideoInfo:
    """Frame count, fps, size and codec of a video file or JPEG folder (demuxes, does not decode)."""
    path = check_source(source)
    if path.is_dir():
        return probe_folder(path)
    return probe_video(path)


def read_frames(
    source: str | Path,
    indices: Sequence[int],
    backend: str = "decord",
    *,
    segment: Segment | None = None,
    threads: int = 1,
) -> torch.Tensor:
    """Frames `indices` of `source` as a uint8 tensor (T, H, W, 3), in the order (and multiplicity) asked.

    `source` is a video file or a folder of JPEG frames (the backend is ignored for folders). `segment`
    = (start, end) in seconds decodes only that range of a longer file; indices count from its first frame.
    `threads` = decoder threads (1: one per DataLoader worker, which already run in parallel; 0 = auto).
    Raises DecodeError naming the file for missing, empty, corrupt or truncated sources.
    """
    if backend not in ALL_BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; use one of {ALL_BACKENDS}")
    path = check_source(source)
    if path.is_dir():
        return read_folder(path, indices, segment)
    if backend == "decord":
        return read_decord(path, indices, segment, threads)
    if backend == "torchcodec":
        return read_torchcodec(path, indices, segment, threads)
    return read_pyav(path, indices, segment, threads)
