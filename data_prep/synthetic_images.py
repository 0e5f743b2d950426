"""An embedded image benchmark in the prepared ImageNet layout, and its miniature official ILSVRC2012 archives

Why: the image path (prepare-imagenet, the image doctor, the image DataModule) must run end to end without the
138 GB of ImageNet. Each class is one kind of figure (disc, square, triangle, horizontal stripes, vertical
stripes, checkerboard, ring, cross) drawn at a random position, scale, rotation and colour over a noisy
gradient background, so a tiny model learns it in minutes, and JPEG-encoded. Classes get fake WordNet ids
(`n00000010`, `n00000020`, ...) and names; labels are the sorted-wnid order of classes.txt, as for ImageNet.

`generate` writes the prepared layout (classes.txt, synset_words.txt, train/<wnid>/<wnid>_<k>.JPEG,
val/<wnid>/ILSVRC2012_val_<n>.JPEG with n a shuffled number across classes, as ImageNet's val names are).
With `corrupt` three train files are bad as in the real train set: one truncated JPEG, one CMYK JPEG and one
PNG under a .JPEG name (the image doctor quarantines the first and re-encodes the others; generate leaves
them).
`write_official_archives` writes the same images as ILSVRC2012_img_train.tar (one <wnid>.tar per class),
ILSVRC2012_img_val.tar (flat) and ILSVRC2012_devkit_t12.tar.gz (meta.mat in the official structure, with
non-leaf synsets and ILSVRC2012_IDs that are not in sorted-wnid order, and the validation ground truth), so
`python -m data_prep.imagenet` can be run on them and must give back the layout `generate` writes.

Every image is a function of (seed, split, class, number), so a seed always gives the same bytes. Both outputs
are cached: a rerun with the same options does nothing; other options regenerate the folder (only the files
this module writes are removed; a folder holding anything else is refused).

    python -m data_prep.synthetic_images --out ROOT [--classes 6 --train-per-class 40 --val-per-class 10
                                         --size 64 --seed 0 --corrupt] [--official-archives DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.index import atomic_write_text

DATASET = "synthetic_images"
GENERATOR_VERSION = "1"  # bump when the rendering changes, so cached folders are regenerated
JPEG_QUALITY = 90
SUMMARY_FILE = "synthetic_images.json"
ARCHIVES_SUMMARY_FILE = "miniature_archives.json"
TRAIN_TAR, VAL_TAR, DEVKIT_TAR = (
    "ILSVRC2012_img_train.tar",
    "ILSVRC2012_img_val.tar",
    "ILSVRC2012_devkit_t12.tar.gz",
)
DEVKIT_DIR = "ILSVRC2012_devkit_t12"

# (kind, "words" as in ImageNet's synset_words.txt); class i has the wnid n{10 * (i + 1):08d}
KINDS: tuple[tuple[str, str], ...] = (
    ("disc", "disc, circle"),
    ("square", "square, box"),
    ("triangle", "triangle, trigon"),
    ("hstripes", "horizontal stripes"),
    ("vstripes", "vertical stripes"),
    ("checkerboard", "checkerboard, chequerboard"),
    ("ring", "ring, annulus"),
    ("cross", "cross, plus sign"),
)
# synsets above the leaves, as meta.mat holds 860 of them; their wnids sort between the leaves' on purpose
_NON_LEAVES: tuple[tuple[str, str, str], ...] = (
    ("n00000015", "figure", "a shape drawn on a background"),
    ("n00000035", "pattern, design", "a repeated decorative arrangement"),
    ("n00000099", "picture, image", "a visual representation"),
)
# what `generate` (and the image doctor or shard writer run on its folder) write; a regeneration removes them
_OWNED = (
    "train",
    "val",
    "classes.txt",
    "synset_words.txt",
    "replaced",
    "quarantine.txt",
    "image_doctor.json",
)
_OWNED += ("shards", SUMMARY_FILE)


def wnid_of(class_index: int) -> str:
    """The fake WordNet id of class `class_index` (sorted order = class order)."""
    return f"n{10 * (class_index + 1):08d}"


# ----------------------------------------------------------------------------------------------- render


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _contrasting(rng: np.random.Generator, reference: float, min_diff: float = 0.3) -> np.ndarray:
    """A random RGB colour in [0, 1] whose luma differs from `reference` by at least `min_diff`."""
    for _ in range(200):
        color = rng.uniform(0.0, 1.0, size=3)
        if abs(_luma(color) - reference) >= min_diff:
            return color
    return np.full(3, 0.0 if reference > 0.5 else 1.0)


def _coverage(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside, second colour) masks of one figure in its own frame (u, v in units of the half side)."""
    r = np.sqrt(u * u + v * v)
    au, av = np.abs(u), np.abs(v)
    none = np.zeros_like(u, dtype=bool)
    if kind == "disc":
        return r <= 1.0, none
    if kind == "square":
        return np.maximum(au, av) <= 0.85, none
    if kind == "triangle":  # equilateral, circumradius 1
        return np.maximum(np.maximum(-v, 0.866 * u + 0.5 * v), -0.866 * u + 0.5 * v) <= 0.5, none
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.55), none
    if kind == "cross":
        return ((au <= 1.0) & (av <= 0.33)) | ((au <= 0.33) & (av <= 1.0)), none
    # textures: a square patch in two colours, stripes or checks `period` half-sides wide
    inside = np.maximum(au, av) <= 0.9
    bands_u, bands_v = np.floor(u / period).astype(int), np.floor(v / period).astype(int)
    if kind == "hstripes":
        return inside, inside & (bands_v % 2 == 0)
    if kind == "vstripes":
        return inside, inside & (bands_u % 2 == 0)
    return inside, inside & ((bands_u + bands_v) % 2 == 0)  # checkerboard


