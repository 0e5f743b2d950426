"""Kinetics-400 from the public CVDF mirror layout: download (resumable), extract, index.

Mirror layout under BASE_URL (the default is the official S3 bucket; any mirror with the same layout works):
  {split}/k400_{split}_path.txt    one archive URL per line (part_N.tar.gz); only the file name is used and it is
                                   fetched from {BASE_URL}/{split}/, so a mirror need not rewrite the lists
  annotations/{split}.csv          label,youtube_id,time_start,time_end,split[,is_cc] (test may lack label)
  replacement_for_corrupted_k400.tgz   re-encoded copies of train videos that are corrupt in the parts
Files are `<youtube_id>_<start:06d>_<end:06d>.mp4`. Classes are the label names in alphabetical order.

python -m data_prep.kinetics --out DATA/k400 --base-url URL [--splits train val test --workers N]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from data_prep.common import Item, finish_index, parse_with_common_args, transcode_items
from data_prep.download import DownloadError, DownloadItem, download, download_many
from data_prep.extract import extract_downloads

log = logging.getLogger("data_prep.kinetics")
SPLITS = ("train", "val", "test")
REPLACEMENT = "replacement_for_corrupted_k400.tgz"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")


def video_name(youtube_id: str, start: float, end: float) -> str:
    """The file stem the mirror uses for one annotated clip."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def parse_annotations(text: str, source: str = "annotations") -> list[dict]:
    """Rows of a Kinetics CSV read by header name; `label` is None where the file has no label column."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    need = {"youtube_id", "time_start", "time_end"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise ValueError(
            f"{source}: header {reader.fieldnames} lacks {sorted(need)}; is this a Kinetics CSV?"
        )
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            rows.append(
                {
                    "label": (row.get("label") or "").strip() or None,
                    "youtube_id": row["youtube_id"].strip(),
                    "name": video_name(row["youtube_id"].strip(), row["time_start"], row["time_end"]),
                    "time_start": float(row["time_start"]),
                    "time_end": float(row["time_end"]),
                }
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}:{line}: cannot read row {row} ({err})") from err
    return rows


CANONICAL_CLASSES = Path(__file__).with_name(
    "k400_classes.txt"
)  # the 400 names of the official annotations, sorted


def canonical_classes() -> list[str]:
    """Kinetics-400's 400 class names in the official label order (alphabetical), shipped with data_prep."""
    return CANONICAL_CLASSES.read_text(encoding="utf-8").splitlines()


def class_list(annotations: dict[str, list[dict]]) -> list[str]:
    """All label names of the labelled splits, alphabetical (the names that occur, not the label order)."""
    return sorted({r["label"] for rows in annotations.values() for r in rows if r["label"] is not None})


def check_classes(annotations: dict[str, list[dict]], classes: list[str], source: str) -> list[str]:
    """Refuse label names outside Kinetics-400's list; return the canonical classes no annotation row uses."""
    found = class_list(annotations)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} label(s) not among Kinetics-400's 400 classes ({CANONICAL_CLASSES.name}): "
            + ", ".join(repr(u) for u in unknown[:10])
            + (" ..." if len(unknown) > 10 else "")
            + ". These are not Kinetics-400 annotations (Kinetics-600/700?), or the file is damaged"
        )
    return sorted(set(classes) - set(found))


def parse_url_list(text: str) -> list[str]:
    """Archive file names from a `k400_{split}_path.txt` (full URLs or bare names, blank lines ignored)."""
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(PurePosixPath(line.split("?", 1)[0]).name)
    return names


