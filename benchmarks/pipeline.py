"""Data-pipeline throughput in clips/s: decode only, decode + augment, and the full DataLoader.

With `augment_on="device"` a worker decodes and crops only (the rest runs on the batch on the device):
rows of both placements, side by side in one run, give the per-core gain; `measure_device_part` times the
moved half on the CPU.

Decode only calls `src.data.decoding.read_frames` with the preset's sampling (dense 16x4 for Kinetics,
16 segments for Something-Something). Decode + augment iterates the real `VideoDataModule` train loader
in-process with one torch thread (what one DataLoader worker does). The DataLoader rows use 1 and 2 worker
processes (persistent, so worker start-up is not counted). Each repetition is one pass over the video set;
the figure is clips / median pass time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import time_call
from benchmarks.videos import VideoKind


def clip_indices(kind: VideoKind, length: int, rng: np.random.Generator, frames: int = 16) -> list[int]:
    """Training-time frame indices: dense 16x4 window (Kinetics) or one frame per segment (Something)."""
    if kind.dataset == "k400":
        span = (frames - 1) * 4 + 1
        start = int(rng.integers(0, max(1, length - span + 1)))
        return [min(start + 4 * i, length - 1) for i in range(frames)]
    edges = np.linspace(0, length, frames + 1)
    return [int(rng.integers(int(a), max(int(a) + 1, int(b)))) for a, b in zip(edges[:-1], edges[1:])]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Temporarily run torch ops on `count` threads (one DataLoader worker uses one)."""
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _rows(index_dir: Path) -> list[tuple[Path, int]]:
    import csv

    with open(index_dir / "train.csv", newline="") as handle:
        return [(index_dir / r["path"], int(r["num_frames"])) for r in csv.DictReader(handle)]


def measure_decode(kind: VideoKind, index_dir: Path, backend: str, *, reps: int, warmup: int) -> dict:
    """clips/s of `read_frames` alone (one thread), over one pass of the video set."""
    from src.data.decoding import read_frames

    videos = _rows(index_dir)
    rng = np.random.default_rng(0)

    def one_pass() -> None:
        for path, length in videos:
            read_frames(path, clip_indices(kind, length, rng), backend)

    with torch_threads(1):
        timing = time_call(one_pass, reps=reps, warmup=warmup)
    return _result(kind, "decode", backend, 1, len(videos), timing)


def _datamodule(
    kind: VideoKind,
    index_dir: Path,
    backend: str,
    workers: int,
    batch_size: int,
    augment_on: str = "cpu",
    num_repeats: int = 1,
):
    from src.data.catalog import config_data
    from src.data.datamodule import VideoDataModule

    return VideoDataModule(
        **{
            **config_data(kind.dataset),
            "root": str(index_dir),
            "backend": backend,
            "num_workers": workers,
            "batch_size": batch_size,
            "persistent_workers": workers > 0,
            "decode_timeout": None,
            "prefetch_factor": 2 if workers > 0 else None,
            "augment_on": augment_on,
            "num_repeats": num_repeats,
        }
    )


def measure_loader(
    kind: VideoKind,
    index_dir: Path,
    backend: str,
    workers: int,
    *,
    reps: int,
    warmup: int,
    batch_size: int = 2,
    augment_on: str = "cpu",
    num_repeats: int = 1,
) -> dict:
    """clips/s of the real train DataLoader (decode + the dataset config's augmentation + collate) with `workers`.

    workers = 0 runs in-process on one torch thread: the per-worker rate of decode + augment.
    """
    dm = _datamodule(kind, index_dir, backend, workers, batch_size, augment_on, num_repeats)
    loader = dm.train_dataloader()
    clips = 0

    def one_pass() -> None:
        nonlocal clips
        clips = 0
        for batch in loader:
            clips += int(batch["video"].shape[0])

    try:
        with torch_threads(1) if workers == 0 else contextlib.nullcontext():
            timing = time_call(one_pass, reps=reps, warmup=warmup)
    finally:
        stop_workers(loader)
    stage = STAGES[augment_on] if workers == 0 else "dataloader"
    if num_repeats > 1:  # repeated augmentation: clips per decoded video
        stage += f", {num_repeats} clips per decode"
    row = _result(kind, stage, backend, workers if workers else 1, clips, timing)
    row["in_process"] = workers == 0
    row["augment_on"] = augment_on
    return row


