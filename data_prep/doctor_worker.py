"""What the doctor runs inside each worker subprocess: probe a video and decode three of its frames.

Kept apart from `data_prep.doctor` so the worker server can import it (and the decoders) once, without the
command-line module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    """One video to check: its path as written in the index, and an optional (start, end) segment in seconds."""

    path: str
    segment: tuple[float | None, float | None] | None = None


def _check_one(root: str, check: Check, backend: str) -> dict:
    """Runs in the worker: probe, then decode first/middle/last frame. Returns facts or {'error': reason}."""
    from src.data.decoding import DecodeError, probe, read_frames

    path = Path(root) / check.path
    try:
        info = probe(path)
        n = info.num_frames
        if check.segment is not None and info.fps:
            start, end = check.segment
            n = min(n, int(round(((end if end is not None else n / info.fps) - (start or 0.0)) * info.fps)))
        if n <= 0:
            return {"error": "no frames in the video or its segment"}
        frames = read_frames(path, sorted({0, n // 2, n - 1}), backend, segment=check.segment)
        if frames.ndim != 4 or frames.shape[0] == 0:
            return {"error": f"decoder returned frames of shape {tuple(frames.shape)}"}
        return {
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "fps": round(info.fps, 3) if info.fps else None,
            "num_frames": info.num_frames,
        }
    except DecodeError as err:
        return {"error": err.reason}
    except Exception as err:  # anything else a broken file provokes is a finding, not a doctor crash
        return {"error": f"{type(err).__name__}: {err}"}


def worker_loop(conn, root: str, backend: str) -> None:
    """Answer check requests from the pipe until it closes or sends None."""
    while True:
        try:
            check = conn.recv()
        except EOFError:
            return
        if check is None:
            return
        conn.send(_check_one(root, check, backend))