def render_image(class_index: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One image of class `class_index`: uint8 (size, size, 3) RGB, drawn from `rng`.

    The figure's edges are anti-aliased by 3x3 supersampling; textures are turned by at most 12 degrees, so
    horizontal and vertical stripes stay apart, the other figures by any angle.
    """
    kind = KINDS[class_index][0]
    ss = 3
    coords = (np.arange(size * ss) + 0.5) / ss
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    # background: a colour, a linear gradient in a random direction, pixel noise below
    base = rng.uniform(0.2, 0.8, size=3)
    theta = rng.uniform(0.0, 2 * np.pi)
    ramp = (np.cos(theta) * xs + np.sin(theta) * ys) / size - 0.5
    tint = rng.uniform(-0.25, 0.25, size=3)
    background = base + ramp[..., None] * tint
    # the figure
    half = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(half * 0.8, size - half * 0.8, size=2)
    texture = kind in ("hstripes", "vstripes", "checkerboard")
    angle = rng.uniform(-0.2, 0.2) if texture else rng.uniform(0.0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (xs - cx) + s * (ys - cy)) / half
    v = (-s * (xs - cx) + c * (ys - cy)) / half
    period = max(rng.uniform(0.2, 0.4), 2.5 / half)  # at least 2.5 pixels per band
    inside, second = _coverage(kind, u, v, period)
    first_color = _contrasting(rng, _luma(base))
    second_color = _contrasting(rng, _luma(first_color), 0.35)
    image = np.where(inside[..., None], first_color, background)
    image = np.where(second[..., None], second_color, image)
    image = image.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    image += rng.normal(0.0, rng.uniform(0.01, 0.05), size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _encode(pixels: np.ndarray, how: str = "jpeg") -> bytes:
    """The file bytes of `pixels` as a plain RGB JPEG, or as one of the bad files of the real train set."""
    out = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if how == "cmyk":
        image.convert("CMYK").save(out, "JPEG", quality=JPEG_QUALITY)
    elif how == "png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=JPEG_QUALITY)
    data = out.getvalue()
    return data[: len(data) // 2] if how == "truncated" else data


# ----------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Image:
    """One image of the benchmark: split, class, number inside the class and split, file name."""

    split: str
    label: int
    number: int
    name: str
    bad: str = ""  # "", "truncated", "cmyk" or "png"

    @property
    def relpath(self) -> str:
        return f"{self.split}/{wnid_of(self.label)}/{self.name}"


def _options(**kw) -> dict:
    return {**kw, "jpeg_quality": JPEG_QUALITY, "generator_version": GENERATOR_VERSION}


def _check(
    classes: int, train_per_class: int, val_per_class: int, size: int, seed: int, corrupt: bool
) -> None:
    if not 2 <= classes <= len(KINDS):
        raise ValueError(f"--classes must be 2..{len(KINDS)} (one per kind of figure), got {classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(
            f"--train-per-class and --val-per-class must be >= 1, got {train_per_class}, {val_per_class}"
        )
    if size < 16:
        raise ValueError(f"--size must be >= 16 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0 (numpy seeds are non-negative), got {seed}")
    if corrupt and (classes < 3 or train_per_class < 2):
        raise ValueError(
            "--corrupt needs --classes >= 3 and --train-per-class >= 2 (one bad file in 3 classes)"
        )


def _plan(classes: int, train_per_class: int, val_per_class: int, seed: int, corrupt: bool) -> list[_Image]:
    """Every image to write, train first. Val numbers are a seeded permutation across classes."""
    bad = {0: "truncated", 1: "cmyk", 2: "png"} if corrupt else {}
    images = [
        _Image("train", label, k, f"{wnid_of(label)}_{k}.JPEG", bad.get(label, "") if k == 0 else "")
        for label in range(classes)
        for k in range(train_per_class)
    ]
    order = np.random.default_rng([seed, 7]).permutation(classes * val_per_class)
    for position, flat in enumerate(order):
        label, k = divmod(int(flat), val_per_class)
        images.append(_Image("val", label, k, f"ILSVRC2012_val_{position + 1:08d}.JPEG"))
    return images


def _render(item: _Image, size: int, seed: int) -> bytes:
    rng = np.random.default_rng([seed, 0 if item.split == "train" else 1, item.label, item.number])
    return _encode(render_image(item.label, rng, size), item.bad or "jpeg")


def _stream(options: dict) -> Iterator[tuple[_Image, bytes]]:
    plan = _plan(
        options["classes"],
        options["train_per_class"],
        options["val_per_class"],
        options["seed"],
        options["corrupt"],
    )
    for item in plan:
        yield item, _render(item, options["size"], options["seed"])


def _summary(options: dict, seconds: float) -> dict:
    classes = options["classes"]
    corrupt = {}
    if options["corrupt"]:
        corrupt = {
            bad: f"train/{wnid_of(i)}/{wnid_of(i)}_0.JPEG"
            for i, bad in enumerate(("truncated", "cmyk", "png"))
        }
    return {
        "dataset": DATASET,
        "options": options,
        "classes": [wnid_of(i) for i in range(classes)],
        "names": [KINDS[i][1] for i in range(classes)],
        "counts": {
            "train": classes * options["train_per_class"],
            "val": classes * options["val_per_class"],
        },
        "corrupt": corrupt,
        "seconds": round(seconds, 2),
    }


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------------------- layout


def _clear_folder(root: Path) -> None:
    """Remove what an earlier generation (and the doctor or shard writer run on it) wrote in `root`; refuse a
    folder that holds anything else or that no generation wrote: a wrong --out never deletes a user's file."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"--out {root} is a file; give a folder")
    visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    foreign = [name for name in visible if name not in _OWNED]
    if foreign or (visible and not (root / SUMMARY_FILE).is_file()):
        raise ValueError(
            f"{root} holds files this generator did not write ({', '.join((foreign or visible)[:5])}); "
            "choose an empty --out folder (or a previous synthetic image benchmark)"
        )
    for name in _OWNED:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def generate(
    root: Path,
    *,
    classes: int = 6,
    train_per_class: int = 40,
    val_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
    corrupt: bool = False,
) -> dict:
    """Write the benchmark into `root` in the prepared ImageNet layout and return its summary.

    Cached: a folder generated with the same options is left alone (`summary["cached"]` is True).
    """
    _check(classes, train_per_class, val_per_class, size, seed, corrupt)
    root = Path(root)
    options = _options(
        classes=classes,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        size=size,
        seed=seed,
        corrupt=corrupt,
    )
    previous = _read_json(root / SUMMARY_FILE)
    if (
        previous
        and previous.get("options") == options
        and (root / "train").is_dir()
        and (root / "val").is_dir()
    ):
        return {**previous, "cached": True}
    start = time.perf_counter()
    _clear_folder(root)
    staging = root / ".tmp-generate"
    shutil.rmtree(staging, ignore_errors=True)
    for split in ("train", "val"):
        for label in range(classes):
            (staging / split / wnid_of(label)).mkdir(parents=True)
    for item, data in _stream(options):
        (staging / item.relpath).write_bytes(data)
    for split in ("train", "val"):
        os.replace(staging / split, root / split)
    shutil.rmtree(staging)
    atomic_write_text(root / "classes.txt", "".join(f"{wnid_of(i)}\n" for i in range(classes)))
    atomic_write_text(
        root / "synset_words.txt", "".join(f"{wnid_of(i)} {KINDS[i][1]}\n" for i in range(classes))
    )
    summary = _summary(options, time.perf_counter() - start)
    atomic_write_text(root / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return {**summary, "cached": False}


# ----------------------------------------------------------------------------------------------- archives


def ilsvrc_ids(classes: int, seed: int) -> dict[str, int]:
    """wnid -> ILSVRC2012_ID of the leaves: a seeded permutation of 1..classes that is never the sorted order
    (as in the real devkit, where ID order is not wnid order)."""
    order = np.random.default_rng([seed, 11]).permutation(classes)
    if list(order) == list(range(classes)):
        order = np.roll(order, 1)
    return {wnid_of(int(label)): position + 1 for position, label in enumerate(order)}


def meta_mat_bytes(classes: int, train_per_class: int, seed: int) -> bytes:
    """The devkit's data/meta.mat: a MATLAB v5 struct array `synsets` with the official fields; leaves
    (num_children == 0) have IDs 1..classes, the non-leaf synsets follow."""
    try:
        from scipy.io import savemat  # the `imagenet` extra, as for reading meta.mat
    except ImportError as err:
        raise ValueError("--official-archives needs scipy: pip install -e '.[imagenet]'") from err

    fields = (
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    )
    ids = ilsvrc_ids(classes, seed)
    leaf_ids = sorted(ids.values())
    rows = [
        (ids[wnid_of(i)], wnid_of(i), KINDS[i][1], f"a {KINDS[i][0]} on a noisy background", 0, [], 0)
        for i in range(classes)
    ]
    rows.sort()
    n = classes
    rows.append((n + 1, *_NON_LEAVES[0][:2], _NON_LEAVES[0][2], 2, leaf_ids[: max(1, n // 2)], 1))
    rows.append(
        (n + 2, *_NON_LEAVES[1][:2], _NON_LEAVES[1][2], n - max(1, n // 2), leaf_ids[max(1, n // 2) :], 1)
    )
    rows.append((n + 3, *_NON_LEAVES[2][:2], _NON_LEAVES[2][2], 2, [n + 1, n + 2], 2))
    synsets = np.empty((len(rows), 1), dtype=[(name, "O") for name in fields])
    for r, (sid, wnid, words, gloss, num_children, children, height) in enumerate(rows):
        total = train_per_class * (1 if num_children == 0 else len(children))
        synsets[r, 0] = (
            np.uint16(sid),
            wnid,
            words,
            gloss,
            np.uint16(num_children),
            np.array([children], dtype=np.uint16).reshape(1, -1),
            np.uint16(height),
            np.uint16(total),
        )
    out = io.BytesIO()
    savemat(out, {"synsets": synsets})
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 1_340_000_000  # fixed, so the archives are byte-identical for a seed
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def write_official_archives(
    out_dir: Path,
    *,
    classes: int = 6,
    train_per_class: int = 40,
    val_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
    corrupt: bool = False,
) -> dict:
    """Write the benchmark as the three official ILSVRC2012 archives into `out_dir`; return a summary.

    The train tar holds one `<wnid>.tar` per class in ILSVRC2012_ID order; the val tar holds the flat
    `ILSVRC2012_val_<n>.JPEG`; the devkit holds meta.mat and the ground truth (one ID per val image in
    file-name order). Cached like `generate`.
    """
    _check(classes, train_per_class, val_per_class, size, seed, corrupt)
    out_dir = Path(out_dir)
    options = _options(
        classes=classes,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        size=size,
        seed=seed,
        corrupt=corrupt,
    )
    names = (TRAIN_TAR, VAL_TAR, DEVKIT_TAR)
    previous = _read_json(out_dir / ARCHIVES_SUMMARY_FILE)
    if previous and previous.get("options") == options and all((out_dir / n).is_file() for n in names):
        return {**previous, "cached": True}
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = ilsvrc_ids(classes, seed)
    by_class: dict[int, list[tuple[str, bytes]]] = {i: [] for i in range(classes)}
    val: list[tuple[str, bytes, int]] = []
    for item, data in _stream(options):
        if item.split == "train":
            by_class[item.label].append((item.name, data))
        else:
            val.append((item.name, data, item.label))
    tmp = {n: out_dir / f".{n}.tmp-{os.getpid()}" for n in names}
    with tarfile.open(tmp[TRAIN_TAR], "w", format=tarfile.GNU_FORMAT) as outer:
        for label in sorted(by_class, key=lambda i: ids[wnid_of(i)]):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, data in by_class[label]:
                    _add(tar, name, data)
            _add(outer, f"{wnid_of(label)}.tar", inner.getvalue())
    val.sort()
    with tarfile.open(tmp[VAL_TAR], "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, _label in val:
            _add(tar, name, data)
    ground_truth = "".join(f"{ids[wnid_of(label)]}\n" for _name, _data, label in val)
    with tarfile.open(tmp[DEVKIT_TAR], "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for folder in (DEVKIT_DIR, f"{DEVKIT_DIR}/data", f"{DEVKIT_DIR}/evaluation"):
            _add(tar, folder, None)
        _add(
            tar,
            f"{DEVKIT_DIR}/COPYING",
            b"A miniature of the ILSVRC2012 devkit, written by a test generator.\n",
        )
        _add(tar, f"{DEVKIT_DIR}/data/meta.mat", meta_mat_bytes(classes, train_per_class, seed))
        _add(tar, f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt", ground_truth.encode())
    for name in names:
        os.replace(tmp[name], out_dir / name)
    summary = {
        "dataset": DATASET,
        "options": options,
        "archives": list(names),
        "ilsvrc2012_ids": ids,
        "counts": {"train": classes * train_per_class, "val": len(val)},
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(out_dir / ARCHIVES_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return {**summary, "cached": False}


def main(argv: list[str] | None = None) -> int:
    """Command line: generate (or find cached) the benchmark, and the archives with --official-archives."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic_images", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="prepared folder to write")
    parser.add_argument("--classes", type=int, default=6, help=f"classes, 2..{len(KINDS)} (default 6)")
    parser.add_argument("--train-per-class", type=int, default=40, help="train images per class (default 40)")
    parser.add_argument("--val-per-class", type=int, default=10, help="val images per class (default 10)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument(
        "--corrupt", action="store_true", help="one truncated, one CMYK and one PNG-as-.JPEG file in train"
    )
    parser.add_argument(
        "--official-archives",
        type=Path,
        metavar="DIR",
        help="also write the miniature ILSVRC2012 archives (train tar, val tar, devkit) into DIR",
    )
    a = parser.parse_args(argv)
    options = {
        "classes": a.classes,
        "train_per_class": a.train_per_class,
        "val_per_class": a.val_per_class,
        "size": a.size,
        "seed": a.seed,
        "corrupt": a.corrupt,
    }
    try:
        summary = generate(a.out, **options)
        archives = write_official_archives(a.official_archives, **options) if a.official_archives else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = "cached (same options)" if summary["cached"] else f"generated in {summary['seconds']:.1f} s"
    print(
        f"synthetic images in {a.out}: {a.classes} classes, train {summary['counts']['train']}, "
        f"val {summary['counts']['val']}, {state}"
        + (f"; bad train files: {', '.join(summary['corrupt'].values())}" if summary["corrupt"] else "")
    )
    if archives is not None:
        state = "cached" if archives["cached"] else f"written in {archives['seconds']:.1f} s"
        print(
            f"official-layout archives in {a.official_archives}: {', '.join(archives['archives'])} ({state})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
