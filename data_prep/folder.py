"""Your own videos, one folder per class, indexed to the contract of `src.data.index` (docs/custom-data.md).

Layouts of SRC (found automatically; `--layout` forces one):
  classes  SRC/<class>/<video>                   the split is drawn per class (seeded, see below)
  splits   SRC/{train,val,test}/<class>/<video>  the folders give the split; a missing (or empty) val/ or
                                                 test/ is drawn from train/ like the classes layout draws it
A video is a file whose suffix is one of `src.data.datasets.VIDEO_SUFFIXES`, at any depth inside its class folder,
or a folder of JPEG frames (`00001.jpg, 00002.jpg, ...`): a folder is one frame video only when it holds frames
and nothing that is a video (no video file, no sub-folder); a folder holding videos and images is a folder of
videos, its images skipped and reported.

Links. Each real file is indexed once, in one split. A link whose target lies inside SRC is not followed: the
target is indexed at its own place, with the label (and split folder) of its own class folder. A link out of
SRC is followed, and what it reaches is labelled by the class folder holding the link; a second path to a file
or folder already found (a loop, a second link), a broken link and a link to a folder holding SRC are not
followed. Every link not followed is printed with its target and reason, and listed in `skipped`.

Classes are the sorted names of the class folders that hold at least one video; in the splits layout the
classes are those of train/, a class folder in val/ or test/ that train/ lacks is an error, and a train class
that val/ or test/ lacks is reported (`classes_missing` in manifest.json). Hidden entries, non-video files,
empty class folders, files outside a class folder and links not followed are skipped and reported (`skipped` in
manifest.json). A class folder name is written to classes.txt exactly; one holding a line break is refused.

Every video is probed (frame count and fps, cached in the CSVs) before the split; one that fails is left out,
listed with its reason under `failed` in manifest.json (key `unsplit` in the classes layout, the split folder's
name in the splits layout) and on stdout. The command never stops on a bad video.

Split rule: inside each class the readable videos are ordered by a hash of (seed, class, path inside the class
folder), and the first round(n * test_fraction) go to test, the next round(n * val_fraction) to val, the rest
to train. A class with 2 or more videos gets at least one val video, one with 3 or more at least one test video
(when the fraction is above 0), and every class keeps at least one train video. No test video at all (e.g.
`--test-fraction 0`): no test.csv is written, and `test` evaluates the val split. The result depends only on the
file names and the seed (not on listing order or on where SRC lives); adding a video to a class moves at most
3 of its videos to another split (those at the split boundaries), and no video of the other classes.

Paths. Videos are never copied: the index folder gets `videos`, a symbolic link to SRC (absolute), and the CSV
rows read `videos/<class>/<file>`; moving the index folder keeps it working, and after moving SRC one
`ln -sfn NEW_SRC OUT/videos` repairs it. When SRC lies inside OUT the rows point at it directly.

python -m data_prep.folder --src SRC --out OUT [--val-fraction 0.1 --test-fraction 0.1 --seed 0 --workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.common import parse_with_common_args, probe_summary
from data_prep.media import probe_many
from src.data.datasets import VIDEO_SUFFIXES
from src.data.decoding import JPEG_SUFFIXES, VideoInfo
from src.data.index import SPLITS, IndexRow, class_name_problem, write_index

log = logging.getLogger("data_prep.folder")
LINK = "videos"  # OUT/videos -> SRC
LAYOUTS = ("auto", "classes", "splits")
INDEX_FILES = {"classes.txt", "manifest.json", "quarantine.txt", "doctor.json", *(f"{s}.csv" for s in SPLITS)}
UNSPLIT = "unsplit"  # manifest key of the videos that failed before the split was drawn (classes layout)
LAYOUT_HELP = "SRC/<class>/<video> (one folder per class) or SRC/{train,val,test}/<class>/<video>"


class FolderError(ValueError):
    """SRC or OUT cannot be indexed as asked; the message names the folder and the fix."""


@dataclass(frozen=True)
class Video:
    """One video found under SRC: `id` is its path relative to SRC (posix), `within` relative to its class folder."""

    id: str
    path: Path
    cls: str
    within: str
    split: str | None = None  # from the splits layout; None = drawn


@dataclass
class Scan:
    """What a walk of SRC found."""

    layout: str
    videos: list[Video]
    skipped: list[dict]
    classes: list[str]
    split_folders: list[str]
    links_followed: list[dict] = field(default_factory=list)  # links out of SRC: {"id", "target"}


# ------------------------------------------------------------------------------------------------ scan
@dataclass
class _Walk:
    """One walk of SRC: what it skipped, the links it followed and the real path of everything it found."""

    src: Path
    real: Path  # SRC with every link resolved
    skipped: list[dict] = field(default_factory=list)
    followed: list[dict] = field(default_factory=list)  # links out of SRC: {"id", "target"}
    seen: dict[Path, str] = field(default_factory=dict)  # real path -> the id it was found under
    into: list[dict] = field(default_factory=list)  # links into SRC (skipped; reason given once all is found)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.src).as_posix()

    def skip(self, path: Path, reason: str, folder: bool = False) -> None:
        self.skipped.append({"id": self.rel(path) + ("/" if folder else ""), "reason": reason})


def _real(entry: Path, real_parent: Path, walk: _Walk) -> Path | None:
    """The real path of `entry` (in the folder whose real path is `real_parent`), or None when the walk does not
    go there: a link into SRC (its target is found at its own place), a broken link, a loop of links, a link to
    a folder holding SRC, or a second path to something already found. Each of these is put in `skipped`."""
    if not entry.is_symlink():
        real = real_parent / entry.name
    else:
        rel, target = walk.rel(entry), os.readlink(entry)
        try:
            real = entry.resolve(strict=True)
        except FileNotFoundError:
            walk.skipped.append(
                {
                    "id": rel,
                    "target": target,
                    "reason": "link not followed: broken, its target does not exist",
                }
            )
            return None
        except (OSError, RuntimeError) as err:  # RuntimeError: a loop of links (Python < 3.13)
            walk.skipped.append(
                {"id": rel, "target": target, "reason": f"link not followed: it cannot be resolved ({err})"}
            )
            return None
        if _is_within(real, walk.real):
            record = {"id": rel, "target": target, "real": real.relative_to(walk.real).as_posix()}
            walk.into.append(record)
            walk.skipped.append(record)
            return None
        if _is_within(walk.real, real):
            walk.skipped.append(
                {
                    "id": rel,
                    "target": target,
                    "reason": f"link not followed: it points at {real}, a folder holding SRC (it would walk "
                    "SRC again)",
                }
            )
            return None
    if real in walk.seen:  # a loop, or a second link to the same file or folder
        walk.skipped.append(
            {
                "id": walk.rel(entry),
                **({"target": os.readlink(entry)} if entry.is_symlink() else {}),
                "reason": f"found twice: it is {real}, already found as {walk.seen[real]} (each file is "
                "indexed once, links included)",
            }
        )
        return None
    if entry.is_symlink():
        walk.followed.append({"id": walk.rel(entry), "target": str(real)})
    return real


def _settle_links_into_src(walk: _Walk, videos: Sequence[Video]) -> None:
    """Give each link into SRC its reason, now that it is known whether its target was found in its own place."""
    ids = {v.id for v in videos}
    for record in walk.into:
        target = record.pop("real")
        if target == ".":
            record["reason"] = (
                "link into SRC not followed: it points at SRC itself, whose videos are each found once in "
                "their own class folder"
            )
        elif target in ids or any(i.startswith(target + "/") for i in ids):
            record["reason"] = (
                f"link into SRC not followed: its target {target} is indexed at its own place, with the "
                "label of its own class folder"
            )
        else:
            record["reason"] = (
                f"link into SRC not followed: its target {target} holds no indexed video (hidden, outside "
                "a class folder or not a video); move the videos into their class folder"
            )


def _is_frame_folder(folder: Path) -> bool:
    """A folder is one JPEG-frame video when it holds frames and nothing that is a video: no video file and no
    sub-folder (a folder holding videos and images is a folder of videos; its images are skipped, reported)."""
    frames = False
    try:
        with os.scandir(folder) as listing:  # d_type: no stat per frame (a frame folder holds hundreds)
            for child in listing:
                name = child.name.lower()
                if name.startswith("."):
                    continue
                if child.is_dir() or name.endswith(VIDEO_SUFFIXES):
                    return False
                frames = frames or name.endswith(JPEG_SUFFIXES)
    except OSError:
        return False
    return frames


def _scan_class(
    folder: Path,
    real_folder: Path,
    cls: str,
    split: str | None,
    class_root: Path,
    walk: _Walk,
    videos: list[Video],
) -> None:
    """Every video under one class folder (any depth); everything else goes to `walk.skipped` with its reason."""
    walk.seen[real_folder] = walk.rel(folder) + "/"
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        walk.skip(folder, f"cannot list: {err.strerror}", folder=True)
        return
    holds_video = any(e.suffix.lower() in VIDEO_SUFFIXES and e.is_file() for e in entries)
    for entry in entries:
        if entry.name.startswith("."):
            walk.skip(entry, "hidden")
            continue
        if not (entry.is_dir() or entry.is_file()) and not entry.is_symlink():
            walk.skip(entry, "not a regular file or folder")
            continue
        if "\r" in entry.name:
            walk.skip(
                entry, "a carriage return (\\r) in its name, which the index CSV cannot hold: rename it"
            )
            continue
        real = _real(entry, real_folder, walk)
        if real is None:
            continue
        rel = walk.rel(entry)
        if entry.is_dir():
            if _is_frame_folder(entry):
                walk.seen[real] = rel
                videos.append(Video(rel, entry, cls, entry.relative_to(class_root).as_posix(), split))
            else:
                _scan_class(entry, real, cls, split, class_root, walk, videos)
        elif entry.is_file():
            suffix = entry.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                walk.seen[real] = rel
                videos.append(Video(rel, entry, cls, entry.relative_to(class_root).as_posix(), split))
            elif suffix in JPEG_SUFFIXES and holds_video and folder != class_root:
                walk.skip(
                    entry,
                    "an image in a folder of videos (a folder holding a video is never a frame video): "
                    "move it out, or put each video's frames in a folder of their own",
                )
            elif suffix in JPEG_SUFFIXES:
                walk.skip(
                    entry,
                    "a JPEG frame outside a frame folder (a frame folder holds frames only, no video or "
                    "sub-folder): put each video's frames in a folder of their own (<class>/<video>/00001.jpg ...)",
                )
            else:
                walk.skip(
                    entry,
                    f"not a video (suffix {suffix or 'none'!r}; videos are "
                    f"{' '.join(VIDEO_SUFFIXES)} or JPEG-frame folders)",
                )
        else:
            walk.skip(entry, "not a regular file or folder")


def _class_folders(
    parent: Path, real_parent: Path, walk: _Walk, index_here: bool = False
) -> list[tuple[Path, Path]]:
    """(path, real path) of the non-hidden sub-folders of `parent`; files there are outside any class folder
    and skipped (`index_here`: SRC is also the index folder, whose own files are not reported)."""
    folders = []
    for entry in sorted(parent.iterdir()):
        if entry.name.startswith("."):
            walk.skip(entry, "hidden")
        elif index_here and entry.name in INDEX_FILES and not entry.is_dir():
            continue
        elif entry.is_dir():
            real = _real(entry, real_parent, walk)
            if real is not None:
                folders.append((entry, real))
        elif entry.is_symlink() and not entry.exists():
            _real(entry, real_parent, walk)  # reports the broken link or the loop
        else:
            reason = (
                "not in a class folder" if entry.suffix.lower() in VIDEO_SUFFIXES else "not a class folder"
            )
            walk.skip(entry, f"{reason} (layout: {LAYOUT_HELP})")
    return folders


def scan(src: Path, layout: str = "auto", *, out: Path | None = None) -> Scan:
    """Walk SRC: its layout, every candidate video (not yet probed), the classes and what was skipped."""
    src = Path(src)
    if layout not in LAYOUTS:
        raise FolderError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not src.exists():
        raise FolderError(
            f"SRC {src} does not exist: give the folder of your videos, laid out as {LAYOUT_HELP}"
        )
    if not src.is_dir():
        raise FolderError(
            f"SRC {src} is a file, not a folder: give the folder of your videos ({LAYOUT_HELP})"
        )
    walk = _Walk(src, src.resolve())
    index_here = out is not None and out.resolve() == walk.real
    top = dict(_class_folders(src, walk.real, walk, index_here))
    names = {p.name for p in top}
    if layout == "auto":
        split_names = names & set(SPLITS)
        if split_names and names - split_names:
            raise FolderError(
                f"{src} mixes split folders ({', '.join(sorted(split_names))}) with other folders "
                f"({', '.join(sorted(names - split_names)[:5])}): use {LAYOUT_HELP}, or pass --layout classes "
                "if train/val/test are class names"
            )
        layout = "splits" if split_names else "classes"
    videos: list[Video] = []
    split_folders: list[str] = []
    if layout == "splits":
        if "train" not in names:
            raise FolderError(
                f"{src} has no train/ folder: the splits layout is SRC/train/<class>/<video> (val/ and "
                "test/ optional); or pass --layout classes for SRC/<class>/<video>"
            )
        unknown = sorted(names - set(SPLITS))
        if unknown:
            raise FolderError(
                f"{src}: folder(s) {', '.join(unknown)} beside train/: only train, val and test belong "
                "there in the splits layout"
            )
        split_folders = [s for s in SPLITS if s in names]
        found: dict[str, set[str]] = {}
        for split in split_folders:
            found[split] = set()
            walk.seen[top[src / split]] = f"{split}/"
            for folder, real in _class_folders(src / split, top[src / split], walk):
                count = len(videos)
                _scan_class(folder, real, folder.name, split, folder, walk, videos)
                if len(videos) > count:
                    found[split].add(folder.name)
                else:
                    walk.skip(folder, "empty class folder (no videos)", folder=True)
        classes = sorted(found["train"])
        for split in split_folders[1:]:
            if not found[split]:  # an empty val/ or test/ counts as absent: that split is drawn from train/
                walk.skip(src / split, "empty split folder (drawn from train/ instead)", folder=True)
        split_folders = [s for s in split_folders if s == "train" or found[s]]
        for split in split_folders[1:]:
            extra = sorted(found[split] - found["train"])
            if extra:
                raise FolderError(
                    f"{src / split}: class folder(s) {', '.join(extra)} have no videos in {src / 'train'}; a class "
                    f"needs training videos: add them under train/<class>/, or remove {split}/<class>/"
                )
    else:
        found_classes = set()
        for folder, real in top.items():
            count = len(videos)
            _scan_class(folder, real, folder.name, None, folder, walk, videos)
            if len(videos) > count:
                found_classes.add(folder.name)
            else:
                walk.skip(folder, "empty class folder (no videos)", folder=True)
        classes = sorted(found_classes)
    _settle_links_into_src(walk, videos)
    if not classes:
        where = src / "train" if layout == "splits" else src
        loose = [s["id"] for s in walk.skipped if s["reason"].startswith("not in a class folder")]
        hint = f" ({len(loose)} videos lie directly in it: move them into class folders)" if loose else ""
        raise FolderError(f"no class folder with videos in {where}{hint}; the layout is {LAYOUT_HELP}")
    for name in classes:
        problem = class_name_problem(name)
        if problem:
            raise FolderError(
                f"class folder {str(src / name)!r}: its name {problem}; rename the folder (classes.txt holds one "
                "class name per line)"
            )
    return Scan(layout, videos, walk.skipped, classes, split_folders, walk.followed)


# ----------------------------------------------------------------------------------------------- split
def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) counts of a class of `n` videos: the rounded fractions, at least one each when the class
    is big enough (2 for val, 3 for test) and the fraction above 0, and always at least one train video."""
    if n <= 1:
        return 0, 0
    n_val, n_test = _round(n * val_fraction), _round(n * test_fraction)
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if test_fraction > 0 and n_test == 0 and n >= 3:
        n_test = 1
    while n_val + n_test > n - 1:
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def _order_key(seed: int, video: Video) -> tuple[str, str]:
    digest = hashlib.sha256(f"{seed}\0{video.cls}\0{video.within}".encode()).hexdigest()
    return digest, video.within


