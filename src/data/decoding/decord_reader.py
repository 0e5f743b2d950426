"""Read exact frames of a video file with decord (a second, independent decoder: PyAV's fallback).

A decord reader is created per call, inside whatever process calls (a DataLoader worker), never kept open
across samples: decord deadlocks when a reader made before fork is used after it. For the same reason the
module records whether this process has used decord (`decord_used_in_this_process`), so that loaders start
their workers from a clean forkserver instead of forking.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.data.decoding.base import DecodeError, Segment, segment_range, validate_indices

_decord_used_in_process = False  # decord's threads leave locks that deadlock processes forked afterwards


def decord_used_in_this_process() -> bool:
    """True once this process has opened a decord reader: processes forked after that can deadlock."""
    return _decord_used_in_process


def read_decord(path: Path, indices: Sequence[int], segment: Segment | None, threads: int) -> torch.Tensor:
    """Frames `indices` of the video `path` as uint8 (T, H, W, 3), in the order (and multiplicity) asked;
    each distinct frame is decoded once. `threads` = decoder threads (0 = auto)."""
    global _decord_used_in_process
    import decord

    _decord_used_in_process = True
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    except Exception as err:
        raise DecodeError(path, f"decord cannot open it: {err}") from err
    try:
        length = len(reader)
        if length == 0:
            raise DecodeError(path, "video stream holds no frames")
        fps = reader.get_avg_fps() if segment is not None else None
        first, count = segment_range(path, fps, length, segment)
        indices = validate_indices(path, indices, count)
        wanted = sorted(set(indices))
        batch = reader.get_batch([first + i for i in wanted])
        # decord's NDArray, or a torch tensor when another library (pytorchvideo) switched decord's bridge
        batch = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    except DecodeError:
        raise
    except Exception as err:
        raise DecodeError(path, f"decord failed: {err}") from err
    finally:
        del reader
    position = {i: k for k, i in enumerate(wanted)}
    return torch.from_numpy(np.ascontiguousarray(batch[[position[i] for i in indices]]))
