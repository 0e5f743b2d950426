"""How fast structvit_xs starts to learn from scratch with each stem: patchify (UniFormer's) vs convolutional.

Why: from scratch at 32x32, structvit_xs with UniFormer's 4x4 patchify stem sat at chance on the synthetic
benchmark for most of the demo's budget; this measures the learning curve of each stem on the same clips,
recipe and seed, so the choice of structvit_xs's default stem (`stem="conv"`) rests on a number.

The clips are rendered in memory by `data_prep.synthetic.render_clip` (the same generator, seeds and labels
as the generated benchmark, without the H.264 round trip), `frames` evenly spaced frames are kept and resized
to `size`; training is AdamW with a half-epoch linear warmup and cosine decay, label smoothing 0.1, no
augmentation, one torch thread per arm, arms in parallel processes. Prints and stores validation top-1 per
epoch; `--doc` writes the table into the "## Stem" section of BENCHMARKS.md.

    python -m experiments.stem_synthetic [--stems patch conv] [--epochs 4] [--train 3000 --val 600]
                                        [--size 32 --frames 8] [--doc BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.tables import write_section
from data_prep import synthetic
from src.models import build_model

SECTION = "## Stem"


def render_split(
    split: str, count: int, frames: int, size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` clips of `split` as normalised float tensors (N, 3, frames, size, size) and their labels."""
    classes = len(synthetic.CLASSES)
    keep = np.linspace(0, 15, frames).round().astype(int)  # the generator's 16 frames, evenly subsampled
    videos = torch.empty(count, 3, frames, size, size)
    labels = torch.arange(count) % classes  # the generator's labels: row % classes
    for row in range(count):
        clip = synthetic.render_clip(int(labels[row]), synthetic.clip_rng(seed, split, row), 16, 96)[keep]
        x = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div_(255.0)  # (3, T, H, W)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        videos[row] = (x - 0.45) / 0.225
    return videos, labels


def train_arm(stem: str, data: dict, epochs: int, lr: float, batch: int, seed: int) -> dict:
    """Train structvit_xs with `stem`; returns validation top-1 per epoch and the wall time."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    xtr, ytr, xva, yva = data["xtr"], data["ytr"], data["xva"], data["yva"]
    model = build_model("structvit_xs", num_classes=len(synthetic.CLASSES), stem=stem)
    params = [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": 0.05},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(params, lr=lr)
    steps = len(xtr) // batch
    total, warmup = steps * epochs, max(steps // 2, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))
        ),
    )
    curve, start = [], time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xtr))
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xva[i : i + 100]).argmax(1) for i in range(0, len(xva), 100)])
        curve.append(float((pred == yva).float().mean()))
        print(f"  stem={stem}: epoch {len(curve)} val top-1 {100 * curve[-1]:.1f} %", flush=True)
    return {"stem": stem, "val_top1": curve, "seconds": time.perf_counter() - start}


def _train_star(args: tuple) -> dict:
    return train_arm(*args)


def table(results: list[dict]) -> str:
    """Markdown: one row per stem, validation top-1 (%) after each epoch."""
    epochs = len(results[0]["val_top1"])
    head = "| stem | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " | train time |"
    lines = [head, "|---" * (epochs + 2) + "|"]
    for r in results:
        cells = " | ".join(f"{100 * v:.1f}" for v in r["val_top1"])
        lines.append(f"| {r['stem']} | {cells} | {r['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.stem_synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--stems", nargs="+", default=["patch", "conv"], choices=["patch", "conv"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=600)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--doc", type=Path, default=None, help="write the table into this file's '## Stem' section"
    )
    parser.add_argument("--results", type=Path, default=Path("experiments/results/stem_synthetic.json"))
    args = parser.parse_args(argv)
    if args.train < args.batch or args.val < 1 or args.epochs < 1:
        parser.error(f"need --train >= --batch ({args.batch}), --val >= 1 and --epochs >= 1")

    start = time.perf_counter()
    xtr, ytr = render_split("train", args.train, args.frames, args.size, args.seed)
    xva, yva = render_split("val", args.val, args.frames, args.size, args.seed)
    data = {"xtr": xtr, "ytr": ytr, "xva": xva, "yva": yva}
    print(f"rendered {args.train} + {args.val} clips in {time.perf_counter() - start:.0f} s", flush=True)
    jobs = [(stem, data, args.epochs, args.lr, args.batch, args.seed) for stem in args.stems]
    processes = min(len(jobs), os.cpu_count() or 1)
    if processes > 1:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_train_star, jobs)
    else:
        results = [_train_star(job) for job in jobs]

    command = "python -m experiments.stem_synthetic " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + table(results), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {"command": command, "options": {k: str(v) for k, v in vars(args).items()}, "results": results},
            indent=2,
        )
        + "\n"
    )
    if args.doc is not None:
        text = "\n".join(
            [
                "structvit_xs from scratch on the synthetic benchmark with UniFormer's 4×4 patchify stem vs the "
                'convolutional stem (two 3×3×3 convolutions, `stem="conv"`, its default): validation top-1 (%) after '
                "each epoch, same clips, recipe and seed, one torch thread per arm, arms in parallel. Clips rendered in "
                f"memory ({args.train} train / {args.val} val, {args.frames} frames at {args.size}², no augmentation), "
                f"AdamW lr {args.lr:g}, batch {args.batch}, half-epoch warmup then cosine over {args.epochs} epochs.",
                "",
                f"Command: `{command}` ({os.cpu_count()} CPU cores, torch {torch.__version__}, "
                f"{time.strftime('%Y-%m-%d')}, {(time.perf_counter() - start) / 60:.0f} min in all).",
                "",
                table(results),
            ]
        )
        write_section(args.doc, text, SECTION)
        print(f"wrote the {SECTION!r} section of {args.doc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