def draw_splits(videos: Sequence[Video], fractions: dict[str, float], seed: int) -> dict[str, list[Video]]:
    """Assign every video of `videos` to one of the splits in `fractions` ("val"/"test", the rest "train")."""
    out: dict[str, list[Video]] = {"train": [], "val": [], "test": []}
    by_class: dict[str, list[Video]] = {}
    for video in videos:
        by_class.setdefault(video.cls, []).append(video)
    for cls in sorted(by_class):
        ordered = sorted(by_class[cls], key=lambda v: _order_key(seed, v))
        n_val, n_test = split_counts(len(ordered), fractions.get("val", 0.0), fractions.get("test", 0.0))
        out["test"] += ordered[:n_test]
        out["val"] += ordered[n_test : n_test + n_val]
        out["train"] += ordered[n_test + n_val :]
    return out


# ----------------------------------------------------------------------------------------------- paths
def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def link_source(src: Path, out: Path) -> Path:
    """The path under which the index reaches SRC: SRC itself when it lies inside OUT, else OUT/videos, a
    symbolic link to SRC (made or re-pointed here; plain relative paths when links are not possible)."""
    src_real, out_real = src.resolve(), out.resolve()
    if _is_within(src_real, out_real):
        return src
    if _is_within(out_real, src_real):
        raise FolderError(
            f"--out {out} lies inside SRC {src}: it would be read as a class folder; choose an index "
            "folder outside SRC (e.g. make prepare-folder DATA_ROOT=/elsewhere)"
        )
    out.mkdir(parents=True, exist_ok=True)
    link = out / LINK
    if link.is_symlink():
        if link.resolve() == src_real:
            return link
        log.info("re-pointing %s from %s to %s", link, os.readlink(link), src_real)
    elif link.exists():
        raise FolderError(
            f"{link} exists and is not a link to SRC {src_real}; move it away or choose another --out"
        )
    tmp = out / f".{LINK}.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(src_real, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as err:
        log.warning(
            "cannot make the link %s -> %s (%s): the index rows point at SRC by relative paths; "
            "keep the two folders where they are",
            link,
            src_real,
            err.strerror,
        )
        return src
    return link


