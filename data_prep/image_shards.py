"""Write tar shards of a prepared ImageNet-layout folder: `python -m data_prep.image_shards ROOT [--shard-size N]`.

ROOT/shards/ gets train-000000.tar ... and val-000000.tar ... (WebDataset style: per image "<key>.jpg" -- or
".png" for a .png file -- holding the file's bytes unchanged, and "<key>.cls" holding the label as text) plus
shards.json (split counts, each shard's file and count, the folder's fingerprint, the classes.txt and
quarantine.txt digests). Training images are shuffled (seeded) across the shards, so a loader's shuffle
buffer mixes classes; val keeps the folder's order. Quarantined files are left out. Everything is written into
a temporary folder that replaces ROOT/shards only when complete; existing shards are kept unless --overwrite.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import posixpath
import shutil
import sys
import tarfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from src import __version__
from src.data.image_datasets import (
    SHARDS_DIR,
    SHARDS_FORMAT,
    SHARDS_JSON,
    SPLITS,
    ImageEntry,
    classes_text,
    folder_fingerprint,
    list_split,
    missing_root_error,
    quarantine_digest,
    select,
    sha256_text,
)
from src.data.index import IndexContractError, read_classes, read_quarantine

log = logging.getLogger("data_prep.image_shards")


class ShardWriteError(ValueError):
    """The shards cannot be written (no prepared folder, shards already there); the message says the fix."""


def member_key(entry: ImageEntry, used: set[str]) -> str:
    """The sample key of `entry`: its path inside the split folder less the suffix ("n01440764/x"), dots of
    the name made "_" (a key ends at the first dot of its last component), made unique within the split."""
    folder, name = posixpath.split(entry.relpath.split("/", 1)[1])
    stem = name.rsplit(".", 1)[0].replace(".", "_") or "_"
    base = posixpath.join(folder, stem)
    key, n = base, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no clock or owner: same input, same bytes
    tar.addfile(info, io.BytesIO(data))


def write_split(
    entries: Sequence[ImageEntry], split: str, out: Path, shard_size: int
) -> tuple[list[dict], list[dict]]:
    """Write `entries` in order into `<split>-NNNNNN.tar` files of `shard_size` samples; returns (the shards
    as {"file", "count"}, the files that could not be read as {"path", "reason"})."""
    shards: list[dict] = []
    unreadable: list[dict] = []
    used: set[str] = set()
    tar, count = None, 0
    for entry in entries:
        try:
            data = entry.path.read_bytes()
        except OSError as err:
            unreadable.append({"path": entry.relpath, "reason": err.strerror or str(err)})
            continue
        if tar is None:
            name = f"{split}-{len(shards):06d}.tar"
            tar, count = tarfile.open(out / name, mode="w", format=tarfile.PAX_FORMAT), 0
            shards.append({"file": name, "count": 0})
        key = member_key(entry, used)
        extension = "png" if entry.path.suffix.lower() == ".png" else "jpg"
        _add(tar, f"{key}.{extension}", data)
        _add(tar, f"{key}.cls", str(entry.label).encode("ascii"))
        count += 1
        shards[-1]["count"] = count
        if count == shard_size:
            tar.close()
            log.info("%s: %s (%d images)", out.parent, shards[-1]["file"], count)
            tar = None
    if tar is not None:
        tar.close()
        log.info("%s: %s (%d images)", out.parent, shards[-1]["file"], count)
    return shards, unreadable


def write_shards(root: Path, *, shard_size: int = 1000, seed: int = 0, overwrite: bool = False) -> dict:
    """Write ROOT/shards from the prepared folder at `root`; returns shards.json's content."""
    root = Path(root)
    if shard_size < 1:
        raise ShardWriteError(f"--shard-size must be >= 1, got {shard_size}")
    if not (root / "classes.txt").is_file():
        raise missing_root_error(root / "classes.txt")
    out = root / SHARDS_DIR
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShardWriteError(
            f"{out} already holds {len(list(out.iterdir()))} files; pass --overwrite to replace the shards"
        )
    classes = read_classes(root)
    lists = {split: list_split(root, split, classes) for split in SPLITS}
    quarantine = read_quarantine(root)
    tmp = root / f".{SHARDS_DIR}-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        splits = {}
        for split in SPLITS:
            entries = select(lists[split], quarantine, None, root / split)
            if split == "train":  # shuffled once here, so that every shard holds every class
                entries = [entries[i] for i in np.random.default_rng(seed).permutation(len(entries))]
            shards, unreadable = write_split(entries, split, tmp, shard_size)
            for item in unreadable:
                log.warning("%s: left out %s (%s)", root, item["path"], item["reason"])
            splits[split] = {
                "count": sum(s["count"] for s in shards),
                "quarantined": len(lists[split]) - len(entries),
                "unreadable": unreadable,
                "shards": shards,
            }
        meta = {
            "format": SHARDS_FORMAT,
            "fingerprint": folder_fingerprint(root, classes, lists),
            "num_classes": len(classes),
            "classes_sha256": sha256_text(classes_text(root)),
            "quarantine_sha256": quarantine_digest(root),
            "shard_size": shard_size,
            "seed": seed,
            "splits": splits,
            "tool": f"structvit-lightning {__version__}",
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / SHARDS_JSON).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        old = root / f".{SHARDS_DIR}-old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.image_shards", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="the prepared folder (classes.txt, train/, val/)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per tar file (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training images' order")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        meta = write_shards(args.root, shard_size=args.shard_size, seed=args.seed, overwrite=args.overwrite)
    except (ShardWriteError, IndexContractError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(
        f"{s}: {v['count']} images in {len(v['shards'])} shards" for s, v in meta["splits"].items()
    )
    print(f"wrote {args.root / SHARDS_DIR} ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