def find_videos(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for every video under `folder` (the parts may or may not nest folders)."""
    if not folder.exists():
        return {}
    found = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if path.suffix in VIDEO_SUFFIXES and not any(
            part.startswith(".") for part in rel
        ):  # skip temporaries
            found[path.stem] = path
    return found


def prepare(
    out: Path,
    base_url: str,
    *,
    splits: Sequence[str] = SPLITS,
    workers: int = 4,
    probe: bool = True,
    replacement: bool = True,
    delete_archives: bool = False,
    short_side: int = 0,
    gop: int = 16,
    progress: bool = True,
    retries: int = 5,
) -> dict:
    """Download, extract and index Kinetics-400 into `out`; re-running resumes and skips finished work."""
    out, base = Path(out), base_url.rstrip("/")
    downloads = out / "downloads"
    kw = {"retries": retries, "backoff": 1.0}
    annotations = {}
    for split in splits:
        path = download(
            DownloadItem(f"{base}/annotations/{split}.csv", downloads / "annotations" / f"{split}.csv"), **kw
        )
        annotations[split] = parse_annotations(path.read_text(encoding="utf-8"), str(path))
    # labels always index the canonical list: a partial mirror keeps the official label ids (and a K400 head)
    classes = canonical_classes()
    absent = check_classes(annotations, classes, str(downloads / "annotations"))
    if absent:
        log.warning(
            "%d of the 400 classes have no annotated video in %s (kept, with their official label ids): %s",
            len(absent),
            ", ".join(splits),
            ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else ""),
        )

    archives: dict[str, list[Path]] = {}
    items = []
    for split in splits:
        url_list = download(
            DownloadItem(
                f"{base}/{split}/k400_{split}_path.txt", downloads / split / f"k400_{split}_path.txt"
            ),
            **kw,
        )
        names = parse_url_list(url_list.read_text(encoding="utf-8"))
        archives[split] = [downloads / split / n for n in names]
        items += [DownloadItem(f"{base}/{split}/{n}", downloads / split / n) for n in names]
    pending = [it for it in items if not _extracted(out, it.dest)]
    download_many(pending, workers=workers, progress=progress, **kw)
    replacement_archive = downloads / "replacement" / REPLACEMENT
    if replacement and "train" in splits and not _extracted(out, replacement_archive):
        try:
            download(DownloadItem(f"{base}/{REPLACEMENT}", replacement_archive), **kw)
        except DownloadError as err:  # a mirror without it still gives a usable (slightly noisier) train set
            log.warning("%s; continuing without the replacement videos (or pass --no-replacement)", err)
            replacement = False

    jobs = [(item, out / "videos" / Path(item.dest).parent.name) for item in pending]
    if replacement and "train" in splits:
        jobs.append(
            (DownloadItem(f"{base}/{REPLACEMENT}", replacement_archive), out / "videos" / "replacement")
        )
    extract_downloads(jobs, delete_archives=delete_archives, **kw)

    split_items: dict[str, list[Item]] = {}
    label_of = {name: i for i, name in enumerate(classes)}
    for split in splits:
        videos = find_videos(out / "videos" / split)
        if split == "train" and replacement:
            videos.update(find_videos(out / "videos" / "replacement"))  # fixed copies win
        split_items[split] = [
            Item(
                r["name"],
                videos.get(r["name"]),
                label_of[r["label"]] if r["label"] is not None else -1,
                missing_reason="not in the downloaded archives (video was gone from YouTube when the mirror was made)",
            )
            for r in annotations[split]
        ]
    failed = {}
    if short_side:
        for split in splits:
            failed[split] = transcode_items(
                split_items[split],
                out / f"videos_{short_side}" / split,
                short_side=short_side,
                gop=gop,
                workers=workers,
                progress=progress,
            )
    return finish_index(
        out,
        dataset="k400",
        classes=classes,
        splits=split_items,
        version="kinetics-400 (CVDF mirror)",
        probe=probe,
        workers=workers,
        progress=progress,
        failed=failed,
        extra={"source": base, "classes_without_videos": absent},
    )


def _extracted(out: Path, archive: Path) -> bool:
    """True when an archive was already extracted (so a deleted archive is not fetched again)."""
    split = "replacement" if archive.name == REPLACEMENT else archive.parent.name
    return (out / "videos" / split / f".extracted-{archive.name}").exists()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.kinetics", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="index folder to create, e.g. data/k400")
    parser.add_argument("--base-url", default="https://s3.amazonaws.com/kinetics/400", help="mirror root")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--no-replacement", action="store_true", help="skip the replacement archive")
    parser.add_argument("--delete-archives", action="store_true", help="remove each part after extracting it")
    parser.add_argument(
        "--short-side", type=int, default=0, help="re-encode to this short side (0: keep files)"
    )
    parser.add_argument("--gop", type=int, default=16, help="keyframe interval when re-encoding")
    parser.add_argument("--retries", type=int, default=5)
    args = parse_with_common_args(parser, argv)
    if not re.match(r"^(https?|file)://", args.base_url):
        parser.error(f"--base-url {args.base_url!r} must start with http://, https:// or file://")
    prepare(
        args.out,
        args.base_url,
        splits=args.splits,
        workers=args.workers,
        probe=not args.no_probe,
        replacement=not args.no_replacement,
        delete_archives=args.delete_archives,
        short_side=args.short_side,
        gop=args.gop,
        progress=not args.quiet,
        retries=args.retries,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
