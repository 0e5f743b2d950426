"""Read exact frames of a video file with decord (the default backend; PyAV is its fallback).

A decord reader is created per call, inside whatever process calls (a DataLoader worker), never kept open
across samples: decord deadlocks when a reader made before fork is used after it, and a worker sees each
file about once an epoch, so a cache of open readers would not hit. For the same reason the module records
whether this process has used decord (`decord_used_in_this_process`), so that loaders start their workers
from a clean forkserver instead of forking.

The read is one `get_batch` of the sorted distinct frames on a one-thread reader: decord seeks to the
keyframe before a wanted frame only when the frame lies past the next keyframe, and decodes without colour
conversion the frames it steps over. Its batch is handed to torch without a copy (DLPack) and gathered
only when the indices asked are not already sorted and distinct. `python -m benchmarks.decoders` measures
this path against the previous one and the alternatives (more threads, frame-by-frame reads, one
contiguous range).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from src.data.decoding.base import DecodeError, Segment, segment_range, validate_indices

_decord_used_in_process = False  # decord's threads leave locks that deadlock processes forked afterwards


def decord_used_in_this_process() -> bool:
    """True once this process has opened a decord reader: processes forked after that can deadlock."""
    return _decord_used_in_process


def _as_tensor(batch) -> torch.Tensor:
    """decord's NDArray as a uint8 tensor sharing its memory; a torch tensor (another library, e.g.
    pytorchvideo, switched decord's bridge to torch) as it is."""
    if isinstance(batch, torch.Tensor):
        return batch
    if hasattr(batch, "to_dlpack"):
        return from_dlpack(batch.to_dlpack())
    return torch.from_numpy(np.asarray(batch))  # other bridges (mxnet, tensorflow) expose the array protocol


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
        frames = _as_tensor(reader.get_batch([first + i for i in wanted]))
    except DecodeError:
        raise
    except Exception as err:
        raise DecodeError(path, f"decord failed: {err}") from err
    finally:
        del reader
    if wanted == indices:  # the samplers' usual request: already in order, each frame once
        return frames.contiguous()
    position = {i: k for k, i in enumerate(wanted)}
    return frames[torch.tensor([position[i] for i in indices])]
