"""Where one training clip's CPU time goes, step by step, on the generated Kinetics- and SSv2-like files.

    python -m benchmarks.clip_cost [--clips 16] [--reps 5] [--json FILE]

For the same clips (the dataset config's sampling, seeded), one thread, it times the data pipeline's own PyAV
reader (`src.data.decoding.pyav_reader`) step by step: demux (the timestamp table), seek + decode of the
wanted frames with and without skipping unwanted non-reference frames, colour conversion of the wanted
frames with a new converter per frame (what PyAV's `to_ndarray` does) and with the reader's one reused
converter, and the whole `read_frames` call; then the augmentation steps of the recipe on the clip, with the
transform the DataModule builds: crop, RandAugment, flip + normalise + erase. Each step is timed as a whole
pass over the clips; the figure is ms per clip (median over `reps` passes, steps alternating pass by pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.pipeline import clip_indices, torch_threads
from benchmarks.videos import KINETICS, SSV2, VideoKind, video_set


def steps_for(kind: VideoKind, index_dir: Path, clips: int) -> dict[str, Callable[[], None]]:
    """name -> one pass of that step over `clips` clips (inputs prepared once, outside the timing)."""
    from av.video.reformatter import VideoReformatter

    from src.data.catalog import config_data
    from src.data.datamodule import VideoDataModule
    from src.data.decoding import read_frames
    from src.data.decoding.pyav_reader import decode_wanted, demux_timestamps, rgb_converter
    from src.data.index import read_classes, read_split

    data = config_data(kind.dataset)
    rng = np.random.default_rng(0)
    videos, _ = read_split(index_dir, "train", len(read_classes(index_dir)))
    chosen = [videos[i % len(videos)] for i in range(clips)]
    picks = [(entry.path, clip_indices(kind, entry.num_frames, rng)) for entry in chosen]
    tables = {path: demux_timestamps(path) for path, _ in picks}

    def decode(path: Path, indices: list[int], skip_nonref: bool) -> dict:
        """The reader's seek + decode of the clip's distinct frames, kept as PyAV frames (no conversion)."""
        _, table, keyframes = tables[path]
        wanted = sorted(set(indices))
        return decode_wanted(path, wanted, table, keyframes, convert=lambda f: f, skip_nonref=skip_nonref)

    decoded = [list(decode(path, indices, True).values()) for path, indices in picks]
    frames = [read_frames(path, indices, "pyav") for path, indices in picks]
    # the recipe's own transform, as the DataModule builds it for this dataset config
    datamodule = VideoDataModule(**{**data, "root": str(index_dir), "num_workers": 0, "augment_on": "cpu"})
    transform = datamodule.split_dataset("train").train_transform
    crops = [transform.crop_clip(f) for f in frames]

    def one_converter() -> None:
        for clip in decoded:
            convert = rgb_converter()
            for frame in clip:
                convert(frame)

    def rand_augment() -> None:
        if transform.rand_augment is not None:
            from torchvision import tv_tensors

            for crop in crops:
                transform.rand_augment(tv_tensors.Video(crop))

    def flip_normalise_erase() -> None:
        from torchvision import tv_tensors

        for crop in crops:
            video, _ = transform.flip(tv_tensors.Video(crop), 0)
            transform.finish(video)

    return {
        "demux (timestamp table)": lambda: [demux_timestamps(path) for path, _ in picks],
        "seek + decode, every frame": lambda: [decode(p, i, skip_nonref=False) for p, i in picks],
        "seek + decode, unwanted non-ref skipped": lambda: [decode(p, i, skip_nonref=True) for p, i in picks],
        # what PyAV's `frame.to_ndarray()` does the first time for each frame (it keeps that converter on the
        # frame, so timing `to_ndarray` on frames converted before would hide the cost)
        "colour conversion, converter per frame": lambda: [
            [VideoReformatter().reformat(f, format="rgb24").to_ndarray() for f in clip] for clip in decoded
        ],
        "colour conversion, one converter": one_converter,
        # the whole read as the DataLoader workers run it (timestamp table from the per-process cache)
        "read_frames (whole read)": lambda: [read_frames(p, i, "pyav") for p, i in picks],
        "crop (+ resize)": lambda: [transform.crop_clip(f) for f in frames],
        "RandAugment": rand_augment,
        "flip + normalise + erase": flip_normalise_erase,
    }


def measure(
    kinds=(KINETICS, SSV2), cache_dir: Path | None = None, clips: int = 16, reps: int = 5
) -> list[dict]:
    """One row per (kind, step): ms per clip, median of `reps` passes (after one warm-up pass)."""
    from benchmarks.run import DEFAULT_CACHE

    cache = Path(cache_dir or DEFAULT_CACHE)
    index_dirs = [video_set(kind, 4, cache) for kind in kinds]  # all videos before any decoding
    rows = []
    with torch_threads(1):
        for kind, index_dir in zip(kinds, index_dirs):
            steps = steps_for(kind, index_dir, clips)
            times: dict[str, list[float]] = {name: [] for name in steps}
            for rep in range(reps + 1):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step()
                    if rep:
                        times[name].append((time.perf_counter() - start) / clips * 1e3)
            rows += [
                {
                    "dataset": kind.name,
                    "resolution": f"{kind.width}x{kind.height}",
                    "step": name,
                    "ms_per_clip": round(statistics.median(values), 2),
                    "ms_per_clip_passes": [round(v, 2) for v in values],
                }
                for name, values in times.items()
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = measure(cache_dir=args.cache_dir, clips=args.clips, reps=args.reps)
    from benchmarks.machine import machine_info

    result = {"command": "python -m benchmarks.clip_cost", "machine": machine_info(), "rows": rows}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    for row in rows:
        print(f"{row['dataset']:5s} {row['step']:42s} {row['ms_per_clip']:8.2f} ms/clip")


if __name__ == "__main__":
    main()
