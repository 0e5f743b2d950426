"""Read exact frames of a video file with torchcodec, PyTorch's own FFmpeg-based decoder (optional backend).

`read_torchcodec` has the contract of `read_pyav` / `read_decord`: uint8 (T, H, W, 3) frames at
the video's own 0-based frame indices, `segment=(start, end)` seconds with indices counted from its first
frame, `DecodeError(path, reason)` for every failure. torchcodec's exact seek mode scans the file once, so
frame numbers are exact for variable frame rates too. It can also resize inside the decoder (`size`).

torchcodec is optional (`pip install -e '.[torchcodec]'`) and needs FFmpeg's shared libraries at run time;
it is imported on first use, never at import of this module. `torchcodec_available()` says whether it works.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from src.data.decoding.base import DecodeError, Segment, check_source, segment_range, validate_indices

INSTALL_HINT = (
    "pip install -e '.[torchcodec]' and install FFmpeg 4-7 shared libraries "
    "(Debian/Ubuntu: apt-get install ffmpeg; conda: conda install -c conda-forge ffmpeg)"
)

# Whether `size` is honoured (a Resize inside the decoder). Computed on first access: see __getattr__.
CAN_RESIZE: bool


@functools.cache
def _load_torchcodec() -> tuple[Any, str | None]:
    """(torchcodec's VideoDecoder class, None) when usable, else (None, the reason it is not)."""
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except ImportError as err:
        return None, f"torchcodec is not installed ({type(err).__name__}: {err})"
    except (RuntimeError, OSError) as err:  # older versions: FFmpeg or torch ABI mismatch fails the import
        return None, f"torchcodec cannot load ({type(err).__name__}: {err})"
    # newer versions (0.17 checked) import without FFmpeg and leave ffmpeg_major_version None instead
    if getattr(torchcodec, "ffmpeg_major_version", 0) is None:
        version = getattr(torchcodec, "__version__", "?")
        return None, f"torchcodec {version} found no usable FFmpeg shared libraries"
    return VideoDecoder, None


def torchcodec_available() -> str | None:
    """None when torchcodec and its FFmpeg libraries load, else the reason (for skips and error messages)."""
    return _load_torchcodec()[1]


def _video_decoder_class() -> Any:
    decoder_class, reason = _load_torchcodec()
    if decoder_class is None:
        raise RuntimeError(f"the torchcodec decode backend is unusable: {reason}; fix: {INSTALL_HINT}")
    return decoder_class


@functools.cache
def _decoder_parameters() -> frozenset[str]:
    return frozenset(inspect.signature(_video_decoder_class()).parameters)


@functools.cache
def _can_resize() -> bool:
    if torchcodec_available() is not None or "transforms" not in _decoder_parameters():
        return False
    try:
        from torchcodec.transforms import Resize  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name: str) -> Any:
    """`CAN_RESIZE` is computed lazily so that importing this module does not import torchcodec (slow)."""
    if name == "CAN_RESIZE":
        return _can_resize()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _decoder_options(threads: int, size: tuple[int, int] | None) -> dict[str, Any]:
    """Keyword arguments for VideoDecoder: exact seeking, NHWC, threads and resize where supported."""
    options: dict[str, Any] = {"seek_mode": "exact", "dimension_order": "NHWC"}
    if "num_ffmpeg_threads" in _decoder_parameters():
        options["num_ffmpeg_threads"] = threads  # 0 lets FFmpeg choose, as for the other backends
    if size is not None and _can_resize():
        from torchcodec.transforms import Resize

        options["transforms"] = [Resize(size)]
    return options


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(v) != v or v <= 0 for v in size):
        raise ValueError(f"size must be (height, width) in positive whole pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _average_fps(metadata: Any) -> float | None:
    """The stream's average frame rate as FFmpeg's avg_frame_rate (what PyAV and decord report).

    torchcodec's `average_fps_from_header` is FFmpeg's r_frame_rate (the base rate: 50 for a 22.4 fps
    average variable-rate mp4), so for containers that store a frame count (mp4, mov) the average is
    frames / duration from the header, as FFmpeg computes it; others use the header rate, then the scan.
    """
    frames, seconds = metadata.num_frames_from_header, metadata.duration_seconds_from_header
    if frames and seconds:
        return frames / seconds
    return metadata.average_fps_from_header or metadata.average_fps


def _frame_count(path: Path, metadata: Any) -> int:
    count = metadata.num_frames  # exact seek mode: counted by scanning the file, not read from the header
    if not count:
        raise DecodeError(path, "video stream holds no frames (truncated or corrupt file?)")
    return int(count)


def _open(path: Path, threads: int, size: tuple[int, int] | None, device: str = "cpu") -> Any:
    decoder_class = _video_decoder_class()
    options = _decoder_options(threads, size)
    if device != "cpu":  # NVDEC: torchcodec decodes on the GPU and returns frames there
        options["device"] = device
    try:
        return decoder_class(str(path), **options)
    except Exception as err:  # RuntimeError from FFmpeg, ValueError for a file without a video stream
        raise DecodeError(path, f"torchcodec cannot open it: {type(err).__name__}: {err}") from err


def read_torchcodec(
    path: Path,
    indices: Sequence[int],
    segment: Segment | None,
    threads: int,
    size: tuple[int, int] | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Frames `indices` of the video `path` as uint8 (T, H, W, 3), in the order (and multiplicity) asked.

    `segment` = (start, end) seconds restricts to that part of the file (indices count from its first
    frame). `threads` = FFmpeg decoder threads (0 = auto). `size` = (height, width) resizes inside the
    decoder (bilinear, antialiased) when `CAN_RESIZE`; otherwise frames come back at full size. Each
    distinct frame is decoded once. Raises MissingVideoError for a missing or empty file, DecodeError
    naming the file for any other failure, RuntimeError when torchcodec or FFmpeg cannot be loaded.
    `device="cuda"` decodes with the GPU's video decoder (NVDEC) and returns the frames on that GPU (what
    `make gpu-check` measures; the data loaders decode on the CPU).
    """
    path = check_source(path)
    size = _check_size(size)
    decoder = _open(path, threads, size, device)
    length = _frame_count(path, decoder.metadata)
    fps = _average_fps(decoder.metadata) if segment is not None else None
    first, count = segment_range(path, fps, length, segment)
    indices = validate_indices(path, indices, count)  # ValueError for none, DecodeError out of range
    wanted = sorted(set(indices))
    try:
        batch = decoder.get_frames_at([first + i for i in wanted]).data
    except Exception as err:  # RuntimeError from FFmpeg, IndexError past a truncated end, ...
        raise DecodeError(path, f"torchcodec failed: {type(err).__name__}: {err}") from err
    finally:
        del decoder  # one decoder per call, released at once (as the other backends do)
    position = {i: k for k, i in enumerate(wanted)}
    return batch[[position[i] for i in indices]]
