"""Diving-48 with the V2 labels: download (resumable) or take local files, extract `rgb/<vid_name>.mp4`, index.

Files (in --source, fetched from --base-url when absent): `Diving48_rgb.tar.gz`, `Diving48_V2_train.json`,
`Diving48_V2_test.json` (records `vid_name, label, start_frame, end_frame`; a clip has end_frame + 1 frames)
and `Diving48_vocab.json` (class = its four parts joined with `+`, 48 classes). The V1 label files
(`Diving48_train.json`) are refused unless `--label-version v1` is given: V1 labels are noisy and the
published results (StructViT included) use V2. The official test list is written as val.csv and test.csv.

python -m data_prep.diving48 --source DIR --out DATA/diving48 [--base-url URL --workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from data_prep.common import Item, finish_index, parse_with_common_args
from data_prep.download import DownloadItem, download_many
from data_prep.extract import extract_downloads, safe_extract

log = logging.getLogger("data_prep.diving48")
ARCHIVE = "Diving48_rgb.tar.gz"
VOCAB = "Diving48_vocab.json"
LABEL_FILES = {
    "v2": ("Diving48_V2_train.json", "Diving48_V2_test.json"),
    "v1": ("Diving48_train.json", "Diving48_test.json"),
}


def parse_vocab(entries: list) -> list[str]:
    """`[["Back", "15som", "05Twis", "FREE"], ...]` -> `["Back+15som+05Twis+FREE", ...]`."""
    return ["+".join(str(part).strip() for part in entry) for entry in entries]


def parse_records(records: list[dict], num_classes: int, source: str) -> list[tuple[str, int, int]]:
    """(vid_name, label, num_frames = end_frame + 1) per record; labels are checked against the vocabulary."""
    rows = []
    for record in records:
        try:
            name, label, end = str(record["vid_name"]), int(record["label"]), int(record["end_frame"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: record {record} lacks vid_name/label/end_frame ({err})") from err
        if not 0 <= label < num_classes:
            raise ValueError(f"{source}: {name} has label {label}, outside 0..{num_classes - 1}")
        rows.append((name, label, end + 1))
    return rows


def check_label_version(source: Path, version: str) -> tuple[Path, Path]:
    """The train/test label files of `version`; V1 only on request, with the reason when refused."""
    train, test = (source / n for n in LABEL_FILES[version])
    if version == "v1":
        log.warning("using Diving-48 V1 labels: they are noisy; published results use V2")
    return train, test


def prepare(
    source: Path,
    out: Path,
    *,
    base_url: str | None = None,
    label_version: str = "v2",
    workers: int = 4,
    probe: bool = True,
    progress: bool = True,
) -> dict:
    """Fetch what is missing, extract the videos and index Diving-48 into `out`."""
    source, out = Path(source), Path(out)
    train_file, test_file = check_label_version(source, label_version)
    needed = [VOCAB, train_file.name, test_file.name]
    extracted = (out / "videos" / f".extracted-{ARCHIVE}").exists()
    if not extracted:
        needed.append(ARCHIVE)
    absent = [n for n in needed if not (source / n).is_file()]
    if (
        absent
        and label_version == "v2"
        and not base_url
        and all((source / n).is_file() for n in LABEL_FILES["v1"])
    ):
        raise FileNotFoundError(
            f"{source} has only the V1 label files ({', '.join(LABEL_FILES['v1'])}); V1 labels are noisy and "
            "papers report V2: download Diving48_V2_train.json / Diving48_V2_test.json, or pass --label-version v1"
        )
    if absent:
        if not base_url:
            raise FileNotFoundError(f"{source}: missing {absent}; give --base-url to download them")
        download_many(
            [DownloadItem(f"{base_url.rstrip('/')}/{n}", source / n) for n in absent],
            workers=workers,
            progress=progress,
        )
    classes = parse_vocab(json.loads((source / VOCAB).read_text(encoding="utf-8")))
    if len(classes) != 48:
        log.warning("%s has %d classes (Diving-48 has 48)", source / VOCAB, len(classes))
    if not extracted and base_url:  # a download that turns out truncated is fetched again, then reported
        extract_downloads(
            [(DownloadItem(f"{base_url.rstrip('/')}/{ARCHIVE}", source / ARCHIVE), out / "videos")]
        )
    elif not extracted:
        safe_extract(source / ARCHIVE, out / "videos", progress=progress)
    videos = out / "videos" / "rgb"
    rows = {
        split: parse_records(json.loads(path.read_text(encoding="utf-8")), len(classes), str(path))
        for split, path in (("train", train_file), ("test", test_file))
    }
    items = {}
    for split, split_rows in (("train", rows["train"]), ("val", rows["test"]), ("test", rows["test"])):
        items[split] = [
            Item(
                name,
                videos / f"{name}.mp4" if (videos / f"{name}.mp4").is_file() else None,
                label,
                num_frames=frames,
            )
            for name, label, frames in split_rows
        ]
    return finish_index(
        out,
        dataset="diving48",
        classes=classes,
        splits=items,
        version=f"diving48-{label_version}",
        probe=probe,
        workers=workers,
        progress=progress,
        extra={"label_version": label_version, "val_is_official_test": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.diving48", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="folder with (or for) the downloaded files"
    )
    parser.add_argument("--out", type=Path, required=True, help="index folder to create, e.g. data/diving48")
    parser.add_argument("--base-url", default=None, help="where to fetch missing files from")
    parser.add_argument(
        "--label-version", choices=("v2", "v1"), default="v2", help="v1 only if you must (noisy)"
    )
    args = parse_with_common_args(parser, argv)
    prepare(
        args.source,
        args.out,
        base_url=args.base_url,
        label_version=args.label_version,
        workers=args.workers,
        probe=not args.no_probe,
        progress=not args.quiet,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
