"""The decoders compared fairly: training clips per CPU-second of each reader, on many distinct files, cold.

    python -m benchmarks.decoders [--quick] [--files 64] [--passes 5] [--cache-dir DIR] [--json FILE]
    python -m benchmarks.decoders --summarize run1.json run2.json run3.json   # saved runs side by side
    python -m benchmarks.decoders --compare-frames FOLDER   # every reader's frames vs PyAV's on real videos

File sets (`benchmarks.videos`, generated once and kept in the cache folder): `files` Kinetics-like H.264
mp4s (604x340, 30 fps, 10 s, B-frames, a keyframe every 60, 120, 150 or 250 frames), Something-Something-V2-
like VP9 webms (427x240, 12 fps, 3-5 s) and V1-like folders of JPEG frames (176x100, 12 fps, 2-6 s).

Protocol:
- a timed pass reads one training clip (the dataset config's sampling: dense 16x4, or 16 segments) from
  every file, so each row opens each file once per pass; every row of a pass asks for the same frames, and
  the frames change from pass to pass;
- cold per-process caches: PyAV's timestamp table is cleared before each of its clips (a worker of a real
  epoch sees each of thousands of files about once, so its hit rate is ~0); decord and torchcodec keep
  nothing between files. The files are in the OS page cache for every row alike;
- interleaved: for each file every row runs once, in an order that rotates file by file and pass by pass,
  so a drift of the host's speed hits all rows alike;
- one torch thread and one decoder thread; the figure is clips per CPU-second of the process
  (`time.process_time`, all its threads: decord decodes on a thread of its own) from the median pass, i.e.
  per core; the wall-clock rate is kept beside it;
- an untimed warm-up over the first few files, then `passes` timed passes (median of 5 by default).

Rows, per set. Decode only, per reader: PyAV, decord, decord as it read before its tuning
(`read_decord_before`, the old function kept here) and torchcodec where it works; every clip is compared
with PyAV's and mismatches are counted. The worker's part of the config's train transform on the clip just
decoded, both placements alternating: augment_on cpu (crop, RandAugment, flip, normalise, erase) and
augment_on device (the crop; the rest runs on the accelerator). The whole worker, per reader and
placement: its decode plus that transform, clip by clip in the same passes (the frames are the same
whichever reader decoded them, so the transform is timed once per clip, not once per reader: the section
then fits in ~6 minutes on 2 cores). `ratios` gives the factors apart, each with its range over the passes:
decoder (decord / PyAV), tuning (decord / decord before), augmentation move (device / cpu) and the
loader's per-core gain (decord with augment_on device / decord before with augment_on cpu, their product).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.videos import KINETICS_340P, SSV1, SSV2, VideoKind, video_set_in_clean_process

KINDS = (KINETICS_340P, SSV2, SSV1)
# --quick: the same codecs, sampling and GOP structure on small, short files (the test suite's run)
QUICK_KINDS = (
    replace(KINETICS_340P, width=160, height=90, seconds=(3.0, 3.0), gops=(30, 60)),
    replace(SSV2, width=106, height=60, seconds=(2.0, 2.0)),
    replace(SSV1, width=88, height=50, seconds=(2.0, 2.0)),
)
QUICK = {"files": 4, "passes": 3, "warmup_files": 1, "clip": (64, 8)}

DECODE, ON_CPU, ON_DEVICE = "decode", "worker, augment_on cpu", "worker, augment_on device"
TRANSFORM_CPU = "transform only, augment_on cpu (crop, RandAugment, flip, normalise, erase)"
TRANSFORM_DEVICE = "transform only, augment_on device (crop)"
BEFORE = "decord (before tuning)"
JPEG = "jpeg folder (Pillow)"


def read_decord_before(path: Path, indices: Sequence[int]) -> torch.Tensor:
    """decord's read path before its tuning (`src.data.decoding.decord_reader` until then), kept for the
    side-by-side row: one-thread reader, get_batch of the sorted distinct frames, copied out by `asnumpy`
    and again by the reordering gather."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    try:
        indices = [int(i) for i in indices]
        wanted = sorted(set(indices))
        batch = reader.get_batch(wanted)
        batch = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    finally:
        del reader
    position = {i: k for k, i in enumerate(wanted)}
    return torch.from_numpy(np.ascontiguousarray(batch[[position[i] for i in indices]]))


