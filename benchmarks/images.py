"""Still images per CPU-second: torchvision's JPEG decoder vs PIL, and whole ImageNet train loaders.

    python -m benchmarks.images [--images 256] [--reps 5] [--cache-dir DIR] [--json FILE]

File set (generated once, kept in the cache folder): `images` ImageNet-like JPEGs (500x375, every fourth
375x500, quality 90, 4:2:0; textured content: smooth colour fields, edges, shapes and grain, not flat colour)
over 8 classes in the prepared-folder layout, plus its tar shards (`data_prep.image_shards`).

Protocol:
- decode only: every file read from disk and decoded to RGB by `torchvision.io.decode_jpeg` (the DataModule's
  `read_image`) and by `PIL.Image.open(path).convert("RGB")`, file by file, the order of the two alternating;
- whole train loader: one DataLoader worker, batches of 32, the same files and the same recipe
  (RandomResizedCrop 224 bicubic, flip, RandAugment m9-n2 on the 0..10 scale, to float, Normalize,
  RandomErasing 0.25): ImageDataModule reading the folder, ImageDataModule reading the shards, and
  torchvision.datasets.ImageFolder with the classic PIL transforms (torchvision.transforms v1, ToTensor);
  CPU time is the main process's plus the worker's (reaped at the end of each pass), i.e. per core;
- rows interleaved (the order rotates pass by pass), an untimed warm-up pass when reps > 1, the median of
  `reps` passes; images per CPU-second (`time.process_time` + children's rusage) and per wall-second.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SET_VERSION = 1
CLASSES = tuple(f"n0{1440764 + 1000 * k}" for k in range(8))
SIZE, PORTRAIT = (500, 375), (375, 500)  # (width, height)
QUALITY = 90
BATCH, CROP = 32, 224
RECIPE = {"rand_augment": "m9-n2", "erase_prob": 0.25, "crop_scale": (0.08, 1.0)}
# `make bench` suites -> settings (benchmarks/run.py); suites not named here skip the section
SUITE_SETTINGS = {
    "cpu": {"images": 256, "reps": 5},
    "quick": {"images": 32, "reps": 3},
    "tiny": {"images": 8, "reps": 1},
}

DECODE, LOADER = "decode", "train loader, 1 worker"
TV_DECODE, PIL_DECODE = "torchvision decode_jpeg", 'PIL Image.open().convert("RGB")'
OURS_FOLDER, OURS_SHARDS = "ImageDataModule (folder)", "ImageDataModule (shards)"
CLASSIC = "torchvision ImageFolder + PIL transforms"
FACTORS = (
    ("decode: torchvision / PIL", (DECODE, TV_DECODE), (DECODE, PIL_DECODE)),
    ("train loader: ImageDataModule folder / ImageFolder + PIL", (LOADER, OURS_FOLDER), (LOADER, CLASSIC)),
    ("train loader: ImageDataModule shards / ImageFolder + PIL", (LOADER, OURS_SHARDS), (LOADER, CLASSIC)),
    ("train loader: ImageDataModule shards / folder", (LOADER, OURS_SHARDS), (LOADER, OURS_FOLDER)),
)


# ----------------------------------------------------------------------------------------- the files
def _picture(rng: np.random.Generator, width: int, height: int):
    """An RGB picture with the statistics JPEG cares about: smooth fields, edges, shapes and fine grain."""
    from PIL import Image, ImageDraw, ImageFilter

    coarse = rng.uniform(0, 255, (max(height // 40, 2), max(width // 40, 2), 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        box = sorted(rng.integers(0, width, 2).tolist()), sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([box[0][0], box[1][0], box[0][1], box[1][1]], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    ys, xs = np.mgrid[0:height, 0:width]
    stripes = 18 * np.sin(xs * rng.uniform(0.05, 0.4) + ys * rng.uniform(0.05, 0.4))[..., None]
    grain = rng.normal(0, 10, (height, width, 3))
    pixels = np.asarray(image, dtype=np.float32) + stripes + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def image_set(images: int, cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The prepared folder (and its shards) of `images` training JPEGs in `cache_dir`, made once."""
    from data_prep.image_shards import write_shards

    root = Path(cache_dir) / f"images-{images}-v{SET_VERSION}"
    if (root / "shards" / "shards.json").is_file():
        return root
    start = time.perf_counter()
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(images)
    (tmp / "classes.txt").parent.mkdir(parents=True)
    (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    for split, count in (("train", images), ("val", len(CLASSES))):
        for k in range(count):
            wnid = CLASSES[k % len(CLASSES)]
            folder = tmp / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            size = PORTRAIT if k % 4 == 3 else SIZE
            _picture(rng, *size).save(folder / f"{wnid}_{k}.JPEG", format="JPEG", quality=QUALITY)
    write_shards(tmp, shard_size=64)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    log(f"  {images} JPEGs at {root} ({time.perf_counter() - start:.1f} s)")
    return root


def _train_files(root: Path) -> list[Path]:
    return sorted((root / "train").glob("*/*.JPEG"))


# ------------------------------------------------------------------------------------------- rows
@dataclass
class _Row:
    """One timed row: `run()` processes the whole set once and returns the number of images it produced."""

    stage: str
    reader: str
    run: Callable[[], int]
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    produced: int = 0


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the loader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _decode_rows() -> tuple[list[_Row], list[Callable[[Path], object]]]:
    """(the two decode rows, their read functions): run alternating file by file, timed per file."""
    from PIL import Image

    from src.data.image_datasets import read_image

    def pil(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return image.convert("RGB")

    return [_Row(DECODE, TV_DECODE, lambda: 0), _Row(DECODE, PIL_DECODE, lambda: 0)], [read_image, pil]


def _decode_pass(rows: list[_Row], readers: list, files: Sequence[Path], offset: int, timed: bool) -> None:
    cpu, wall = [0.0, 0.0], [0.0, 0.0]
    for f, path in enumerate(files):
        order = (0, 1) if (f + offset) % 2 == 0 else (1, 0)
        for k in order:
            c0, w0 = time.process_time(), time.perf_counter()
            readers[k](path)
            wall[k] += time.perf_counter() - w0
            cpu[k] += time.process_time() - c0
    if timed:
        for k, row in enumerate(rows):
            row.cpu.append(cpu[k])
            row.wall.append(wall[k])
            row.produced = len(files)


def _loader_rows(root: Path) -> list[_Row]:
    """The three whole train loaders, each a fresh one-worker DataLoader per pass."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    from src.data.image_transforms import IMAGENET_MEAN, IMAGENET_STD, MAGNITUDE_BINS
    from src.data.images import ImageDataModule

    def ours(read_from: str) -> Callable[[], int]:
        def run() -> int:
            module = ImageDataModule(
                root=str(root),
                read_from=read_from,
                crop_size=CROP,
                batch_size=BATCH,
                num_workers=1,
                **RECIPE,
            )
            return sum(batch["video"].shape[0] for batch in module.train_dataloader())

        return run

    classic = T.Compose(
        [
            T.RandomResizedCrop(CROP, scale=RECIPE["crop_scale"], interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=MAGNITUDE_BINS),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            T.RandomErasing(p=RECIPE["erase_prob"], value=0),
        ]
    )

    def image_folder() -> int:
        dataset = datasets.ImageFolder(str(root / "train"), transform=classic)
        loader = DataLoader(
            dataset, batch_size=BATCH, shuffle=True, num_workers=1, drop_last=len(dataset) > BATCH
        )
        return sum(images.shape[0] for images, _ in loader)

    return [
        _Row(LOADER, OURS_FOLDER, ours("folder")),
        _Row(LOADER, OURS_SHARDS, ours("shards")),
        _Row(LOADER, CLASSIC, image_folder),
    ]


def _loader_pass(rows: list[_Row], offset: int, timed: bool) -> None:
    order = list(range(len(rows)))
    order = order[offset % len(rows) :] + order[: offset % len(rows)]
    for k in order:
        row = rows[k]
        c0, w0 = _cpu_seconds(), time.perf_counter()
        produced = row.run()
        wall, cpu = time.perf_counter() - w0, _cpu_seconds() - c0
        if timed:
            row.cpu.append(cpu)
            row.wall.append(wall)
            row.produced = produced


def _result(row: _Row, base: dict) -> dict:
    cpu, wall = statistics.median(row.cpu), statistics.median(row.wall)
    return {
        **base,
        "stage": row.stage,
        "reader": row.reader,
        "status": "ok",
        "images": row.produced,
        "passes": len(row.cpu),
        "images_per_cpu_s": round(row.produced / cpu, 2),
        "images_per_s": round(row.produced / wall, 2),
        "cpu_s_per_pass": [round(s, 4) for s in row.cpu],
        "wall_s_per_pass": [round(s, 4) for s in row.wall],
        "cpu_over_wall": round(cpu / wall, 2),
        **({"workers": 1, "batch_size": BATCH} if row.stage == LOADER else {}),
    }


def ratios(rows: Sequence[dict]) -> list[dict]:
    """One row per factor: the ratio of the median rates and the range of the per-pass ratios."""
    ok = {(r["stage"], r["reader"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for name, top, bottom in FACTORS:
        a, b = ok.get(top), ok.get(bottom)
        if a is None or b is None:
            continue
        per_pass = [
            (a["images"] / ca) / (b["images"] / cb)
            for ca, cb in zip(a["cpu_s_per_pass"], b["cpu_s_per_pass"])
        ]
        out.append(
            {
                "type": "ratio",
                "status": "ok",
                "factor": name,
                "ratio": round(a["images_per_cpu_s"] / b["images_per_cpu_s"], 3),
                "pass_min": round(min(per_pass), 3),
                "pass_max": round(max(per_pass), 3),
            }
        )
    return out


def _measure_in_fresh_process(
    images: int, reps: int, cache_dir: Path, log: Callable[[str], None]
) -> list[dict]:
    """`measure` run by `python -m benchmarks.images` in a new process; its rows."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "images.json"
        command = [sys.executable, "-m", "benchmarks.images", "--images", str(images), "--reps", str(reps)]
        command += ["--cache-dir", str(cache_dir), "--json", str(out)]
        log(f"  images: measured in a fresh process (decord was used here): {' '.join(command[1:])}")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return json.loads(out.read_text())["rows"]


def measure(
    images: int = 256,
    reps: int = 5,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """The decode and loader rows, then the ratio rows (see the module docstring)."""
    from benchmarks.pipeline import torch_threads

    if images < 1 or reps < 1:
        raise ValueError(f"need images >= 1 and reps >= 1, got images={images}, reps={reps}")
    if cache_dir is None:
        from benchmarks.run import DEFAULT_CACHE

        cache_dir = DEFAULT_CACHE
    from src.data.decoding import decord_used_in_this_process

    if decord_used_in_this_process():
        # the DataModule's workers then start from a forkserver, whose children's CPU time this process cannot
        # see (RUSAGE_CHILDREN counts only its own): measure in a fresh interpreter, where workers are forked
        return _measure_in_fresh_process(images, reps, Path(cache_dir), log)
    root = image_set(images, Path(cache_dir), log)
    files = _train_files(root)
    decode_rows, readers = _decode_rows()
    loader_rows = _loader_rows(root)
    mean_kib = sum(p.stat().st_size for p in files) / len(files) / 1024
    base = {
        "type": "images",
        "files": len(files),
        "resolution": "500x375 / 375x500",
        "mean_file_kib": round(mean_kib, 1),
    }
    with torch_threads(1):
        if reps > 1:
            _decode_pass(decode_rows, readers, files, 0, timed=False)
            _loader_pass(loader_rows, 0, timed=False)
        for p in range(reps):
            start = time.perf_counter()
            _decode_pass(decode_rows, readers, files, p, timed=True)
            _loader_pass(loader_rows, p, timed=True)
            log(f"  images: pass {p + 1}/{reps} ({time.perf_counter() - start:.1f} s)")
    rows = [_result(row, base) for row in decode_rows + loader_rows]
    return rows + ratios(rows)


def table(rows: Sequence[dict]) -> str:
    """The rows as markdown: rates per row, then the factors."""
    lines = [
        "| stage | reader | images/CPU-s | images/s | CPU/wall |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("type") == "images":
            lines.append(
                f"| {r['stage']} | {r['reader']} | {r['images_per_cpu_s']:.1f} | {r['images_per_s']:.1f} | "
                f"{r['cpu_over_wall']:.2f} |"
            )
    lines += ["", "| factor (images per CPU-second) | ratio | per-pass range |", "|---|---:|---|"]
    for r in rows:
        if r.get("type") == "ratio":
            lines.append(f"| {r['factor']} | {r['ratio']:.2f} | {r['pass_min']:.2f}-{r['pass_max']:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its table, optionally write the JSON."""
    from PIL import __version__ as pillow_version

    from benchmarks.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training JPEGs (default 256)")
    parser.add_argument(
        "--reps", type=int, default=5, help="timed passes; the median is reported (default 5)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the generated files are kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    machine = machine_info()
    start = time.perf_counter()
    rows = measure(args.images, args.reps, args.cache_dir)
    result = {
        "benchmark": "images",
        "command": "python -m benchmarks.images " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": {
            "images": args.images,
            "reps": args.reps,
            "batch_size": BATCH,
            "crop_size": CROP,
            **RECIPE,
            "pillow": pillow_version,
            "torchvision": __import__("torchvision").__version__,
        },
        "duration_s": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