# --------------------------------------------------------------------------------------------- prepare
def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise FolderError(f"{name} {value}: use a fraction in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise FolderError(
            f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave no training videos; "
            "their sum must be below 1"
        )


def _print_some(header: str, lines: list[str], where: str = "") -> None:
    """`header`, then the first 20 `lines` indented, then how many more (and where they are listed)."""
    print(header)
    for line in lines[:20]:
        print(f"  {line}")
    if len(lines) > 20:
        print(f"  ... and {len(lines) - 20} more" + (f" ({where})" if where else ""))


def _summary(items: Sequence[dict], limit: int = 5) -> str:
    by_reason = Counter(i["reason"].split(" (")[0].split(":")[0] for i in items)
    return "; ".join(f"{n} {reason}" for reason, n in by_reason.most_common()) + (
        " - e.g. " + ", ".join(i["id"] for i in items[:limit]) + (" ..." if len(items) > limit else "")
    )


def prepare(
    src: Path,
    out: Path,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    layout: str = "auto",
    workers: int = 4,
    probe: bool = True,
    progress: bool = True,
) -> dict:
    """Index the videos under `src` into `out` (see the module docstring); returns the manifest."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    _check_fractions(val_fraction, test_fraction)
    found = scan(src, layout, out=out)
    base = link_source(src, out)
    dataset = out.resolve().name
    where = {v.id: base / v.id for v in found.videos}

    infos: dict[Path, VideoInfo | str] = (
        probe_many(sorted(where.values()), workers=workers, progress=progress) if probe else {}
    )
    good: list[Video] = []
    failed: dict[str, list[dict]] = {}
    for video in found.videos:
        info = infos.get(where[video.id])
        if isinstance(info, str):
            failed.setdefault(video.split or UNSPLIT, []).append(
                {"id": video.id, "reason": f"unreadable: {info}"}
            )
        else:
            good.append(video)

    fractions = {"val": val_fraction, "test": test_fraction}
    if found.layout == "splits":
        given = {s: [v for v in good if v.split == s] for s in found.split_folders}
        drawn = {s: f for s, f in fractions.items() if s not in found.split_folders}
        parts = draw_splits(given["train"], drawn, seed)  # train/ less what is drawn for absent val/ or test/
        assigned = {s: given[s] if s in given and s != "train" else parts[s] for s in SPLITS}
    else:
        drawn = fractions
        assigned = draw_splits(good, fractions, seed)

    label = {c: i for i, c in enumerate(found.classes)}
    rows: dict[str, list[IndexRow]] = {}
    for split in SPLITS:
        rows[split] = []
        for video in sorted(assigned[split], key=lambda v: v.id):
            info = infos.get(where[video.id])
            rel = os.path.relpath(where[video.id], out).replace(os.sep, "/")
            rows[split].append(
                IndexRow(
                    rel,
                    label[video.cls],
                    num_frames=info.num_frames if info else None,
                    fps=info.fps if info and info.fps else None,
                )
            )
    write_test = bool(rows["test"])
    if not write_test:
        del rows[
            "test"
        ]  # no test.csv: `test` evaluates val (a stale one from an earlier run is removed below)
    per_class = {c: {s: sum(1 for v in assigned[s] if v.cls == c) for s in SPLITS} for c in found.classes}
    missing_in = {s: [c for c in found.classes if per_class[c][s] == 0] for s in SPLITS}
    extra = {
        "source": str(src.resolve()),
        "layout": found.layout,
        "split_rule": {
            "seed": seed,
            "drawn": sorted(drawn),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "from_folders": found.split_folders,
        },
        "class_counts": per_class,
        "classes_missing": {s: cs for s, cs in missing_in.items() if cs and (s != "test" or write_test)},
        "skipped": found.skipped,
        "links_followed": found.links_followed,
        "probe": probe_summary(infos),
    }
    manifest = write_index(
        out,
        dataset=dataset,
        classes=found.classes,
        splits=rows,
        version="folder",
        failed={**{s: [] for s in rows}, **failed},
        extra=extra,
    )
    if not write_test and (out / "test.csv").is_file():
        (out / "test.csv").unlink()
    _report(manifest, found, src, out, base, write_test)
    return manifest


def _report(manifest: dict, found: Scan, src: Path, out: Path, base: Path, write_test: bool) -> None:
    """Warnings on stderr (logging), the summary on stdout."""
    classes = found.classes
    name = manifest["dataset"]
    shown = ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else "")
    how = (
        "split folders " + "/".join(found.split_folders)
        if found.layout == "splits"
        else "one folder per class"
    )
    print(f"{name}: {len(classes)} classes ({shown}) from {src} [{how}]")
    if len(classes) == 1:
        log.warning(
            "%s holds a single class folder (%s): a classifier needs 2 or more; is SRC one level too high "
            "(did you mean %s)?",
            src,
            classes[0],
            src / classes[0],
        )
    if found.skipped:
        print(
            f"{name}: skipped {len(found.skipped)} entries: {_summary(found.skipped)} (all listed in manifest.json)"
        )
    links = [s for s in found.skipped if "target" in s]
    if links:
        _print_some(
            f"{name}: {len(links)} link(s) not followed (each real file is indexed once, in one split):",
            [f"{item['id']} -> {item['target']}: {item['reason']}" for item in links],
            "manifest.json `skipped`",
        )
    if found.links_followed:
        print(
            f"{name}: followed {len(found.links_followed)} link(s) out of SRC; what they reach is labelled by "
            "the class folder holding the link (manifest.json `links_followed`)"
        )
    mixed = sorted(
        {s["id"].rpartition("/")[0] for s in found.skipped if s["reason"].startswith("an image in")}
    )
    if mixed:
        log.warning(
            "%s: %d folder(s) hold videos and images: indexed as folders of videos, their images skipped: %s",
            name,
            len(mixed),
            ", ".join(f"{m}/" for m in mixed[:10]) + (" ..." if len(mixed) > 10 else ""),
        )
    failures = [f for items in manifest["failed"].values() for f in items]
    if failures:
        _print_some(
            f"{name}: {len(failures)} video(s) failed to probe and are left out (manifest.json `failed`):",
            [f"{item['id']}: {item['reason']}" for item in failures],
        )
    for split, cs in manifest["classes_missing"].items():
        log.warning("%s: %d class(es) have no %s video: %s", name, len(cs), split, ", ".join(cs[:10]))
    if manifest["counts"].get("val", 0) == 0:
        log.warning(
            "%s: the val split is empty: training will run without validation (raise --val-fraction, "
            "or add videos)",
            name,
        )
    if not write_test:
        print(f"{name}: no test split (test evaluates val)")
    if base != src:
        print(f"{name}: {out / LINK} -> {src.resolve()} (the videos stay where they are)")
    print(
        f"{name}: wrote {out} | "
        + " | ".join(
            f"{s}: {manifest['counts'][s]} indexed, {manifest['failed_counts'].get(s, 0)} failed"
            for s in manifest["counts"]
        )
        + (
            f" | {len(manifest['failed'].get(UNSPLIT, []))} failed before the split"
            if UNSPLIT in manifest["failed"]
            else ""
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.folder", description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, required=True, help=f"your videos: {LAYOUT_HELP}")
    parser.add_argument("--out", type=Path, required=True, help="index folder to write, e.g. data/custom")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="per class, where the split is drawn")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="per class; 0 = no test split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn split")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="auto", help="auto: splits when SRC holds train/"
    )
    args = parse_with_common_args(parser, argv)
    try:
        prepare(
            args.src,
            args.out,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            layout=args.layout,
            workers=args.workers,
            probe=not args.no_probe,
            progress=not args.quiet,
        )
    except FolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