def readers(kind: VideoKind) -> tuple[dict[str, Callable[[Path, list[int]], torch.Tensor]], dict[str, str]]:
    """(name -> read function of a set's files, name -> why a reader is skipped here)."""
    from src.data.decoding import read_frames
    from src.data.decoding.pyav_reader import clear_timestamp_cache
    from src.data.decoding.torchcodec_reader import torchcodec_available

    if kind.codec == "jpeg":  # folders are read by file name whatever the backend
        return {JPEG: lambda path, idx: read_frames(path, idx)}, {}

    def pyav_cold(path: Path, indices: list[int]) -> torch.Tensor:
        clear_timestamp_cache()  # timed with the read: demuxing the table is part of a cold clip
        return read_frames(path, indices, "pyav")

    found = {
        "pyav": pyav_cold,
        "decord": lambda path, idx: read_frames(path, idx, "decord"),
        BEFORE: read_decord_before,
    }
    skipped = {}
    reason = torchcodec_available()
    if reason is None:
        found["torchcodec"] = lambda path, idx: read_frames(path, idx, "torchcodec")
    else:
        skipped["torchcodec"] = reason
    return found, skipped


@dataclass
class _Row:
    """One timed step and its CPU and wall seconds per pass: a reader's decode, or one of the worker's
    transforms (`run(path, indices, frames, seed)`, `frames` the clip a decode row returned)."""

    stage: str
    reader: str
    run: Callable[[Path, list[int], torch.Tensor | None, int], torch.Tensor]
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    mismatches: int = 0
    max_abs_diff: int = 0


def _rows(kind: VideoKind, transform) -> tuple[list[_Row], list[_Row], dict[str, str]]:
    """(decode rows, one per reader; the two transforms a worker applies to a decoded clip; skipped readers)."""
    from src.data.transforms import seeded

    found, skipped = readers(kind)

    def on_cpu(_path: Path, _indices: list[int], frames: torch.Tensor | None, seed: int) -> torch.Tensor:
        return transform(frames, 0, seed=(seed, seed + 1))[0]  # crop, RandAugment, flip, normalise, erase

    def on_device(_path: Path, _indices: list[int], frames: torch.Tensor | None, seed: int) -> torch.Tensor:
        with seeded(seed):  # the worker's part; the rest runs on the accelerator
            return transform.crop_clip(frames)

    decodes = [_Row(DECODE, name, lambda p, i, _f, _s, read=read: read(p, i)) for name, read in found.items()]
    transforms = [_Row(TRANSFORM_CPU, "—", on_cpu), _Row(TRANSFORM_DEVICE, "—", on_device)]
    return decodes, transforms, skipped


def _transform(kind: VideoKind, index_dir: Path, clip: tuple[int, int] | None):
    """The dataset config's train transform, as the DataModule builds it, and its clip sampler."""
    from src.data.catalog import config_data
    from src.data.datamodule import VideoDataModule
    from src.data.sampling import ClipSampler

    data = config_data(kind.dataset)
    if clip is not None:
        data["crop_size"], data["num_frames"] = clip
    module = VideoDataModule(**{**data, "root": str(index_dir), "num_workers": 0, "augment_on": "cpu"})
    sampler = ClipSampler(data["sampling"], int(data["num_frames"]), int(data["sampling_rate"]))
    return module.split_dataset("train").train_transform, sampler, data


def _videos(index_dir: Path) -> list[tuple[Path, int, int]]:
    import csv

    with open(index_dir / "train.csv", newline="", encoding="utf-8") as handle:
        return [
            (index_dir / r["path"], int(r["label"]), int(r["num_frames"])) for r in csv.DictReader(handle)
        ]


def _timed(row: _Row, cpu: list[float], wall: list[float], k: int, *args) -> torch.Tensor:
    c0, w0 = time.process_time(), time.perf_counter()
    out = row.run(*args)
    wall[k] += time.perf_counter() - w0
    cpu[k] += time.process_time() - c0
    return out


