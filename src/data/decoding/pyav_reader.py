"""Read exact frames of a video file with PyAV (the default backend), by the table of frame timestamps.

The file is demuxed once (no decoding) into the sorted presentation timestamps of every frame and of the
keyframes; frame i is the frame with the i-th timestamp, so variable frame rates are exact by construction.
A read seeks to the keyframe before each run of wanted frames and decodes forward. Three things keep it
cheap: frames that no other frame references and that are not wanted are not decoded at all; one colour
converter serves the whole clip (PyAV's `to_ndarray` builds one per frame); the timestamp table is cached
per process. `python -m benchmarks.clip_cost` times each of these steps with the functions below.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.data.decoding.base import DecodeError, Segment, VideoInfo, segment_range, validate_indices

_PROBE_CACHE: OrderedDict[tuple[str, int, int], tuple[VideoInfo, list[int], list[int]]] = OrderedDict()
_PROBE_CACHE_SIZE = 4096  # files per process; a table is ~8 bytes per frame


def demux_timestamps(path: Path) -> tuple[VideoInfo, list[int], list[int]]:
    """VideoInfo, the sorted presentation timestamps of every frame and those of the keyframes (demuxed,
    not decoded; not cached: see `timestamp_table`)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(path, "no video stream in the file")
            stream = container.streams.video[0]
            pts, keys = [], []
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size > 0:
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
    except DecodeError:
        raise
    except Exception as err:  # av.error.* and friends: name the file, keep the reason
        raise DecodeError(path, f"{type(err).__name__}: {err}") from err
    if not pts:
        raise DecodeError(path, "video stream holds no frames (truncated or corrupt file)")
    pts.sort()
    keys.sort()
    return VideoInfo(len(pts), fps, width, height, codec), pts, keys


def timestamp_table(path: Path) -> tuple[VideoInfo, list[int], list[int]]:
    """`demux_timestamps(path)`, cached per process by (path, size, mtime): a training worker reads the same
    file every epoch, and demuxing a whole file costs about as much as decoding a few of its frames."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _PROBE_CACHE:
        _PROBE_CACHE.move_to_end(key)
        return _PROBE_CACHE[key]
    result = demux_timestamps(path)
    _PROBE_CACHE[key] = result
    if len(_PROBE_CACHE) > _PROBE_CACHE_SIZE:
        _PROBE_CACHE.popitem(last=False)
    return result


def clear_timestamp_cache() -> None:
    """Forget every cached timestamp table, so the next read of each file demuxes it again: what a worker
    meets in an epoch of a large dataset, where it sees each of thousands of files about once
    (`benchmarks.decoders` clears it before each clip)."""
    _PROBE_CACHE.clear()


def probe_video(path: Path) -> VideoInfo:
    """Frame count, fps, size and codec of a video file (from the cached timestamp table)."""
    return timestamp_table(path)[0]


def rgb_converter() -> Callable[[Any], np.ndarray]:
    """A function from a decoded PyAV frame to its RGB uint8 array (H, W, 3) that reuses one colour converter
    for every frame it is given (PyAV's `frame.to_ndarray()` builds a converter per frame)."""
    from av.video.reformatter import VideoReformatter

    to_rgb = VideoReformatter()
    return lambda frame: to_rgb.reformat(frame, format="rgb24").to_ndarray()


def _last_keyframe(keyframes: list[int], pts: int) -> int:
    """The timestamp of the last keyframe at or before `pts` (where a backward seek lands)."""
    k = bisect.bisect_right(keyframes, pts)
    return keyframes[k - 1] if k else -(2**62)


# Codecs whose decoders honour `skip_frame = NONREF` without losing the frames that are kept: the ones the
# exactness tests cover (tests/data/test_decoding.py). Inter-coded AV1 (libdav1d) lost wanted frames with it.
SKIP_NONREF_CODECS = frozenset({"h264", "vp9"})


def decode_wanted(
    path: Path,
    wanted: Sequence[int],
    table: Sequence[int],
    keyframes: Sequence[int],
    *,
    threads: int = 1,
    first: int = 0,
    convert: Callable[[Any], Any] | None = None,
    skip_nonref: bool = True,
) -> dict[int, Any]:
    """Frame number -> `convert(frame)` for the sorted, distinct frame numbers `wanted` of the file.

    `table` / `keyframes` are the timestamps of `demux_timestamps`. Seeks to the keyframe before each run of
    wanted frames and decodes forward, seeking again where a keyframe lies before the next wanted frame.
    With `skip_nonref`, one thread and a codec of SKIP_NONREF_CODECS, frames no other frame references and that are not wanted are not
    decoded (`skip_frame = NONREF` per packet; with decoder threads the setting would not apply to the packet
    just sent). `convert` defaults to `rgb_converter()`; `first` (a segment's first frame) only shifts the
    frame numbers named in error messages.
    """
    import av

    wanted = list(wanted)
    wanted_pts = {table[i]: i for i in wanted}
    found: dict[int, Any] = {}
    convert = convert or rgb_converter()
    skip_unwanted = skip_nonref and threads == 1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            codec = stream.codec_context
            codec.thread_count = threads
            skip_unwanted = skip_unwanted and codec.name in SKIP_NONREF_CODECS
            if threads != 1:
                stream.thread_type = "AUTO"
            next_wanted = 0
            while next_wanted < len(wanted):
                container.seek(table[wanted[next_wanted]], stream=stream, backward=True, any_frame=False)
                progressed, done = False, False
                for packet in container.demux(stream):
                    if skip_unwanted:
                        codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
                    for frame in codec.decode(packet):
                        if frame.pts is None:
                            continue
                        if frame.pts in wanted_pts:
                            found[wanted_pts[frame.pts]] = convert(frame)
                        while next_wanted < len(wanted) and wanted[next_wanted] in found:
                            next_wanted += 1
                            progressed = True
                        if next_wanted == len(wanted):
                            done = True
                            break
                        if frame.pts > table[wanted[next_wanted]]:  # decoder skipped a wanted frame
                            missing = wanted[next_wanted] - first
                            raise DecodeError(path, f"frame {missing} could not be decoded (corrupt stream?)")
                        # a keyframe lies between here and the next wanted frame: seeking skips the decode
                        if progressed and _last_keyframe(keyframes, table[wanted[next_wanted]]) > frame.pts:
                            done = True
                            break
                    if done:
                        break
                else:
                    if next_wanted < len(wanted):
                        missing = [i - first for i in wanted[next_wanted:]][:5]
                        raise DecodeError(path, f"stream ended before frames {missing} (truncated file?)")
                if skip_unwanted:
                    codec.skip_frame = "DEFAULT"
                if next_wanted < len(wanted):
                    codec.flush_buffers()  # frames held for reordering belong to the old position
    except DecodeError:
        raise
    except Exception as err:
        raise DecodeError(path, f"PyAV failed: {type(err).__name__}: {err}") from err
    return found


def read_pyav(path: Path, indices: Sequence[int], segment: Segment | None, threads: int) -> torch.Tensor:
    """Frames `indices` of the video `path` as uint8 (T, H, W, 3), in the order (and multiplicity) asked;
    each distinct frame is decoded once. `threads` = decoder threads (0 = auto)."""
    info, table, keyframes = timestamp_table(path)
    first, count = segment_range(path, info.fps, info.num_frames, segment)
    indices = validate_indices(path, indices, count)
    wanted = sorted({first + i for i in indices})
    found = decode_wanted(path, wanted, table, keyframes, threads=threads, first=first)
    return torch.from_numpy(np.stack([found[first + i] for i in indices]))
