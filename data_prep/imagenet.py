"""ImageNet-1k (ILSVRC2012) from its three official archives into the prepared image layout (README, "Data").

Input, as image-net.org serves it (log in, accept the terms, "ILSVRC2012" downloads), all in one folder:
  ILSVRC2012_img_train.tar      1,000 per-class tars (n01440764.tar ...), 1,281,167 JPEGs, 138 GB
  ILSVRC2012_img_val.tar        50,000 JPEGs, flat (ILSVRC2012_val_00000001.JPEG ...), 6.3 GB
  ILSVRC2012_devkit_t12.tar.gz  data/meta.mat (the synsets; the 1,000 leaves have num_children == 0) and
                                data/ILSVRC2012_validation_ground_truth.txt (an ILSVRC2012_ID per val image)
Output in ROOT: classes.txt (the wnids sorted: label = line number, the order of torchvision's ImageFolder and
timm, not the devkit's ILSVRC2012_ID order), synset_words.txt, train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (or,
with --val-layout flat, val/*.JPEG + val_labels.txt), then the image doctor's quarantine.txt and
image_doctor.json (`data_prep.image_doctor`), and imagenet.json (counts; it says the folder is complete).

Archives are hostile until read: every member of the outer tars and of each per-class tar is checked before it
is written (an absolute path, `..`, a link, a device file is refused, naming the member), images must be plain
files with flat names, and they are written by this code at paths it builds, never outside ROOT. The per-class
tars are read one at a time straight out of the train tar; nothing is extracted twice.

Resuming: a class folder appears (by a rename) only once its tar was read whole, and val/ only once all of val
was; a rerun after a kill or an error continues with what is missing and says how many classes it found done.
A complete folder (imagenet.json) is left alone; --overwrite prepares it again from scratch.

    python -m data_prep.imagenet --archives DIR --out ROOT [--val-layout folders|flat] [--overwrite]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_prep import image_doctor
from data_prep.extract import ExtractError, check_tar_member
from data_prep.image_doctor import REPLACED_DIR, REPORT_FILE, Progress
from src.data.index import atomic_write_text

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
META_MAT = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
DOWNLOAD_PAGE = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php (log in, accept the terms)"
ARCHIVES: dict[str, str] = {
    TRAIN_TAR: "'Training images (Task 1 & 2)', 138 GB",
    VAL_TAR: "'Validation images (all tasks)', 6.3 GB",
    DEVKIT_TAR: "'Development kit (Task 1 & 2)', 2.5 MB",
}
MARKER = "imagenet.json"
OFFICIAL_CLASSES = 1000
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.jpe?g", re.IGNORECASE)
# what this command writes in ROOT: --overwrite removes these and nothing else
_WRITTEN = ("train", "val", "val_labels.txt", "classes.txt", "synset_words.txt", "quarantine.txt", MARKER)
_WRITTEN += (REPORT_FILE, REPLACED_DIR, "shards", ".tmp-val")


class ImagenetError(RuntimeError):
    """The archives are missing, refused or inconsistent, or ROOT is not ours; the message says the fix."""


@dataclass(frozen=True)
class Synset:
    """One leaf class of the devkit: its ILSVRC2012_ID, WordNet id and human-readable words."""

    ilsvrc_id: int
    wnid: str
    words: str


# ----------------------------------------------------------------------------------------------- devkit


def find_archives(folder: Path) -> dict[str, Path]:
    """The three archives in `folder`; one ImagenetError names every missing one and where to get it."""
    folder = Path(folder)
    found = {name: folder / name for name in ARCHIVES}
    missing = [name for name, path in found.items() if not path.is_file()]
    if missing:
        lines = "\n".join(f"  {name}  ({ARCHIVES[name]})" for name in missing)
        raise ImagenetError(
            f"{folder}: missing {len(missing)} of the ILSVRC2012 archives:\n{lines}\n"
            f"Download them from {DOWNLOAD_PAGE} into {folder} (keep the file names), or pass --archives DIR"
        )
    return found


def _scalar(value) -> object:
    """A MATLAB scalar as loadmat gives it (a 0-d or 1-element array) as a Python value."""
    while hasattr(value, "shape") and getattr(value, "size", 0) == 1 and value.shape != ():
        value = value.reshape(())
    return value.item() if hasattr(value, "item") else value


def parse_meta(data: bytes, label: str = META_MAT) -> list[Synset]:
    """The leaf synsets (num_children == 0) of a devkit's meta.mat, by ILSVRC2012_ID; the rest are WordNet
    ancestors, not classes."""
    try:
        from scipy.io import loadmat  # the `imagenet` extra: only this command reads MATLAB files
    except ImportError as err:
        raise ImagenetError(
            f"reading {label} needs scipy: pip install -e '.[imagenet]' (make install includes it)"
        ) from err

    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        names = synsets.dtype.names or ()
        missing = {"ILSVRC2012_ID", "WNID", "words", "num_children"} - set(names)
        if missing:
            raise ValueError(f"the synsets struct lacks the field(s) {sorted(missing)}")
        leaves = [
            Synset(int(_scalar(row["ILSVRC2012_ID"])), str(_scalar(row["WNID"])), str(_scalar(row["words"])))
            for row in synsets.reshape(-1)
            if int(_scalar(row["num_children"])) == 0
        ]
    except (KeyError, ValueError, TypeError, NotImplementedError) as err:
        raise ImagenetError(
            f"{label}: not the devkit's meta.mat ({type(err).__name__}: {err}); download {DEVKIT_TAR} again"
        ) from err
    leaves.sort(key=lambda s: s.ilsvrc_id)
    if [s.ilsvrc_id for s in leaves] != list(range(1, len(leaves) + 1)):
        raise ImagenetError(f"{label}: the leaf synsets' ILSVRC2012_IDs are not 1..{len(leaves)}")
    duplicated = [w for w, n in Counter(s.wnid for s in leaves).items() if n > 1]
    if duplicated or not all(re.fullmatch(r"n\d{8}", s.wnid) for s in leaves):
        raise ImagenetError(f"{label}: WNIDs repeated or not of the form n01234567 ({duplicated[:3]})")
    return leaves


def read_devkit(path: Path) -> tuple[list[Synset], list[int]]:
    """(leaf synsets by ILSVRC2012_ID, the ground-truth ID of val image 1, 2, ...) from the devkit tar.gz.

    Only the two files are read, into memory; nothing of the devkit is written.
    """
    wanted = {META_MAT: b"", GROUND_TRUTH: b""}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    wanted[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ImagenetError(
            f"{path}: truncated or corrupt ({err}); download it again from {DOWNLOAD_PAGE}"
        ) from err
    for name, data in wanted.items():
        if not data:
            raise ImagenetError(
                f"{path} has no {name}: not the ILSVRC2012 devkit (Task 1 & 2); get it from {DOWNLOAD_PAGE}"
            )
    synsets = parse_meta(wanted[META_MAT], f"{path}:{META_MAT}")
    try:
        truth = [int(line) for line in wanted[GROUND_TRUTH].decode().split()]
    except ValueError as err:
        raise ImagenetError(f"{path}:{GROUND_TRUTH}: not one ILSVRC2012_ID per line ({err})") from err
    bad = sorted({i for i in truth if not 1 <= i <= len(synsets)})
    if bad:
        raise ImagenetError(
            f"{path}:{GROUND_TRUTH}: IDs {bad[:5]} are not leaf classes 1..{len(synsets)} of meta.mat"
        )
    return synsets, truth


# ----------------------------------------------------------------------------------------------- writing


def _fresh_dir(path: Path) -> Path:
    """An empty folder at `path`, whatever a killed run left there (a link is removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _image_member(archive: str, member: tarfile.TarInfo) -> str:
    """The checked flat file name of an image member; ExtractError (naming it) for anything else."""
    check_tar_member(archive, member)
    if not member.isfile() or "/" in member.name or member.name in (".", ""):
        raise ExtractError(
            archive, "not a plain file with a flat name; ImageNet's tars hold image files only", member.name
        )
    return member.name


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    with tar.extractfile(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _extract_class(outer: tarfile.TarFile, member: tarfile.TarInfo, train: Path, wnid: str) -> int:
    """Stream one per-class tar into train/.tmp-<wnid>, rename that train/<wnid>; returns its image count."""
    tmp = _fresh_dir(train / f".tmp-{wnid}")
    label = f"{TRAIN_TAR}:{member.name}"
    count = 0
    try:
        with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
            for image in inner:
                _copy_member(inner, image, tmp / _image_member(label, image))
                count += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, train / wnid)
    return count


def _count_images(folder: Path) -> int:
    """Image files under `folder`, at any depth (hidden ones, i.e. temporary files, not counted)."""
    return sum(
        1
        for _folder, _dirs, files in os.walk(folder)
        for name in files
        if not name.startswith(".") and name.lower().endswith(image_doctor.IMAGE_SUFFIXES)
    )


def extract_train(train_tar: Path, root: Path, wnids: set[str], *, progress: bool = True) -> dict:
    """Write train/<wnid>/ from each per-class tar, skipping classes done by an earlier run.

    Returns {"classes_written", "classes_found_done", "images"}.
    """
    train = root / "train"
    train.mkdir(exist_ok=True)
    bar = Progress("train", len(wnids), progress, unit="classes")
    written = found = images = 0
    try:
        with tarfile.open(train_tar, "r:*") as outer:  # random access: a class done before is seeked past
            for member in outer:
                name = _image_member(TRAIN_TAR, member)
                wnid = name[: -len(".tar")] if name.endswith(".tar") else ""
                if wnid not in wnids:
                    raise ExtractError(
                        TRAIN_TAR, "not <wnid>.tar of a class in the devkit's meta.mat", member.name
                    )
                done = train / wnid
                if done.is_dir() and not done.is_symlink():
                    found += 1
                    images += _count_images(done)
                else:
                    images += _extract_class(outer, member, train, wnid)
                    written += 1
                bar.update(written + found, f" classes, {images:,} images")
    except (tarfile.TarError, EOFError) as err:
        raise ImagenetError(
            f"{train_tar}: truncated or corrupt ({type(err).__name__}: {err}); {written} classes were "
            "written and a rerun keeps them, but download the archive again first"
        ) from err
    return {"classes_written": written, "classes_found_done": found, "images": images}


def extract_val(val_tar: Path, root: Path, truth: list[str], layout: str, *, progress: bool = True) -> dict:
    """Write val/ from the flat val tar: val/<wnid>/<file> (folders) or val/<file> + val_labels.txt (flat).

    `truth[n - 1]` is the wnid of ILSVRC2012_val_<n>. val/ appears (a rename) only once every member was read.
    Returns {"images", "missing"} (missing: ground-truth lines without a file).
    """
    tmp = _fresh_dir(root / ".tmp-val")
    try:
        labels = _extract_val_members(val_tar, tmp, truth, layout, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if layout == "flat":
        atomic_write_text(root / "val_labels.txt", "".join(f"{n} {w}\n" for n, w in sorted(labels.items())))
    os.rename(tmp, root / "val")
    return {"images": len(labels), "missing": len(truth) - len(labels)}


def _extract_val_members(val_tar: Path, tmp: Path, truth: list[str], layout: str, progress: bool) -> dict:
    """The members of the val tar into `tmp`; returns file name -> wnid."""
    if layout == "folders":
        for wnid in set(truth):
            (tmp / wnid).mkdir()
    bar = Progress("val", len(truth), progress)
    labels: dict[str, str] = {}
    try:
        with tarfile.open(val_tar, "r|*") as tar:
            for member in tar:
                name = _image_member(VAL_TAR, member)
                match = VAL_NAME.fullmatch(name)
                number = int(match.group(1)) if match else 0
                if not 1 <= number <= len(truth):
                    raise ExtractError(
                        VAL_TAR,
                        f"not ILSVRC2012_val_<n>.JPEG with n in 1..{len(truth)} (the devkit's ground truth)",
                        member.name,
                    )
                wnid = truth[number - 1]
                _copy_member(tar, member, tmp / wnid / name if layout == "folders" else tmp / name)
                labels[name] = wnid
                bar.update(len(labels))
    except (tarfile.TarError, EOFError) as err:
        raise ImagenetError(
            f"{val_tar}: truncated or corrupt ({type(err).__name__}: {err}); download it again"
        ) from err
    return labels


# ----------------------------------------------------------------------------------------------- the command


def _clear(root: Path) -> None:
    """Remove what this command wrote in `root` (and nothing else)."""
    for name in _WRITTEN:
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def _check_root(root: Path, marker: dict | None, layout: str) -> None:
    """Refuse links where this command writes, a train/ or val/ it did not start, a change of val layout."""
    for name in ("train", "val"):
        if (root / name).is_symlink():
            raise ImagenetError(
                f"{root / name} is a link; refused (files would be written through it). Remove it or choose "
                "another --out"
            )
    if marker is None:
        if (root / "train").exists() or (root / "val").exists():
            raise ImagenetError(
                f"{root} holds train/ or val/ that this command did not write; choose an empty --out, or "
                "pass --overwrite to replace them"
            )
    elif marker.get("val_layout") != layout:
        raise ImagenetError(
            f"{root} was prepared with --val-layout {marker.get('val_layout')}; pass --overwrite to prepare "
            f"it again with {layout}, or keep {marker.get('val_layout')}"
        )


def prepare(
    archives_dir: Path,
    root: Path,
    *,
    val_layout: str = "folders",
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Prepare ImageNet from the archives in `archives_dir` into `root`; returns the summary (imagenet.json).

    A complete `root` is left alone (`summary["already_prepared"]` True; the archives are not needed then).
    An incomplete one, left by a killed or failed run, is continued: finished class folders and a finished
    val/ are kept (a re-downloaded archive is fine: the classes come from the devkit, not from the archive).
    """
    if val_layout not in ("folders", "flat"):
        raise ValueError(f"--val-layout must be folders or flat, got {val_layout!r}")
    root = Path(os.path.realpath(root))
    marker_path = root / MARKER
    marker = json.loads(marker_path.read_text(encoding="utf-8")) if marker_path.is_file() else None
    if overwrite:
        marker = None
    if marker is not None and marker.get("complete"):
        _check_root(root, marker, val_layout)
        return {**marker, "already_prepared": True}
    archives = find_archives(archives_dir)  # before anything is created or removed
    if overwrite:
        _clear(root)
    _check_root(root, marker, val_layout)
    root.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    synsets, truth_ids = read_devkit(archives[DEVKIT_TAR])
    wnid_of_id = {s.ilsvrc_id: s.wnid for s in synsets}
    by_wnid = sorted(synsets, key=lambda s: s.wnid)  # labels: the sorted-wnid order
    state = {
        "complete": False,
        "val_layout": val_layout,
        "num_classes": len(synsets),
        "archives": {name: path.stat().st_size for name, path in archives.items()},
    }
    atomic_write_text(marker_path, json.dumps(state, indent=2) + "\n")
    atomic_write_text(root / "classes.txt", "".join(f"{s.wnid}\n" for s in by_wnid))
    atomic_write_text(root / "synset_words.txt", "".join(f"{s.wnid} {s.words}\n" for s in by_wnid))
    if len(synsets) != OFFICIAL_CLASSES:
        print(
            f"imagenet: the devkit lists {len(synsets)} leaf classes (the official one has 1000)",
            file=sys.stderr,
        )

    train = extract_train(archives[TRAIN_TAR], root, {s.wnid for s in synsets}, progress=progress)
    absent = [s.wnid for s in by_wnid if not (root / "train" / s.wnid).is_dir()]
    if absent:
        raise ImagenetError(
            f"{archives[TRAIN_TAR]} lacks {len(absent)} of the devkit's {len(synsets)} classes "
            f"({', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}): it is incomplete; download it "
            f"again from {DOWNLOAD_PAGE}"
        )
    val_done = (root / "val").is_dir()
    if val_done:  # a complete val/ of an earlier run (it appears by a rename)
        count = _count_images(root / "val")
        val = {"images": count, "missing": len(truth_ids) - count}
    else:
        val = extract_val(
            archives[VAL_TAR], root, [wnid_of_id[i] for i in truth_ids], val_layout, progress=progress
        )
    if val_layout == "folders":  # every class has its folder, as ImageFolder-style readers expect
        for s in by_wnid:
            (root / "val" / s.wnid).mkdir(exist_ok=True)
    if val["missing"]:
        print(
            f"imagenet: warning: {val['missing']} val images of the ground truth are not in {VAL_TAR}",
            file=sys.stderr,
        )

    doctor = image_doctor.doctor(root, workers=workers, progress=progress)
    summary = {
        **state,
        "complete": True,
        "counts": {"train": train["images"], "val": val["images"]},
        "train_classes_written": train["classes_written"],
        "train_classes_found_done": train["classes_found_done"],
        "val_missing": val["missing"],
        "val_found_done": val_done,
        "doctor": {k: doctor[k] for k in ("checked", "ok", "reencoded", "quarantined")},
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(marker_path, json.dumps(summary, indent=2) + "\n")
    return {**summary, "already_prepared": False}


def format_summary(summary: dict, root: Path) -> str:
    """The closing report of the command."""
    counts, doctor = summary["counts"], summary["doctor"]
    head = (
        f"imagenet {root}: {summary['num_classes']} classes | train {counts['train']:,} images | "
        f"val {counts['val']:,} images ({summary['val_layout']}) | doctor: {doctor['reencoded']} re-encoded, "
        f"{doctor['quarantined']} quarantined"
    )
    if summary.get("already_prepared"):
        return f"{head}\nalready prepared: nothing to do (--overwrite prepares it again)"
    resumed = summary["train_classes_found_done"]
    note = f"; {resumed} train classes were found done by an earlier run" if resumed else ""
    details = f"details in {root / MARKER} and {root / REPORT_FILE}"
    return f"{head}\nprepared in {summary['seconds']:.0f} s{note}; {details}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.imagenet", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--archives", type=Path, required=True, help="folder holding the three ILSVRC2012 archives"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the prepared folder to write (e.g. data/imagenet)"
    )
    parser.add_argument(
        "--val-layout",
        choices=("folders", "flat"),
        default="folders",
        help="folders: val/<wnid>/<file> (default); flat: val/<file> + val_labels.txt",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="remove what an earlier run wrote and start again"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="image doctor processes")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        summary = prepare(
            args.archives,
            args.out,
            val_layout=args.val_layout,
            overwrite=args.overwrite,
            workers=args.workers,
            progress=not args.quiet,
        )
    except (ImagenetError, ExtractError) as err:
        print(f"error: {err}", file=sys.stderr)
        if isinstance(err, ExtractError):
            print(
                "nothing was written outside the output folder; get the archive from the official source",
                file=sys.stderr,
            )
        return 2
    print(format_summary(summary, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