def _pass(decodes: list[_Row], transforms: list[_Row], videos, sampler, seed: int, timed: bool) -> None:
    """Every decode row reads one clip of every file, in an order that rotates file by file, then the
    worker's transforms (alternating) run on the clip; adds this pass's seconds to each row."""
    rows = decodes + transforms
    cpu, wall = [0.0] * len(rows), [0.0] * len(rows)
    rng = np.random.default_rng(seed)
    for f, (path, _label, length) in enumerate(videos):
        indices = [int(i) for i in sampler.train(length, rng)]
        shift = (f + seed) % len(decodes)
        decoded: dict[str, torch.Tensor] = {}
        for k in list(range(shift, len(decodes))) + list(range(shift)):
            decoded[decodes[k].reader] = _timed(decodes[k], cpu, wall, k, path, indices, None, 0)
        frames = decoded[decodes[(shift - 1) % len(decodes)].reader]  # the clip just decoded (hot in cache)
        order = range(len(transforms)) if (f + seed) % 2 == 0 else reversed(range(len(transforms)))
        for t in order:
            k = len(decodes) + t
            _timed(rows[k], cpu, wall, k, path, indices, frames, seed * 100_003 + f)
        reference = decoded.get("pyav")
        for row in decodes:
            if timed and reference is not None and row.reader != "pyav":
                out = decoded[row.reader]
                if out.shape != reference.shape or not torch.equal(out, reference):
                    row.mismatches += 1
                    if out.shape == reference.shape:
                        gap = int((out.int() - reference.int()).abs().max())
                        row.max_abs_diff = max(row.max_abs_diff, gap)
    if timed:
        for k, row in enumerate(rows):
            row.cpu.append(cpu[k])
            row.wall.append(wall[k])


def _sampling_name(data: dict) -> str:
    if data["sampling"] == "dense":
        return f"dense {data['num_frames']}x{data['sampling_rate']}"
    return f"segment {data['num_frames']}"


