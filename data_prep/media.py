"""Per-video facts for the index (frame count, fps, size, codec), probed in parallel.

The probe is the data pipeline's own (`src.data.decoding.probe`: demuxed frame count, no decoding), so the
frame counts cached in the index are exactly the frame indices the loader will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from src.data.decoding import DecodeError, VideoInfo, probe


def probe_many(
    paths: Sequence[Path], *, workers: int = 4, progress: bool = True
) -> dict[Path, VideoInfo | str]:
    """Probe many videos with threads (PyAV releases the GIL); an unreadable one maps to its error text."""

    def one(path: Path) -> tuple[Path, VideoInfo | str]:
        try:
            return path, probe(path)
        except (DecodeError, OSError, ValueError) as err:
            return path, f"{type(err).__name__}: {err}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(
            tqdm(pool.map(one, paths), total=len(paths), desc="probe", unit="video", disable=not progress)
        )
    return dict(results)
