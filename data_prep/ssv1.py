"""Something-Something V1: JPEG frame folders `<id>/00001.jpg ...` indexed with the official CSV lists.

Input folder (SSV1_DIR): `20bn-something-something-v1/` (or its downloaded parts `20bn-something-something-v1-??`,
pieces of one tar.gz), `something-something-v1-labels.csv` (one class name per line; names may contain commas,
so it is read by lines, not as CSV; the line number is the label), and
`something-something-v1-{train,validation,test}.csv` (`id;class name`, test: `id`). Index rows point at frame
folders; num_frames is the number of JPEGs.

python -m data_prep.ssv1 --source SSV1_DIR --out DATA/ssv1 [--workers N]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from data_prep.common import Item, finish_index, parse_with_common_args
from data_prep.extract import safe_extract

log = logging.getLogger("data_prep.ssv1")
FRAME_FOLDER = "20bn-something-something-v1"
SPLIT_FILES = {"train": "train", "val": "validation", "test": "test"}


def read_lines(path: Path) -> list[str]:
    """Non-empty lines without line endings or a BOM."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def parse_classes(lines: Sequence[str]) -> list[str]:
    """One class per line, in file order; a duplicate is an error (it would make labels ambiguous)."""
    seen = set()
    for name in lines:
        if name in seen:
            raise ValueError(f"class {name!r} appears twice in the SSv1 labels file")
        seen.add(name)
    return list(lines)


def parse_split(lines: Sequence[str], label_of: dict[str, int], source: str) -> list[tuple[str, int]]:
    """`id;class name` (or a bare `id` in the test list) -> (id, label or -1)."""
    rows = []
    for n, line in enumerate(lines, start=1):
        vid, sep, name = line.partition(";")
        if not sep:
            rows.append((vid.strip(), -1))
            continue
        if name not in label_of:
            raise ValueError(f"{source}:{n}: class {name!r} is not in the labels file")
        rows.append((vid.strip(), label_of[name]))
    return rows


def locate_frames(source: Path, out: Path, progress: bool) -> Path:
    """The folder of `<id>/` frame folders: linked from the source, or extracted from the parts into `out`."""
    link = out / "frames" / FRAME_FOLDER
    if (source / FRAME_FOLDER).is_dir():
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((source / FRAME_FOLDER).resolve(), target_is_directory=True)
        return link
    if (out / "frames" / f".extracted-{FRAME_FOLDER}").exists():
        return link
    parts = sorted(source.glob(f"{FRAME_FOLDER}-[0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(
            f"{source}: neither {FRAME_FOLDER}/ nor the parts {FRAME_FOLDER}-00, -01, ... were found"
        )
    safe_extract(parts, out / "frames", progress=progress)
    return link


def prepare(source: Path, out: Path, *, workers: int = 4, probe: bool = True, progress: bool = True) -> dict:
    """Index SSv1 frame folders into `out`."""
    source, out = Path(source), Path(out)
    labels_file = source / "something-something-v1-labels.csv"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file} not found; it comes with the official SSv1 download")
    classes = parse_classes(read_lines(labels_file))
    label_of = {name: i for i, name in enumerate(classes)}
    splits = {}
    for split, stem in SPLIT_FILES.items():
        path = source / f"something-something-v1-{stem}.csv"
        if path.is_file():
            splits[split] = parse_split(read_lines(path), label_of, str(path))
        elif split != "test":
            raise FileNotFoundError(f"{path} not found; it comes with the official SSv1 download")
    frames = locate_frames(source, out, progress)
    items = {
        split: [Item(vid, frames / vid if (frames / vid).is_dir() else None, label) for vid, label in rows]
        for split, rows in splits.items()
    }
    return finish_index(
        out,
        dataset="ssv1",
        classes=classes,
        splits=items,
        version="something-something-v1",
        probe=probe,
        workers=workers,
        progress=progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ssv1", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="folder with the frames (or parts) and CSVs"
    )
    parser.add_argument("--out", type=Path, required=True, help="index folder to create, e.g. data/ssv1")
    args = parse_with_common_args(parser, argv)
    prepare(args.source, args.out, workers=args.workers, probe=not args.no_probe, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
