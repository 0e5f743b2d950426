"""Fixtures for the data tests: small real videos written once per session with PyAV."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.videos import write_test_frames, write_test_video

CLIP_FRAMES = 40


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 40-frame H.264 mp4, a VP9 webm and a JPEG-frame folder, 64x48, 25 fps."""
    root = tmp_path_factory.mktemp("media")
    write_test_video(root / "clip.mp4", CLIP_FRAMES, (48, 64), codec="h264", fps=25)
    write_test_video(root / "clip.webm", CLIP_FRAMES, (48, 64), codec="vp9", fps=25)
    write_test_frames(root / "frames", CLIP_FRAMES, (48, 64))
    return root


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """/work/shared/fixtures/real_annotations, found beside the repository; skips when absent."""
    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "real_annotations"
    if not path.is_dir():
        pytest.skip(f"shared fixtures not found at {path}")
    return path


def build_index(
    root: Path,
    *,
    train: int = 6,
    val: int = 5,
    test: int = 0,
    frames: int = 12,
    size: tuple[int, int] = (40, 48),
    classes: tuple[str, ...] = ("moving left", "moving right", "still"),
    broken: dict[str, list[str]] | None = None,
) -> Path:
    """A real index (src.data.index.write_index) over tiny H.264 clips, 3 classes, labels i % 3.

    `broken` maps a split to kinds of bad rows appended after the good ones: `zero` (0-byte file),
    `garbage` (random bytes), `truncated` (a clip cut short), `missing` (no file), `hang` (a FIFO: opening
    it blocks forever, a real hung decoder).
    """
    from src.data.index import IndexRow, write_index

    root.mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir(exist_ok=True)
    splits: dict[str, list[IndexRow]] = {}
    for split, count in (("train", train), ("val", val), ("test", test)):
        if count == 0 and not (broken or {}).get(split):
            continue
        rows = []
        for i in range(count):
            rel = f"videos/{split}_{i:03d}.mp4"
            write_test_video(root / rel, frames, size, fps=25)
            rows.append(IndexRow(rel, i % len(classes)))
        for j, kind in enumerate((broken or {}).get(split, [])):
            rel = f"videos/{split}_bad_{j}_{kind}.mp4"
            path = root / rel
            if kind == "zero":
                path.touch()
            elif kind == "garbage":
                path.write_bytes(bytes(range(256)) * 40)
            elif kind == "truncated":
                write_test_video(path, frames, size, fps=25)
                path.write_bytes(path.read_bytes()[:700])
            elif kind == "hang":
                import os

                os.mkfifo(path)
            elif kind != "missing":
                raise ValueError(kind)
            rows.append(IndexRow(rel, 0))
        splits[split] = rows
    write_index(root, dataset="tiny", classes=list(classes), splits=splits, version="test")
    return root


def release_fifos(root: Path) -> None:
    """Unblock readers stuck on the FIFOs of an index (open for writing without blocking, then close)."""
    import os
    import stat

    for path in (root / "videos").iterdir():
        if stat.S_ISFIFO(path.stat().st_mode):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
