"""Something-Something V2: join the downloaded parts, extract the webm videos, index them by template class.

Input folder (SSV2_DIR): the parts `20bn-something-something-v2-00`, `-01`, ... (pieces of one tar.gz; an
already extracted `20bn-something-something-v2/` folder is used as it is) and the label files under either
naming: `labels/{labels,train,validation,test}.json` (+ optional `labels/test-answers.csv`) or
`something-something-v2-{labels,train,validation,test}.json`. The class of a video is
`labels[template without the brackets]`; the filled-in `label` field ("putting a pen on a table") is never used.
With `--transcode` the VP9 webm files are re-encoded to H.264 mp4 (faster seeking in training).

python -m data_prep.ssv2 --source SSV2_DIR --out DATA/ssv2 [--transcode --short-side 0 --workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from data_prep.common import Item, finish_index, parse_with_common_args, transcode_items
from data_prep.extract import safe_extract

log = logging.getLogger("data_prep.ssv2")
VIDEO_FOLDER = "20bn-something-something-v2"
SPLIT_FILES = {"labels": "labels", "train": "train", "val": "validation", "test": "test"}


def find_label_files(source: Path) -> dict[str, Path]:
    """The label files under either official naming; raises naming what is missing and where it looked."""
    source = Path(source)
    found = {}
    for key, stem in SPLIT_FILES.items():
        candidates = [
            source / "labels" / f"{stem}.json",
            source / f"something-something-v2-{stem}.json",
            source / "labels" / f"something-something-v2-{stem}.json",
            source / f"{stem}.json",
        ]
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found[key] = path
    answers = [source / "labels" / "test-answers.csv", source / "test-answers.csv"]
    if any(p.is_file() for p in answers):
        found["test_answers"] = next(p for p in answers if p.is_file())
    for key in ("labels", "train", "val"):
        if key not in found:
            raise FileNotFoundError(
                f"{source}: no SSv2 {SPLIT_FILES[key]} label file; expected labels/{SPLIT_FILES[key]}.json or "
                f"something-something-v2-{SPLIT_FILES[key]}.json (from the official download page)"
            )
    return found


def load_json(path: Path):
    """The official files mix CRLF/LF endings and may carry a BOM; json handles both once decoded."""
    return json.loads(Path(path).read_text(encoding="utf-8-sig"))


def parse_classes(labels: dict[str, str], source: str = "labels.json") -> list[str]:
    """Class names ordered by their index in labels.json (`{"Approaching something ...": "0", ...}`)."""
    by_index = {int(v): k for k, v in labels.items()}
    if sorted(by_index) != list(range(len(labels))):
        raise ValueError(f"{source}: class indices are not 0..{len(labels) - 1}")
    return [by_index[i] for i in range(len(labels))]


def template_class(template: str) -> str:
    """`Putting [something] on [something]` -> `Putting something on something` (the labels.json key)."""
    return template.replace("[", "").replace("]", "")


def parse_split(records: list[dict], label_of: dict[str, int], source: str) -> list[tuple[str, int]]:
    """(video id, label) per record; records without a template (test) get -1."""
    out = []
    for record in records:
        if "template" not in record:
            out.append((str(record["id"]), -1))
            continue
        name = template_class(record["template"])
        if name not in label_of:
            raise ValueError(
                f"{source}: video {record['id']} has template {record['template']!r}, not a class in labels.json"
            )
        out.append((str(record["id"]), label_of[name]))
    return out


def parse_test_answers(text: str, label_of: dict[str, int], source: str) -> dict[str, int]:
    """`id;class name` lines of test-answers.csv -> {id: label}."""
    answers = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        vid, _, name = line.strip().partition(";")
        if name not in label_of:
            raise ValueError(f"{source}:{n}: class {name!r} is not in labels.json")
        answers[vid] = label_of[name]
    return answers


def locate_videos(source: Path, out: Path, progress: bool) -> Path:
    """The folder holding `<id>.webm`: an extracted one in the source, or the parts extracted under `out`."""
    link = out / "videos" / VIDEO_FOLDER
    if (
        Path(source) / VIDEO_FOLDER
    ).is_dir():  # extracted by the user: link it so index paths stay inside out
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((Path(source) / VIDEO_FOLDER).resolve(), target_is_directory=True)
        return link
    if (out / "videos" / f".extracted-{VIDEO_FOLDER}").exists():  # done by an earlier run
        return out / "videos" / VIDEO_FOLDER
    parts = sorted(Path(source).glob(f"{VIDEO_FOLDER}-[0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(
            f"{source}: neither {VIDEO_FOLDER}/ nor the parts {VIDEO_FOLDER}-00, -01, ... were found"
        )
    log.info("extracting %d parts into %s", len(parts), out / "videos")
    safe_extract(parts, out / "videos", progress=progress)
    return out / "videos" / VIDEO_FOLDER


def prepare(
    source: Path,
    out: Path,
    *,
    workers: int = 4,
    probe: bool = True,
    transcode: bool = False,
    short_side: int = 0,
    gop: int = 16,
    progress: bool = True,
) -> dict:
    """Extract (if needed) and index SSv2 into `out`."""
    source, out = Path(source), Path(out)
    files = find_label_files(source)
    classes = parse_classes(load_json(files["labels"]), str(files["labels"]))
    label_of = {name: i for i, name in enumerate(classes)}
    splits = {
        s: parse_split(load_json(files[s]), label_of, str(files[s]))
        for s in ("train", "val", "test")
        if s in files
    }
    if "test" in splits and "test_answers" in files:
        answers = parse_test_answers(
            files["test_answers"].read_text(encoding="utf-8-sig"), label_of, str(files["test_answers"])
        )
        splits["test"] = [(vid, answers.get(vid, -1)) for vid, _ in splits["test"]]
    videos = locate_videos(source, out, progress)
    items = {
        split: [
            Item(vid, videos / f"{vid}.webm" if (videos / f"{vid}.webm").is_file() else None, label)
            for vid, label in rows
        ]
        for split, rows in splits.items()
    }
    failed = {}
    if transcode:
        for split, split_items in items.items():
            failed[split] = transcode_items(
                split_items, out / "mp4", short_side=short_side, gop=gop, workers=workers, progress=progress
            )
    return finish_index(
        out,
        dataset="ssv2",
        classes=classes,
        splits=items,
        version="something-something-v2",
        probe=probe,
        workers=workers,
        progress=progress,
        failed=failed,
        extra={"transcoded": transcode},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ssv2", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder with the parts and label files")
    parser.add_argument("--out", type=Path, required=True, help="index folder to create, e.g. data/ssv2")
    parser.add_argument("--transcode", action="store_true", help="re-encode VP9 webm to H.264 mp4")
    parser.add_argument(
        "--short-side", type=int, default=0, help="with --transcode: short side (0 keeps 240)"
    )
    parser.add_argument("--gop", type=int, default=16)
    args = parse_with_common_args(parser, argv)
    prepare(
        args.source,
        args.out,
        workers=args.workers,
        probe=not args.no_probe,
        transcode=args.transcode,
        short_side=args.short_side,
        gop=args.gop,
        progress=not args.quiet,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
