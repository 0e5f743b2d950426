"""Clips/s of the training pipeline (decode + augment) per backend, on one generated Kinetics-like video.

    python -m benchmarks.data_throughput --out /tmp/throughput --reps 5

Writes a 10 s, 30 fps, 568x320 H.264 mp4 (x264 defaults: crf 23, keyframe every 250 frames) of a moving
texture, indexes it `clips` times, and times the real `VideoDataModule` train loader in-process (what one
DataLoader worker does, one torch thread) with the Kinetics recipe: dense 16x4 sampling, RandomResizedCrop 224,
RandAugment m7-n4, flip, normalise, random erasing. Backends alternate rep by rep so load from other
processes hits both alike; the figure is clips / median pass time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import time_call

# configs/k400.yaml's training recipe, spelled out so the figure does not move with the DataModule's defaults
KINETICS_TRAIN = dict(
    num_frames=16,
    sampling="dense",
    sampling_rate=4,
    crop_size=224,
    flip="on",
    train_crop="random_resized",
    crop_scale=(0.08, 1.0),
    rand_augment="m7-n4",
    erase_prob=0.25,
)


def write_benchmark_video(
    path: Path, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (320, 568)
) -> Path:
    """A moving-texture H.264 mp4 with x264's default rate control and GOP (like re-encoded YouTube clips)."""
    import av

    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(int(seconds * fps)):
            base = 128 + 70 * np.sin((xx + 4 * i) / 23.0) * np.cos((yy - 2 * i) / 17.0)
            disc = ((xx - (40 + 5 * i) % width) ** 2 + (yy - height / 2) ** 2) < 900
            img = np.stack([base, np.roll(base, i, axis=1), base[::-1]], axis=-1)
            img[disc] = (230, 60, 40)
            img += rng.normal(0, 4, img.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def measure(out: Path, clips: int = 8, reps: int = 5) -> dict:
    """Median clips/s over `reps` passes of `clips` training clips, for decord and PyAV."""
    from src.data.datamodule import VideoDataModule
    from src.data.index import IndexRow, write_index

    video = out / "k400_like.mp4"
    if not video.exists():
        write_benchmark_video(video)
    row = IndexRow(video.name, 0, num_frames=300, fps=30.0)  # probe results cached, as data_prep writes them
    write_index(out, dataset="throughput", classes=["a"], splits={"train": [row] * clips, "val": [row]})
    torch.set_num_threads(1)
    loaders = {}
    for backend in ("decord", "pyav"):
        dm = VideoDataModule(
            root=str(out), backend=backend, num_workers=0, batch_size=1, decode_timeout=None, **KINETICS_TRAIN
        )
        loaders[backend] = dm.train_dataloader()
    from src.data.decoding import read_frames
    from src.data.sampling import dense_train

    times: dict[str, list[float]] = {b: [] for b in loaders}
    decode: dict[str, list[float]] = {b: [] for b in loaders}
    counts: list[int] = []

    def one_pass(loader) -> None:
        counts.append(sum(int(batch["video"].shape[0]) for batch in loader))

    def decode_only(backend: str, rng: np.random.Generator) -> None:
        for _ in range(clips):  # decode alone, same sampling (dense 16x4 from a random start)
            read_frames(video, dense_train(300, 16, 4, rng), backend)

    for rep in range(reps + 1):  # rep 0 warms up; one timed call at a time, so the backends alternate
        for backend, loader in loaders.items():
            loader.sampler.set_epoch(rep)
            pass_s = time_call(lambda loader=loader: one_pass(loader), reps=1, warmup=0).median_s
            rng = np.random.default_rng(rep)
            decode_s = time_call(
                lambda backend=backend, rng=rng: decode_only(backend, rng), reps=1, warmup=0
            ).median_s
            if rep:
                times[backend].append(pass_s)
                decode[backend].append(decode_s)
            assert counts[-1] == clips
    return {
        backend: {
            "clips_per_s": round(clips / statistics.median(times[backend]), 2),
            "decode_only_clips_per_s": round(clips / statistics.median(decode[backend]), 2),
            "pass_s": [round(x, 3) for x in times[backend]],
        }
        for backend in loaders
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/structvit_throughput"))
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.out, args.clips, args.reps), indent=2))


if __name__ == "__main__":
    main()
