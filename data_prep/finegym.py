"""FineGym (Gym99 / Gym288): trim element clips out of full-length source videos, index both class sets.

Inputs: --videos, a folder of full-length source videos named `<youtube_id>.mp4` (.mkv/.webm too);
--annotations, the official `finegym_annotation_info_v1.1.json` (or v1.0), `gym99_categories.txt`,
`gym288_categories.txt` and the element split files `gym{99,288}_{train,val}_element*.txt` (`<element id> <Clabel>`).

Two-level timestamps: an event has absolute times in its source video, an element has times relative to its
event; the clip is [event start + element start, event start + element end]. The integer seconds inside the ids
(`E_002407_002435`, `A_0003_0005`) are rounded and are never used. A vault element has three stages and is kept
as one clip from the first stage's start to the last stage's end. Events with `segments: null` are skipped and
counted. Clips are re-encoded (stream copy cuts at keyframes and gives broken clips) once into
`<out>/finegym/clips/` and hard-linked into `<out>/gym99/clips/` and `<out>/gym288/clips/`.

python -m data_prep.finegym --videos DIR --annotations DIR --out DATA [--short-side 320 --workers N --download]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_prep.common import Item, finish_index, parse_with_common_args
from data_prep.transcode import TranscodeJob, transcode_many

log = logging.getLogger("data_prep.finegym")
ELEMENT_ID = re.compile(r"^(?P<video>.+)_(?P<event>E_\d+_\d+)_(?P<element>A_\d+_\d+)$")
CATEGORY = re.compile(r"^\s*Clabel:\s*(\d+)\s*;\s*set:\s*(\d+)\s*;\s*Glabel:\s*(\d+)\s*;\s*(.*?)\s*$")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm")


@dataclass(frozen=True)
class Element:
    """One element: its source video, absolute [start, end] seconds in it, and its number of stages."""

    id: str
    video: str
    start: float
    end: float
    stages: int


def parse_categories(text: str, source: str = "categories") -> list[str]:
    """`Clabel: 0; set: 1; Glabel: 1; (VT) round-off, ...` lines -> names indexed by Clabel."""
    by_label = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = CATEGORY.match(line)
        if not match:
            raise ValueError(f"{source}:{n}: not a 'Clabel: N; set: N; Glabel: N; name' line: {line!r}")
        by_label[int(match.group(1))] = match.group(4)
    if sorted(by_label) != list(range(len(by_label))):
        raise ValueError(f"{source}: Clabels are not 0..{len(by_label) - 1}")
    return [by_label[i] for i in range(len(by_label))]


def parse_split(text: str, num_classes: int, source: str = "split") -> list[tuple[str, int]]:
    """`<element id> <Clabel>` lines -> (element id, label)."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not ELEMENT_ID.match(parts[0]) or not parts[1].isdigit():
            raise ValueError(
                f"{source}:{n}: expected '<video>_E_xxxxxx_xxxxxx_A_xxxx_xxxx <Clabel>', got {line!r}"
            )
        if int(parts[1]) >= num_classes:
            raise ValueError(f"{source}:{n}: Clabel {parts[1]} is outside 0..{num_classes - 1}")
        rows.append((parts[0], int(parts[1])))
    return rows


def parse_annotations(tree: dict) -> tuple[dict[str, Element], list[str]]:
    """All elements with absolute times, and the ids of events skipped because their segments are null."""
    elements: dict[str, Element] = {}
    skipped: list[str] = []
    for video, events in tree.items():
        for event_id, event in events.items():
            if not event.get("segments"):
                skipped.append(f"{video}_{event_id}")
                continue
            event_start = float(event["timestamps"][0][0])
            for element_id, element in event["segments"].items():
                stamps = element["timestamps"]  # relative to the event; a vault has three stages
                key = f"{video}_{event_id}_{element_id}"
                elements[key] = Element(
                    key,
                    video,
                    event_start + float(stamps[0][0]),
                    event_start + float(stamps[-1][1]),
                    int(element.get("stages", len(stamps))),
                )
    return elements, skipped


def find_file(folder: Path, patterns: Sequence[str]) -> Path:
    """The first existing file among `patterns` in `folder`; raises listing what was looked for."""
    for pattern in patterns:
        path = folder / pattern
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{folder}: none of {list(patterns)} found; get them from the FineGym project page"
    )


def download_sources(video_ids: Sequence[str], videos: Path) -> None:
    """Fetch missing source videos with yt-dlp when it is installed (optional; many are no longer online)."""
    tool = shutil.which("yt-dlp")
    if tool is None:
        raise FileNotFoundError(
            "--download needs the yt-dlp program on PATH (pip install yt-dlp); it is optional"
        )
    videos.mkdir(parents=True, exist_ok=True)
    for vid in video_ids:
        if not any((videos / f"{vid}{s}").exists() for s in VIDEO_SUFFIXES):
            subprocess.run([tool, "-f", "mp4", "-o", str(videos / "%(id)s.%(ext)s"), "--", vid], check=False)


