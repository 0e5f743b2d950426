"""What every decode backend shares: the errors, `VideoInfo`, the checks of a source and of the frame indices
asked for, and the arithmetic from a segment in seconds to a range of frames.

A backend reads frames at the video's own 0-based frame indices; with `segment=(start, end)` seconds the
indices count from the segment's first frame. Every failure is a `DecodeError(path, reason)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("decord", "pyav")  # always installed; the first is the default (the design's decoder)
OPTIONAL_BACKENDS = ("torchcodec",)  # the [torchcodec] extra plus FFmpeg's shared libraries
ALL_BACKENDS = BACKENDS + OPTIONAL_BACKENDS
# the decoder tried after a backend failed twice: a second, independent implementation
FALLBACK = {"pyav": "decord", "decord": "pyav", "torchcodec": "pyav"}


class DecodeError(RuntimeError):
    """A video could not be decoded; `path` names the file and `reason` says why.

    `retryable`: whether another attempt (the same decoder again, or the other one) may succeed. The
    subclasses below are the failures that another attempt cannot fix.
    """

    retryable = True

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))


class MissingVideoError(DecodeError):
    """The file is not there, or is empty: no decoder can read it."""

    retryable = False


class DecodeTimeoutError(DecodeError):
    """Probing or decoding took longer than `decode_timeout` (a stalled mount, a FIFO, a decoder loop)."""

    retryable = False


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` finds: frame count, frames per second (None for JPEG folders), size and codec."""

    num_frames: int
    fps: float | None
    width: int
    height: int
    codec: str


Segment = tuple[float | None, float | None]


def check_source(source: str | Path) -> Path:
    """`source` as a Path; MissingVideoError when it does not exist or is an empty file."""
    path = Path(source)
    if not path.exists():
        raise MissingVideoError(path, "file does not exist (check the index path and the data root)")
    if path.is_file() and path.stat().st_size == 0:
        raise MissingVideoError(path, "file is empty (0 bytes): re-download or quarantine it")
    return path


def segment_range(path: Path, fps: float | None, num_frames: int, segment: Segment | None) -> tuple[int, int]:
    """First frame and frame count of `segment=(start, end)` seconds (end None = to the end) of a source with
    `num_frames` frames at `fps`; the whole source for `segment=None`. DecodeError when the source has no
    frame rate or the segment holds no frame."""
    if segment is None:
        return 0, num_frames
    if not fps:
        raise DecodeError(path, "a segment (start, end) needs a frame rate, and this source has none")
    start, end = segment
    first = max(0, int(round((start or 0.0) * fps)))
    last = num_frames if end is None else min(num_frames, int(round(end * fps)))
    if last <= first:
        raise DecodeError(
            path, f"segment {segment} s holds no frames (video has {num_frames} at {fps:g} fps)"
        )
    return first, last - first


def validate_indices(path: Path, indices: Sequence[int], length: int) -> list[int]:
    """`indices` as ints; ValueError when none is asked, DecodeError when one lies outside 0..length-1."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"read_frames({path}): no frame indices requested")
    bad = [i for i in indices if not 0 <= i < length]
    if bad:
        raise DecodeError(path, f"frame indices {bad[:5]} outside 0..{length - 1}")
    return indices
