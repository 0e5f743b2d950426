"""This project's training data pipeline side by side with PyTorchVideo's video datasets, clips/s per core.

    python -m benchmarks.pytorchvideo_compare --out DIR --reps 5 --clips 8 [--json FILE]

Both sides read the same generated videos (`benchmarks.videos.video_set`: one index folder per video kind,
`clips` videos, so one pass = `clips` clips), in-process on one torch thread with num_workers = 0 and batch 1:
what one DataLoader worker does, i.e. the rate per core.

PyTorchVideo: `LabeledVideoDataset` over the index's train.csv (decode_audio=False, decoder "pyav" and
"decord"), and a dict transform on its "video" (C, T, H, W) float tensor that is the torchvision v2 equivalent
of the dataset config's recipe (`PyTorchVideoTransform`): temporal subsample to num_frames (pytorchvideo's
UniformTemporalSubsample, written out because `pytorchvideo.transforms` does not import with this
torchvision), back to uint8, crop, RandAugment, flip, ToDtype + Normalize, RandomErasing.
  - dense recipes (Kinetics-like, 16 x 4): `make_clip_sampler("random", 64/30 s)`: a random window of
    num_frames x sampling_rate frames, all decoded, then 16 taken uniformly (linspace) from it;
  - segment recipes (Something-like, 16 over the whole video): `make_clip_sampler("constant_clips_per_video",
    longest video + 1 s, 1)`: one clip per video that starts at 0 and is longer than any video, so every
    frame is decoded, then 16 taken uniformly over the whole video.
Ours: the real `VideoDataModule` train loader, built from `config_data(kind.dataset)` with the index as root,
backend decord and pyav, decode_timeout None, plus each `ours_variants` entry's keyword arguments, passed
straight through to VideoDataModule.
Optional decode-only rows (`decode=True`): PyTorchVideo's dataset without a transform (open + decode the window
+ its float32 conversion; output_shape (C, T_window, H, W)) against `src.data.decoding.read_frames` with the
recipe's sampling (output_shape (num_frames, H, W, 3) uint8).

Rows alternate pass by pass (pass 0 is a warm-up, the order rotates each repetition), so load from other
processes hits all of them alike; a row's figure is clips / median pass time. PyAV's per-process timestamp
table is cleared before every pass, which reads each file once: the cache is cold, as in an epoch of a real
dataset (the protocol of `benchmarks.decoders`; `--kinds k400-340p ssv2 --clips 64` with `--out` set to that
benchmark's cache folder reads its very files). Ratio rows give ours / PyTorchVideo
per backend and for the best backend of each side.

Fairness, built in:
  - decord: pytorchvideo's `encoded_video_decord` calls `decord.bridge.set_bridge("torch")` when first imported,
    for the importing thread. This project's decord reader then gets torch tensors (no `.asnumpy()`), fails, and
    silently falls back to PyAV. The decord bridge is therefore set per pass ("torch" for PyTorchVideo, "native"
    for ours) and restored afterwards.
  - decord threads: PyTorchVideo opens decord readers with num_threads=0 (one per core); for a per-core figure
    they are pinned to `pv_decord_threads` (default 1, like ours) by a subclass swapped in for the duration of
    `measure`. 0 keeps PyTorchVideo's own setting. PyAV is left as pytorchvideo opens it (thread_count 0, slice
    threading: the generated streams have one slice per frame); `cpu_over_wall` in every row shows whether a
    row used more than one core.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.pipeline import stop_workers, torch_threads
from benchmarks.timing import time_call
from benchmarks.videos import KINETICS, KINETICS_340P, SSV2, VideoKind, video_set_in_clean_process

BACKENDS = ("decord", "pyav")
# keys that define the measurement itself: an ours variant cannot change them
RESERVED = ("root", "backend", "num_workers", "batch_size")
DEFAULT_OUT = Path("/tmp/structvit_pytorchvideo_compare")
ROOT = Path(__file__).resolve().parents[1]


def kind_by_name(name: str) -> VideoKind:
    """`k400`, `ssv2`, `k400-340p` (the decoder benchmark's Kinetics-like files), or `tiny-k400` / `tiny-ssv2`
    (the test suite's small, short versions)."""
    from benchmarks.suites import TINY_KINETICS, TINY_SSV2

    kinds = {
        "k400": KINETICS,
        "ssv2": SSV2,
        "k400-340p": KINETICS_340P,
        "tiny-k400": TINY_KINETICS,
        "tiny-ssv2": TINY_SSV2,
    }
    if name not in kinds:
        raise ValueError(f"unknown video kind {name!r}; use one of {sorted(kinds)}")
    return kinds[name]


def pytorchvideo_unavailable() -> str | None:
    """Why `pytorchvideo.data` cannot be used here (None when it imports).

    Does not import decord (nor pytorchvideo's decord module, which switches decord's output to torch tensors on
    import): in a process that loaded decord before PyAV, PyAV cannot open the libvpx-vp9 encoder that writes
    the Something-like videos (see `_video_set`).
    """
    try:
        from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler  # noqa: F401
        from pytorchvideo.data.encoded_video import EncodedVideo  # noqa: F401
        from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure is the reason to report
        return f"pytorchvideo.data does not import: {type(err).__name__}: {err}"
    return None


_video_set = video_set_in_clean_process  # all videos are written before any decoding; see its docstring


def recipe(kind: VideoKind, crop_size: int | None = None, num_frames: int | None = None) -> dict[str, Any]:
    """The dataset config's `data:` recipe for `kind`, with the clip size optionally made smaller (tests)."""
    from src.data.catalog import config_data

    data = config_data(kind.dataset)
    if crop_size is not None:
        data["crop_size"] = crop_size
    if num_frames is not None:
        data["num_frames"] = num_frames
    return data


def _sampling_name(data: Mapping) -> str:
    if data["sampling"] == "dense":
        return f"dense {data['num_frames']}x{data['sampling_rate']}"
    return f"segment {data['num_frames']}"


@dataclass(frozen=True)
class _Video:
    path: Path
    label: int
    num_frames: int
    fps: float


def _index_videos(index_dir: Path, kind: VideoKind) -> list[_Video]:
    with open(index_dir / "train.csv", newline="", encoding="utf-8") as handle:
        return [
            _Video(
                index_dir / r["path"],
                int(r["label"]),
                int(r["num_frames"]),
                float(r.get("fps") or kind.fps),
            )
            for r in csv.DictReader(handle)
        ]


# ------------------------------------------------------------------------------------ PyTorchVideo side
def uniform_temporal_subsample(video: torch.Tensor, num_samples: int, temporal_dim: int = -3) -> torch.Tensor:
    """`num_samples` frames at `linspace(0, T - 1, num_samples)` (truncated), nearest-neighbour when T is short.

    The same index selection as pytorchvideo.transforms.functional.uniform_temporal_subsample (0.1.5), which
    cannot be imported here: pytorchvideo.transforms needs a torchvision API that 0.29 no longer has.
    """
    length = video.shape[temporal_dim]
    if num_samples <= 0 or length <= 0:
        raise ValueError(f"cannot take {num_samples} frames from {length}")
    indices = torch.linspace(0, length - 1, num_samples).clamp(0, length - 1).long()
    return torch.index_select(video, temporal_dim, indices)


class PyTorchVideoTransform:
    """LabeledVideoDataset dict transform: its "video" (C, T, H, W) float 0..255 -> (C, num_frames, crop, crop).

    The torchvision v2 equivalent of the recipe's TrainTransform: temporal subsample, uint8 again (the values
    are whole numbers, so exact) until normalisation like ours, then crop (random_resized or jitter),
    RandAugment(num_ops, magnitude, num_magnitude_bins=11), horizontal flip p 0.5 (flip "on" / "swap"),
    ToDtype float + Normalize, RandomErasing. Each random draw is shared by all frames of the clip.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        from torchvision.transforms import v2

        from src.data.transforms import MEAN, STD, parse_rand_augment

        self.num_frames = int(data["num_frames"])
        size = int(data["crop_size"])
        if data.get("train_crop", "random_resized") == "random_resized":
            crop = v2.RandomResizedCrop(
                size, scale=tuple(data.get("crop_scale", (0.08, 1.0))), ratio=(3 / 4, 4 / 3), antialias=True
            )
        else:
            low, high = data.get("short_side_jitter", (256, 320))
            crop = v2.Compose(
                [v2.RandomShortestSize(list(range(low, high + 1)), antialias=True), v2.RandomCrop(size)]
            )
        steps = [crop]
        ra = parse_rand_augment(data.get("rand_augment"))
        if ra:
            steps.append(v2.RandAugment(num_ops=ra[1], magnitude=ra[0], num_magnitude_bins=11))
        if data.get("flip", "on") != "off":
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(data.get("mean", MEAN)), list(data.get("std", STD))),
        ]
        erase = float(data.get("erase_prob", 0.25))
        if erase > 0:
            steps.append(v2.RandomErasing(p=erase, value=0))
        self.transform = v2.Compose(steps)

    def __call__(self, sample: dict) -> dict:
        from torchvision import tv_tensors

        video = uniform_temporal_subsample(sample["video"], self.num_frames, temporal_dim=-3)
        video = tv_tensors.Video(video.permute(1, 0, 2, 3).to(torch.uint8))  # (T, C, H, W) uint8
        video = self.transform(video)
        sample["video"] = video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()
        return sample


def pytorchvideo_clip_sampler(data: Mapping[str, Any], videos: Sequence[_Video], fps: float):
    """(clip sampler, description): a random num_frames x sampling_rate window for dense recipes; one clip from
    0 that outlasts every video (the whole video) for segment recipes."""
    from pytorchvideo.data import make_clip_sampler

    if data["sampling"] == "dense":
        window = int(data["num_frames"]) * int(data["sampling_rate"])
        duration = Fraction(window) / Fraction(fps).limit_denominator(1001)
        return make_clip_sampler("random", duration), f"random {window}/{fps:g} s"
    longest = max(v.num_frames / v.fps for v in videos)
    duration = Fraction(math.ceil(longest) + 1)  # [0, duration) holds every frame of every video
    return (
        make_clip_sampler("constant_clips_per_video", duration, 1),
        f"constant_clips_per_video 1 x {duration} s (whole video)",
    )


def _pytorchvideo_dataset(data, videos, fps, decoder: str, transform: bool):
    from pytorchvideo.data import LabeledVideoDataset

    sampler, description = pytorchvideo_clip_sampler(data, videos, fps)
    dataset = LabeledVideoDataset(
        [(str(v.path), {"label": v.label}) for v in videos],
        sampler,
        transform=PyTorchVideoTransform(data) if transform else None,
        decode_audio=False,
        decoder=decoder,
    )
    return dataset, description


@contextlib.contextmanager
def _pinned_decord_threads(threads: int) -> Iterator[None]:
    """Make pytorchvideo open its decord readers with `threads` decoder threads (0: leave its default, auto)."""
    if not threads:
        yield
        return
    from pytorchvideo.data import encoded_video_decord

    original = encoded_video_decord.EncodedVideoDecord

    class PinnedEncodedVideoDecord(original):
        def __init__(self, file, video_name=None, decode_audio=True, **kwargs) -> None:
            super().__init__(file, video_name, decode_audio, **{"num_threads": threads, **kwargs})

    encoded_video_decord.EncodedVideoDecord = PinnedEncodedVideoDecord  # read by select_video_class per open
    try:
        yield
    finally:
        encoded_video_decord.EncodedVideoDecord = original


def _decord_bridge_now() -> str | None:
    """This thread's decord bridge ("native", "torch", ...), None without decord."""
    try:
        import decord
    except ImportError:
        return None
    return getattr(decord.bridge._CURRENT_BRIDGE, "type", "native")


def _set_decord_bridge(kind: str | None) -> None:
    if kind is not None:
        import decord

        decord.bridge.set_bridge(kind)


@contextlib.contextmanager
def _decord_bridge(kind: str) -> Iterator[None]:
    """decord's output type for this thread: "torch" (what pytorchvideo expects) or "native" (what ours does)."""
    before = _decord_bridge_now()
    _set_decord_bridge(kind if before is not None else None)
    try:
        yield
    finally:
        _set_decord_bridge(before)


# ----------------------------------------------------------------------------------------------- rows
@dataclass
class _Row:
    """One measured configuration: `run_pass()` does one pass and returns (clips, shape of the last output)."""

    info: dict
    run_pass: Callable[[int], tuple[int, tuple[int, ...] | None]]
    bridge: str = "native"
    close: Callable[[], None] = lambda: None
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    clips: int = 0
    shape: tuple[int, ...] | None = None
    error: str | None = None


def _check_clip(video: torch.Tensor, expected: tuple[int, ...], side: str) -> tuple[int, ...]:
    shape = tuple(video.shape)
    if shape != expected or video.dtype != torch.float32:
        raise AssertionError(
            f"{side} produced a {video.dtype} clip of shape {shape}, expected float32 {expected}"
        )
    return shape


def _check_crop(video: torch.Tensor, expected: tuple[int, ...], side: str) -> tuple[int, ...]:
    """The CPU part of augmentation on the device: uint8 crops (T, 3, crop, crop), finished on the GPU."""
    shape = tuple(video.shape)
    if shape != expected or video.dtype != torch.uint8:
        raise AssertionError(
            f"{side} produced a {video.dtype} crop of shape {shape}, expected uint8 {expected}"
        )
    return shape


def _pytorchvideo_rows(kind, data, videos, decoders, decode: bool, threads: int) -> list[_Row]:
    from torch.utils.data import DataLoader

    expected = (3, int(data["num_frames"]), int(data["crop_size"]), int(data["crop_size"]))
    rows = []
    for decoder in decoders:
        dataset, sampler_name = _pytorchvideo_dataset(data, videos, kind.fps, decoder, transform=True)
        loader = DataLoader(dataset, batch_size=1, num_workers=0)

        def full_pass(rep: int, loader=loader) -> tuple[int, tuple[int, ...]]:
            random.seed(rep)  # pytorchvideo's clip samplers draw from `random`, the transforms from torch
            torch.manual_seed(rep)
            clips, shape = 0, None
            for batch in loader:
                for video in batch["video"]:
                    shape = _check_clip(video, expected, "PyTorchVideo")
                    clips += 1
            return clips, shape

        base = {
            "side": "pytorchvideo",
            "variant": "pytorchvideo",
            "backend": decoder,
            "clip_sampler": sampler_name,
            "decoder_threads": (threads or "pytorchvideo default (auto)")
            if decoder == "decord"
            else "pyav default",
        }
        bridge = "torch" if decoder == "decord" else "native"
        rows.append(_Row({**base, "stage": "decode+augment"}, full_pass, bridge))
        if decode:
            raw, _ = _pytorchvideo_dataset(data, videos, kind.fps, decoder, transform=False)

            def decode_pass(rep: int, raw=raw) -> tuple[int, tuple[int, ...]]:
                random.seed(rep)
                clips, shape = 0, None
                for sample in raw:  # no DataLoader: collating the float (C, T, H, W) windows would dominate
                    shape = tuple(sample["video"].shape)
                    clips += 1
                return clips, shape

            rows.append(_Row({**base, "stage": "decode"}, decode_pass, bridge))
    return rows


def _ours_loader(index_dir: Path, data: Mapping, backend: str, extra: Mapping[str, Any]):
    from src.data.datamodule import VideoDataModule

    clash = sorted(set(RESERVED) & set(extra))
    if clash:
        raise ValueError(f"an ours variant cannot set {clash}: the benchmark sets them per row")
    dm = VideoDataModule(
        **{
            **data,
            "root": str(index_dir),
            "backend": backend,
            "num_workers": 0,
            "batch_size": 1,
            "persistent_workers": False,
            "prefetch_factor": None,
            "decode_timeout": None,
            **extra,  # new VideoDataModule options pass straight through
        }
    )
    return dm.train_dataloader()


def _ours_rows(kind, index_dir, data, videos, backends, variants, decode: bool) -> list[_Row]:
    from src.data.decoding import read_frames
    from src.data.sampling import ClipSampler

    expected = (3, int(data["num_frames"]), int(data["crop_size"]), int(data["crop_size"]))
    cropped = (int(data["num_frames"]), 3, int(data["crop_size"]), int(data["crop_size"]))
    sampling = ClipSampler(data["sampling"], int(data["num_frames"]), int(data["sampling_rate"]))
    sampler_name = "dense, random start" if data["sampling"] == "dense" else "segment (TSN), random offsets"
    rows = []
    for backend in backends:
        for name, extra in variants.items():
            loader = _ours_loader(index_dir, data, backend, extra)

            def full_pass(rep: int, loader=loader, backend=backend) -> tuple[int, tuple[int, ...]]:
                if rep == 0 and backend == "decord":
                    # the dataset falls back to PyAV when decord fails: make sure decord reads here (bridge)
                    read_frames(videos[0].path, [0], "decord")
                loader.sampler.set_epoch(rep)
                clips, shape = 0, None
                for batch in loader:
                    on_device = "aug_seed" in batch  # augment_on: device: the CPU part ends with uint8 crops
                    for video in batch["video"]:
                        if on_device:
                            shape = _check_crop(video, cropped, "ours")
                        else:
                            shape = _check_clip(video, expected, "ours")
                        clips += 1
                return clips, shape

            info = {
                "side": "ours",
                "variant": name,
                "backend": backend,
                "clip_sampler": sampler_name,
                "decoder_threads": 1,
                "stage": "decode+crop (augment on device)"
                if extra.get("augment_on") == "device"
                else "decode+augment",
                "extra_kwargs": dict(extra),
            }
            rows.append(_Row(info, full_pass, "native", close=lambda loader=loader: stop_workers(loader)))
        if decode:

            def decode_pass(rep: int, backend=backend) -> tuple[int, tuple[int, ...]]:
                rng = np.random.default_rng(rep)
                shape = None
                for video in videos:
                    shape = tuple(
                        read_frames(video.path, sampling.train(video.num_frames, rng), backend).shape
                    )
                return len(videos), shape

            info = {
                "side": "ours",
                "variant": "read_frames",
                "backend": backend,
                "clip_sampler": sampler_name,
                "decoder_threads": 1,
                "stage": "decode",
            }
            rows.append(_Row(info, decode_pass, "native"))
    return rows


def _timed_pass(row: _Row, rep: int) -> None:
    from src.data.decoding.pyav_reader import clear_timestamp_cache

    box: dict = {}
    clear_timestamp_cache()  # cold, as in an epoch of a real dataset: a pass reads each file once

    def once() -> None:
        box["cpu0"] = time.process_time()
        box["result"] = row.run_pass(rep)
        box["cpu1"] = time.process_time()

    with _decord_bridge(row.bridge):
        wall = time_call(once, reps=1, warmup=0).median_s
    clips, shape = box["result"]
    if clips < 1:
        raise RuntimeError("a pass produced no clips")
    if rep > 0:  # pass 0 warms up
        row.wall.append(wall)
        row.cpu.append(box["cpu1"] - box["cpu0"])
    row.clips, row.shape = clips, shape


def _result(kind: VideoKind, data: Mapping, row: _Row) -> dict:
    out = {
        "type": "clips",
        "dataset": kind.name,
        "codec": kind.codec,
        "resolution": f"{kind.width}x{kind.height}",
        "sampling": _sampling_name(data),
        **row.info,
        "torch_threads": 1,
        "workers": 0,
    }
    if row.error is not None or not row.wall:
        return {**out, "status": "error", "reason": row.error or "no timed pass"}
    median = statistics.median(row.wall)
    cpu = statistics.median(row.cpu)
    return {
        **out,
        "status": "ok",
        "clips_per_pass": row.clips,
        "output_shape": list(row.shape) if row.shape else None,
        "pass_s": [round(s, 4) for s in row.wall],
        "median_s_per_pass": round(median, 4),
        "clips_per_s": round(row.clips / median, 3),
        "cpu_s_per_pass": round(cpu, 4),
        "cpu_over_wall": round(cpu / median, 2),
    }


def _compared_stage(row: dict) -> str:
    """The PyTorchVideo stage a row is set against: augmentation on the device is compared, CPU part only,
    with PyTorchVideo's decode + augment (both end with a clip ready for the model's device)."""
    return "decode+augment" if row["stage"] == "decode+crop (augment on device)" else row["stage"]


def ratios(rows: Sequence[dict]) -> list[dict]:
    """Ours / PyTorchVideo clips/s per (dataset, stage, ours variant): best backend of each side, and per backend."""
    out = []
    ok = [r for r in rows if r.get("type") == "clips" and r.get("status") == "ok"]
    for dataset in dict.fromkeys(r["dataset"] for r in ok):
        for stage in dict.fromkeys(_compared_stage(r) for r in ok if r["dataset"] == dataset):
            here = [r for r in ok if r["dataset"] == dataset and _compared_stage(r) == stage]
            theirs = {r["backend"]: r["clips_per_s"] for r in here if r["side"] == "pytorchvideo"}
            if not theirs:
                continue
            best_theirs = max(theirs, key=theirs.get)
            for variant in dict.fromkeys(r["variant"] for r in here if r["side"] == "ours"):
                ours = {
                    r["backend"]: r["clips_per_s"]
                    for r in here
                    if r["side"] == "ours" and r["variant"] == variant
                }
                best_ours = max(ours, key=ours.get)
                out.append(
                    {
                        "type": "ratio",
                        "status": "ok",
                        "dataset": dataset,
                        "stage": stage,
                        "variant": variant,
                        "ours_over_pytorchvideo": round(ours[best_ours] / theirs[best_theirs], 3),
                        "ours_best": {"backend": best_ours, "clips_per_s": ours[best_ours]},
                        "pytorchvideo_best": {"backend": best_theirs, "clips_per_s": theirs[best_theirs]},
                        "per_backend": {b: round(ours[b] / theirs[b], 3) for b in ours if b in theirs},
                    }
                )
    return out


def measure(
    kinds: Sequence[VideoKind | str] = (KINETICS, SSV2),
    cache_dir: Path = DEFAULT_OUT,
    clips: int = 8,
    reps: int = 5,
    ours_variants: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    crop_size: int | None = None,
    num_frames: int | None = None,
    backends: Sequence[str] = BACKENDS,
    decode: bool = True,
    pv_decord_threads: int = 1,
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> list[dict]:
    """Clip rows (side, variant, backend, stage: clips/s, per-pass times) then ratio rows, for each kind.

    `clips` videos per kind are generated once (cached in `cache_dir`); each of `reps` timed passes (after one
    warm-up pass) reads each once. `ours_variants`: name -> extra VideoDataModule keyword arguments (default
    {"ours": {}}). `crop_size` / `num_frames` shrink the clips (tests); by default the configs' recipe runs.
    """
    if clips < 1 or reps < 1:
        raise ValueError(f"need clips >= 1 and reps >= 1, got clips={clips}, reps={reps}")
    reason = pytorchvideo_unavailable()
    if reason:
        raise RuntimeError(reason)
    variants = dict(ours_variants) if ours_variants is not None else {"ours": {}}
    kinds = [kind_by_name(k) if isinstance(k, str) else k for k in kinds]
    index_dirs = []
    for kind in kinds:  # all videos first: once decord is loaded, this process cannot write webm
        start = time.perf_counter()
        index_dirs.append(_video_set(kind, clips, Path(cache_dir)))
        log(f"{kind.name}: {clips} videos at {index_dirs[-1]} ({time.perf_counter() - start:.1f} s)")
    results: list[dict] = []
    before = _decord_bridge_now()  # pytorchvideo's decord module changes it on import; restored below
    try:
        with torch_threads(1), _pinned_decord_threads(pv_decord_threads):
            for kind, index_dir in zip(kinds, index_dirs):
                data = recipe(kind, crop_size, num_frames)
                videos = _index_videos(index_dir, kind)
                rows = _pytorchvideo_rows(kind, data, videos, backends, decode, pv_decord_threads)
                rows += _ours_rows(kind, index_dir, data, videos, backends, variants, decode)
                try:
                    for rep in range(reps + 1):
                        shift = rep % len(rows)
                        for row in rows[shift:] + rows[:shift]:  # alternate, and rotate who goes first
                            if row.error is not None:
                                continue
                            try:
                                _timed_pass(row, rep)
                            except Exception as err:  # noqa: BLE001 - the row reports it, the others go on
                                traceback.print_exc()
                                row.error = f"{type(err).__name__}: {err}"[:300]
                        log(f"{kind.name}: pass {rep}/{reps} done" + (" (warm-up)" if rep == 0 else ""))
                finally:
                    for row in rows:
                        row.close()
                kind_rows = [_result(kind, data, row) for row in rows]
                for r in kind_rows:
                    log(
                        f"  {r['dataset']:5s} {r['stage']:14s} {r['side']:12s} {r['variant']:12s} "
                        f"{r['backend']:6s} {r.get('clips_per_s', r.get('reason'))} clips/s"
                    )
                results += kind_rows
    finally:
        _set_decord_bridge(before)
    return results + ratios(results)


def _variant(text: str) -> tuple[str, dict]:
    name, _, kwargs = text.partition("=")
    if not name or not kwargs:
        raise argparse.ArgumentTypeError(f"--variant takes NAME='{{json kwargs}}', got {text!r}")
    value = json.loads(kwargs)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--variant {name}: the kwargs must be a JSON object")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the generated videos are kept")
    parser.add_argument("--reps", type=int, default=5, help="timed passes per row (after one warm-up pass)")
    parser.add_argument("--clips", type=int, default=8, help="videos per kind = clips per pass")
    parser.add_argument("--kinds", nargs="+", default=["k400", "ssv2"], help="k400 ssv2 tiny-k400 tiny-ssv2")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "--variant",
        action="append",
        type=_variant,
        help="an ours variant: NAME='{\"option\": value}' (VideoDataModule kwargs); default: ours={}",
    )
    parser.add_argument("--no-decode", action="store_true", help="skip the decode-only rows")
    parser.add_argument(
        "--pv-decord-threads", type=int, default=1, help="pytorchvideo's decord threads (0: its own auto)"
    )
    parser.add_argument("--crop-size", type=int, default=None, help="smaller clips (smoke runs)")
    parser.add_argument("--num-frames", type=int, default=None, help="fewer frames (smoke runs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    machine = machine_info()
    rows = measure(
        [kind_by_name(k) for k in args.kinds],
        args.out,
        args.clips,
        args.reps,
        dict(args.variant) if args.variant else None,
        crop_size=args.crop_size,
        num_frames=args.num_frames,
        backends=args.backends,
        decode=not args.no_decode,
        pv_decord_threads=args.pv_decord_threads,
    )
    machine["load_average_1m_end"] = machine_info()["load_average_1m"]
    result = {
        "benchmark": "pytorchvideo_compare",
        "machine": machine,
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "variant"},
            "variants": dict(args.variant) if args.variant else {"ours": {}},
            "pytorchvideo": _version("pytorchvideo"),
            "torchvision": _version("torchvision"),
            "decord": _version("decord"),
            "av": _version("av"),
        },
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if all(r.get("status", "ok") == "ok" for r in rows) else 1


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