def measure_device_part(
    kind: VideoKind,
    index_dir: Path,
    backend: str,
    *,
    reps: int,
    warmup: int,
    device: str = "cpu",
    batch_size: int = 2,
) -> dict:
    """clips/s of the device half of `augment_on: device` (`VideoDataModule.finish_batch`: RandAugment, flip,
    normalise, erase) on `device` (the CPU: one thread, what the workers no longer do; CUDA: synchronised)."""
    dm = _datamodule(kind, index_dir, backend, 0, batch_size, "device")
    batches = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in dm.train_dataloader()
    ]
    clips = sum(int(b["video"].shape[0]) for b in batches)

    def one_pass() -> None:
        for batch in batches:
            dm.finish_batch(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch_threads(1) if device == "cpu" else contextlib.nullcontext():
        timing = time_call(one_pass, reps=reps, warmup=warmup)
    row = _result(kind, f"device part, on {device.split(':')[0].upper()}", backend, 1, clips, timing)
    row.update(in_process=device == "cpu", augment_on="device")
    return row


def measure_torchcodec_device(
    kind: VideoKind, index_dir: Path, device: str, *, reps: int, warmup: int
) -> dict:
    """clips/s of torchcodec decoding the training clips on `device` (NVDEC on CUDA), and how far its frames
    are from PyAV's on the CPU (NVDEC converts colour its own way). A row with status "skipped" and the reason
    where torchcodec cannot run."""
    from src.data.decoding import read_frames
    from src.data.decoding.torchcodec_reader import read_torchcodec, torchcodec_available

    reason = torchcodec_available()
    if reason:
        return {
            "dataset": kind.name,
            "stage": f"torchcodec decode on {device.split(':')[0].upper()}",
            "status": "skipped",
            "reason": reason,
        }
    rng = np.random.default_rng(0)
    clips = [(path, clip_indices(kind, length, rng)) for path, length in _rows(index_dir)]

    def one_pass() -> None:
        for path, indices in clips:
            read_torchcodec(path, indices, None, 1, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    timing = time_call(one_pass, reps=reps, warmup=warmup)
    path, indices = clips[0]
    gap = (
        read_torchcodec(path, indices, None, 1, device=device).cpu().int() - read_frames(path, indices).int()
    ).abs()
    row = _result(
        kind, f"torchcodec decode on {device.split(':')[0].upper()}", "torchcodec", 1, len(clips), timing
    )
    row.update(max_abs_diff_vs_pyav=int(gap.max()), mean_abs_diff_vs_pyav=round(float(gap.float().mean()), 3))
    return row


# what one worker does per clip, by `data.augment_on`
STAGES = {"cpu": "decode+augment", "device": "decode+crop (augment on device)"}


def stop_workers(loader) -> None:
    """End a persistent-worker loader's processes now; left to the garbage collector, a later loader's forked
    workers inherit the iterator and try to stop processes that are not their children."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def _result(kind: VideoKind, stage: str, backend: str, workers: int, clips: int, timing) -> dict:
    return {
        "dataset": kind.name,
        "codec": kind.codec,
        "resolution": f"{kind.width}x{kind.height}",
        "sampling": "dense 16x4" if kind.dataset == "k400" else "segment 16",
        "stage": stage,
        "backend": backend,
        "workers": workers,
        "clips_per_pass": clips,
        "status": "ok",
        "median_s_per_pass": round(timing.median_s, 4),
        "reps": timing.reps,
        "clips_per_s": round(clips / timing.median_s, 3),
        "clips_per_s_per_worker": round(clips / timing.median_s / workers, 3),
    }