def _link(src: Path, dst: Path) -> None:
    """Hard-link a finished clip into an index folder (copy when the file system cannot link)."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare(
    videos: Path,
    annotations: Path,
    out: Path,
    *,
    short_side: int = 320,
    gop: int = 16,
    workers: int = 4,
    probe: bool = True,
    progress: bool = True,
    download: bool = False,
) -> dict[str, dict]:
    """Trim and index Gym99 and Gym288 into `out/gym99` and `out/gym288`; returns both manifests."""
    videos, annotations, out = Path(videos), Path(annotations), Path(out)
    tree_file = find_file(
        annotations, ["finegym_annotation_info_v1.1.json", "finegym_annotation_info_v1.0.json"]
    )
    elements, skipped = parse_annotations(json.loads(tree_file.read_text(encoding="utf-8")))
    log.info("%d elements; %d events skipped (segments: null)", len(elements), len(skipped))
    skipped_events = set(skipped)
    sets = {}
    for name, n in (("gym99", 99), ("gym288", 288)):
        classes = parse_categories(
            find_file(annotations, [f"{name}_categories.txt"]).read_text(encoding="utf-8"),
            f"{name}_categories.txt",
        )
        if len(classes) != n:
            log.warning("%s has %d classes (expected %d)", name, len(classes), n)
        splits = {}
        for split, patterns in (
            ("train", [f"{name}_train_element_v1.1.txt", f"{name}_train_element.txt"]),
            ("val", [f"{name}_val_element.txt", f"{name}_val_element_v1.1.txt"]),
        ):
            path = find_file(annotations, patterns)
            splits[split] = parse_split(path.read_text(encoding="utf-8"), len(classes), str(path))
        sets[name] = (classes, splits)

    wanted = sorted({eid for _, splits in sets.values() for rows in splits.values() for eid, _ in rows})
    if download:
        download_sources(sorted({elements[e].video for e in wanted if e in elements}), videos)
    sources = {p.stem: p for p in videos.iterdir() if p.suffix in VIDEO_SUFFIXES} if videos.is_dir() else {}
    clips = out / "finegym" / "clips"
    reasons: dict[str, str] = {}
    jobs = []
    for eid in wanted:
        element = elements.get(eid)
        if element is None:
            match = ELEMENT_ID.match(eid)
            event = f"{match.group('video')}_{match.group('event')}"
            reasons[eid] = (
                "its event has no segment annotation (segments: null)"
                if event in skipped_events
                else f"not in {tree_file.name}"
            )
        elif element.video not in sources:
            reasons[eid] = f"source video {element.video} not in {videos}"
        else:
            jobs.append(
                TranscodeJob(sources[element.video], clips / f"{eid}.mp4", element.start, element.end)
            )
    _, failed = transcode_many(jobs, workers=workers, progress=progress, short_side=short_side, gop=gop)
    failed_ids = {Path(dst).stem: reason for dst, reason in failed.items()}

    manifests = {}
    for name, (classes, splits) in sets.items():
        index_dir = out / name
        items: dict[str, list[Item]] = {}
        for split, rows in splits.items():
            items[split] = []
            for eid, label in rows:
                path = None
                if eid not in reasons and eid not in failed_ids:
                    path = index_dir / "clips" / f"{eid}.mp4"
                    _link(clips / f"{eid}.mp4", path)
                items[split].append(
                    Item(eid, path, label, missing_reason=reasons.get(eid, "video file not found"))
                )
        failed_split = {
            split: {e: failed_ids[e] for e, _ in rows if e in failed_ids} for split, rows in splits.items()
        }
        manifests[name] = finish_index(
            index_dir,
            dataset=name,
            classes=classes,
            splits=items,
            version=f"finegym {tree_file.stem}",
            probe=probe,
            workers=workers,
            progress=progress,
            failed=failed_split,
            extra={"skipped_events_null_segments": len(skipped), "short_side": short_side},
        )
    return manifests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.finegym", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--videos", type=Path, required=True, help="folder of full-length <youtube_id>.mp4 videos"
    )
    parser.add_argument(
        "--annotations", type=Path, required=True, help="folder of the official annotation files"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="data root: writes gym99/, gym288/, finegym/clips/"
    )
    parser.add_argument("--short-side", type=int, default=320)
    parser.add_argument("--gop", type=int, default=16)
    parser.add_argument("--download", action="store_true", help="fetch missing source videos with yt-dlp")
    args = parse_with_common_args(parser, argv)
    prepare(
        args.videos,
        args.annotations,
        args.out,
        short_side=args.short_side,
        gop=args.gop,
        workers=args.workers,
        probe=not args.no_probe,
        progress=not args.quiet,
        download=args.download,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
