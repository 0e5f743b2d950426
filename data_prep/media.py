"""Cheap per-video facts for the index (frame count, fps, size, codec), read from container headers.

The index caches these so the loader need not open every file to plan clips. Demuxing (no decoding) is the
fallback when a container does not store its frame count (webm). Frame folders count their JPEGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
from tqdm import tqdm

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class MediaInfo:
    """Header facts of one video (or frame folder)."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str


def probe_video(path: Path) -> MediaInfo:
    """Read the frame count, rate, size and codec of a video file or frame folder; raises on unreadable input."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not frames:
            raise ValueError(f"{path}: frame folder has no JPEG/PNG frames")
        with av.open(str(frames[0])) as c:
            s = c.streams.video[0]
            return MediaInfo(len(frames), 0.0, s.codec_context.width, s.codec_context.height, "jpeg")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames = stream.frames
        if not frames:
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        return MediaInfo(
            int(frames),
            float(rate) if rate else 0.0,
            stream.codec_context.width,
            stream.codec_context.height,
            stream.codec_context.name,
        )


def probe_many(
    paths: Sequence[Path], *, workers: int = 4, progress: bool = True
) -> dict[Path, MediaInfo | str]:
    """Probe many videos with threads (PyAV releases the GIL); an unreadable one maps to its error text."""

    def one(path: Path) -> tuple[Path, MediaInfo | str]:
        try:
            return path, probe_video(path)
        except (av.error.FFmpegError, ValueError, OSError, IndexError) as err:
            return path, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(
            tqdm(pool.map(one, paths), total=len(paths), desc="probe", unit="video", disable=not progress)
        )
    return dict(results)