def measure_kind(
    kind: VideoKind,
    index_dir: Path,
    *,
    passes: int,
    warmup_files: int,
    clip: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """The clip rows of one file set (see the module docstring)."""
    from benchmarks.pipeline import torch_threads

    transform, sampler, data = _transform(kind, index_dir, clip)
    videos = _videos(index_dir)
    decodes, transforms, skipped = _rows(kind, transform)
    base = {
        "type": "clips",
        "dataset": kind.name,
        "codec": kind.codec,
        "resolution": f"{kind.width}x{kind.height}",
        "sampling": _sampling_name(data),
        "gops": list(kind.gops) or None,
        "files": len(videos),
        "crop_size": int(data["crop_size"]),
    }
    with torch_threads(1):
        _pass(decodes, transforms, videos[:warmup_files], sampler, seed=10_000, timed=False)
        for p in range(passes):
            start = time.perf_counter()
            _pass(decodes, transforms, videos, sampler, seed=p, timed=True)
            log(f"  {kind.name}: pass {p + 1}/{passes} ({time.perf_counter() - start:.1f} s)")

    def result(stage: str, reader: str, cpu_passes: list[float], wall_passes: list[float], **extra) -> dict:
        cpu, wall = statistics.median(cpu_passes), statistics.median(wall_passes)
        return {
            **base,
            "stage": stage,
            "reader": reader,
            "status": "ok",
            "passes": len(cpu_passes),
            "clips_per_cpu_s": round(len(videos) / cpu, 3),
            "clips_per_s": round(len(videos) / wall, 3),
            "cpu_s_per_pass": [round(s, 4) for s in cpu_passes],
            "cpu_over_wall": round(cpu / wall, 2),
            **extra,
        }

    out = []
    for row in decodes:
        check = (
            {"mismatched_clips_vs_pyav": row.mismatches, "max_abs_diff_vs_pyav": row.max_abs_diff}
            if row.reader not in ("pyav", JPEG)
            else {}
        )
        cache = {"timestamp_cache": "cleared before each clip"} if row.reader == "pyav" else {}
        out.append(result(DECODE, row.reader, row.cpu, row.wall, **check, **cache))
    out += [result(t.stage, t.reader, t.cpu, t.wall) for t in transforms]
    for row in decodes:  # the whole worker: this reader's decode, then the worker's part of the transform
        if row.reader == "torchcodec":
            continue
        for stage, t in zip((ON_CPU, ON_DEVICE), transforms):
            cpu = [a + b for a, b in zip(row.cpu, t.cpu)]
            wall = [a + b for a, b in zip(row.wall, t.wall)]
            out.append(result(stage, row.reader, cpu, wall, composed_of=[DECODE, t.stage]))
    out += [
        {**base, "stage": DECODE, "reader": name, "status": "skipped", "reason": reason}
        for name, reason in skipped.items()
    ]
    return out


# (name, numerator (stage, reader), denominator (stage, reader)): each a ratio of clips per CPU-second
FACTORS = (
    ("decoder: decord / PyAV, decode only", (DECODE, "decord"), (DECODE, "pyav")),
    ("decoder: decord / PyAV, worker with augment_on device", (ON_DEVICE, "decord"), (ON_DEVICE, "pyav")),
    ("decoder: decord / PyAV, worker with augment_on cpu", (ON_CPU, "decord"), (ON_CPU, "pyav")),
    ("decoder: torchcodec / PyAV, decode only", (DECODE, "torchcodec"), (DECODE, "pyav")),
    ("tuning: decord after / before, decode only", (DECODE, "decord"), (DECODE, BEFORE)),
    ("tuning: decord after / before, worker with augment_on cpu", (ON_CPU, "decord"), (ON_CPU, BEFORE)),
    ("augmentation move: augment_on device / cpu, decord", (ON_DEVICE, "decord"), (ON_CPU, "decord")),
    ("augmentation move: augment_on device / cpu, PyAV", (ON_DEVICE, "pyav"), (ON_CPU, "pyav")),
    ("augmentation move: augment_on device / cpu, JPEG folders", (ON_DEVICE, JPEG), (ON_CPU, JPEG)),
    (
        "loader per core: decord + augment_on device / decord before + augment_on cpu",
        (ON_DEVICE, "decord"),
        (ON_CPU, BEFORE),
    ),
    (
        "loader per core: PyAV + augment_on device / decord before + augment_on cpu",
        (ON_DEVICE, "pyav"),
        (ON_CPU, BEFORE),
    ),
)


def ratios(rows: Sequence[dict]) -> list[dict]:
    """One row per (set, factor) whose two rows were measured: the ratio of the median rates, and the lowest
    and highest ratio of one pass's CPU seconds (the passes pair the rows: same files, same frames)."""
    out = []
    ok = {(r["dataset"], r["stage"], r["reader"]): r for r in rows if r.get("status") == "ok"}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for name, top, bottom in FACTORS:
            a, b = ok.get((dataset, *top)), ok.get((dataset, *bottom))
            if a is None or b is None:
                continue
            per_pass = [sb / sa for sa, sb in zip(a["cpu_s_per_pass"], b["cpu_s_per_pass"])]
            out.append(
                {
                    "type": "ratio",
                    "status": "ok",
                    "dataset": dataset,
                    "factor": name,
                    "ratio": round(a["clips_per_cpu_s"] / b["clips_per_cpu_s"], 3),
                    "pass_min": round(min(per_pass), 3),
                    "pass_max": round(max(per_pass), 3),
                    "numerator": f"{top[1]}, {top[0]}: {a['clips_per_cpu_s']:.2f} clips/CPU-s",
                    "denominator": f"{bottom[1]}, {bottom[0]}: {b['clips_per_cpu_s']:.2f} clips/CPU-s",
                }
            )
    return out


def file_sets(kinds: Sequence[VideoKind], files: int, cache_dir: Path, log=print) -> list[Path]:
    """Each kind's index folder of `files` generated files (made once, then reused from `cache_dir`)."""
    dirs = []
    for kind in kinds:  # all before any decoding (see video_set_in_clean_process)
        start = time.perf_counter()
        dirs.append(video_set_in_clean_process(kind, files, cache_dir))
        log(f"  {kind.name}: {files} files at {dirs[-1]} ({time.perf_counter() - start:.1f} s)")
    return dirs


def measure(
    kinds: Sequence[VideoKind] = KINDS,
    cache_dir: Path | None = None,
    *,
    files: int = 64,
    passes: int = 5,
    warmup_files: int = 4,
    clip: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Clip rows of every set, then the ratio rows (see the module docstring)."""
    if files < 1 or passes < 1:
        raise ValueError(f"need files >= 1 and passes >= 1, got files={files}, passes={passes}")
    if cache_dir is None:
        from benchmarks.run import DEFAULT_CACHE

        cache_dir = DEFAULT_CACHE
    dirs = file_sets(kinds, files, Path(cache_dir), log)
    rows: list[dict] = []
    for kind, index_dir in zip(kinds, dirs):
        rows += measure_kind(kind, index_dir, passes=passes, warmup_files=warmup_files, clip=clip, log=log)
    return rows + ratios(rows)


def compare_frames(folder: Path, clips: int = 8, seed: int = 0) -> list[dict]:
    """Every video file of `folder` read by every installed reader at the same frames (`clips` draws each of a
    dense 16x4 clip, 16 segments and a handful of random frames), compared with PyAV's: one row per file."""
    from src.data.decoding import DecodeError, probe, read_frames
    from src.data.decoding.frames_reader import VIDEO_SUFFIXES
    from src.data.decoding.torchcodec_reader import torchcodec_available
    from src.data.sampling import ClipSampler

    backends = ["decord"] + (["torchcodec"] if torchcodec_available() is None else [])
    samplers = [ClipSampler("dense", 16, 4), ClipSampler("segment", 16, 1)]
    rng = np.random.default_rng(seed)
    rows = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        try:
            info = probe(path)
        except DecodeError as err:
            rows.append({"file": path.name, "error": f"unreadable: {err.reason}"})
            continue
        requests = [
            [int(i) for i in sampler.train(info.num_frames, rng)]
            for sampler in samplers
            for _ in range(clips)
        ]
        requests += [
            sorted(rng.choice(info.num_frames, size=min(5, info.num_frames), replace=False).tolist())
        ]
        row = {
            "file": path.name,
            "codec": info.codec,
            "size": f"{info.width}x{info.height}",
            "frames": info.num_frames,
        }
        for backend in backends:
            same, errors = 0, set()
            for indices in requests:
                try:
                    same += torch.equal(
                        read_frames(path, indices, backend), read_frames(path, indices, "pyav")
                    )
                except DecodeError as err:  # a reader that cannot read the file is reported, not compared
                    errors.add(err.reason)
            failed = (
                f"; pyav or {backend} failed {len(errors)} way(s), e.g. {sorted(errors)[0]}" if errors else ""
            )
            row[backend] = f"{same}/{len(requests)} clips identical{failed}"
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the decoder benchmark, print its table, optionally write the JSON; non-zero if a clip mismatched."""
    from benchmarks.machine import machine_info
    from benchmarks.tables import decoder_tables

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, short files, 4 per set, 3 passes")
    parser.add_argument("--files", type=int, default=None, help="files per set (default 64; --quick 4)")
    parser.add_argument("--passes", type=int, default=None, help="timed passes (default 5; --quick 3)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the generated files are kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--summarize", type=Path, nargs="+", default=None, help="print saved runs (--json files) side by side"
    )
    parser.add_argument(
        "--compare-frames",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="compare every reader's frames with PyAV's on the videos of FOLDER (your own footage); no timing",
    )
    args = parser.parse_args(argv)
    if args.compare_frames:
        rows = compare_frames(args.compare_frames)
        for row in rows:
            print(" | ".join(str(v) for v in row.values()))
        verdicts = [str(v) for r in rows for v in r.values() if "clips identical" in str(v)]
        same = all(re.fullmatch(r"(\d+)/\1 clips identical", v) for v in verdicts)  # no difference, no error
        return 0 if verdicts and same and not any("error" in r for r in rows) else 1
    if args.summarize:
        from benchmarks.tables import decoder_runs_table

        print(decoder_runs_table([json.loads(p.read_text(encoding="utf-8")) for p in args.summarize]))
        return 0
    torch.set_num_threads(1)
    settings = dict(QUICK) if args.quick else {"files": 64, "passes": 5, "warmup_files": 4, "clip": None}
    if args.files is not None:
        settings["files"] = args.files
    if args.passes is not None:
        settings["passes"] = args.passes
    kinds = QUICK_KINDS if args.quick else KINDS
    machine = machine_info()
    start = time.perf_counter()
    rows = measure(kinds, args.cache_dir, **settings)
    result = {
        "benchmark": "decoders",
        "command": "python -m benchmarks.decoders " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": {**settings, "kinds": [k.name for k in kinds]},
        "duration_s": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    print(decoder_tables(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 1 if any(r.get("mismatched_clips_vs_pyav") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
