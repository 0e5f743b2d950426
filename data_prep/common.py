"""Shared steps of every `python -m data_prep.<dataset>`: command-line options, optional transcode, probing
the found videos into index rows, and the per-split report of what is missing or failed."""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.media import probe_many
from data_prep.transcode import TranscodeJob, transcode_many
from src.data.decoding import VideoInfo
from src.data.index import IndexRow, write_index

log = logging.getLogger("data_prep")


@dataclass
class Item:
    """One annotated video of a split: its id, where it is on disk (None when not found) and its label."""

    id: str
    path: Path | None
    label: int
    start: float | None = None
    end: float | None = None
    num_frames: int | None = None
    missing_reason: str = "video file not found"
    extra: dict = field(default_factory=dict)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every preparation command has."""
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes/threads")
    parser.add_argument("--no-probe", action="store_true", help="skip caching num_frames/fps in the index")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_with_common_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Add the common options, parse `argv` and set up logging: the start of every preparation command."""
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    return args


def setup_logging(quiet: bool = False) -> None:
    """Plain messages on stderr, one line each."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def transcode_items(
    items: Sequence[Item], out_dir: Path, *, short_side: int, gop: int, workers: int, progress: bool
) -> dict[Path, str]:
    """Re-encode every found item into `out_dir/<id>.mp4` (skipping finished ones); repoint items there.

    Returns {id: reason} for the items whose transcode failed (their path becomes None).
    """
    jobs = {
        it.id: TranscodeJob(it.path, out_dir / f"{it.id}.mp4", it.start, it.end) for it in items if it.path
    }
    _, failed = transcode_many(
        list(jobs.values()), workers=workers, progress=progress, short_side=short_side, gop=gop
    )
    failures: dict[str, str] = {}
    for it in items:
        job = jobs.get(it.id)
        if job is None:
            continue
        if job.dst in failed:
            failures[it.id] = failed[job.dst]
            it.path = None
        else:
            it.path, it.start, it.end = job.dst, None, None  # the trimmed clip is the whole file now
    return failures


def probe_summary(infos: Mapping[Path, VideoInfo | str]) -> dict:
    """Counts of the probed videos by codec, size and fps (the per-video numbers are in the CSVs)."""
    good = [i for i in infos.values() if isinstance(i, VideoInfo)]
    top = lambda values: dict(Counter(values).most_common(10))  # noqa: E731
    return {
        "probed": len(infos),
        "codecs": top(i.codec for i in good),
        "sizes": top(f"{i.width}x{i.height}" for i in good),
        "fps": top(str(round(i.fps, 3)) if i.fps else "frames" for i in good),
    }


def finish_index(
    out_dir: Path,
    *,
    dataset: str,
    classes: Sequence[str],
    splits: Mapping[str, Sequence[Item]],
    version: str,
    probe: bool,
    workers: int,
    progress: bool,
    failed: Mapping[str, Mapping[str, str]] | None = None,
    extra: Mapping | None = None,
) -> dict:
    """Probe the found videos, drop unreadable ones, write the index and log a per-split summary."""
    out_dir = Path(out_dir)
    found = sorted({it.path for items in splits.values() for it in items if it.path is not None})
    infos: dict[Path, VideoInfo | str] = (
        probe_many(found, workers=workers, progress=progress) if probe else {}
    )
    rows: dict[str, list[IndexRow]] = {}
    missing: dict[str, list[dict]] = {}
    failures: dict[str, list[dict]] = {}
    for split, items in splits.items():
        split_failed = dict((failed or {}).get(split, {}))
        rows[split], missing[split] = [], []
        failures[split] = [{"id": k, "reason": v} for k, v in split_failed.items()]
        for it in items:
            if it.path is None:
                if it.id not in split_failed:
                    missing[split].append({"id": it.id, "reason": it.missing_reason})
                continue
            info = infos.get(it.path)
            if isinstance(info, str):
                failures[split].append({"id": it.id, "reason": f"unreadable: {info}"})
                continue
            num_frames = it.num_frames if it.num_frames is not None else (info.num_frames if info else None)
            fps = info.fps if info and info.fps else None
            rel = os.path.relpath(it.path, out_dir).replace(os.sep, "/")
            rows[split].append(IndexRow(rel, it.label, it.start, it.end, num_frames, fps))
    manifest = write_index(
        out_dir,
        dataset=dataset,
        classes=classes,
        splits=rows,
        version=version,
        missing=missing,
        failed=failures,
        extra={**(extra or {}), "probe": probe_summary(infos)},
    )
    for split, items in splits.items():
        n, m, f = len(items), len(missing[split]), len(failures[split])
        pct = 100.0 * m / n if n else 0.0
        log.info(
            "%s %s: %d listed, %d indexed, %d missing (%.1f%%), %d failed",
            dataset,
            split,
            n,
            len(rows[split]),
            m,
            pct,
            f,
        )
    print(
        f"{dataset}: wrote {out_dir} | "
        + " | ".join(
            f"{s}: {manifest['counts'][s]} indexed, {manifest['missing_counts'][s]} missing, {manifest['failed_counts'][s]} failed"
            for s in rows
        )
    )
    return manifest
