"""`make demo-chain`: the paper's three stages on a CPU: an image network trained on an ImageNet-layout set,
its checkpoint inflated into a video network, fine-tuned on the synthetic motion benchmark.

    python -m experiments.imagenet_chain --data-root data --runs runs [--fast] [--image-epochs N] \
        [--video-epochs N] [--threads N] [--quiet]

1. data: the embedded image benchmark written as the three official ILSVRC2012 archives
   (`data_prep.synthetic_images.write_official_archives`, with one truncated, one CMYK and one PNG-as-JPEG
   train file) and prepared by `python -m data_prep.imagenet` (extraction, then the image doctor), both
   cached, into <data-root>/synthetic_images_archives/ and <data-root>/synthetic_images_imagenet/;
2. image: `src.cli fit --config configs/imagenet.yaml` with CPU overrides (structvit_xs's image network,
   conv stem, 64² crops, batch 16, the config's lr 5e-4 given per 8 images with `--model.lr_batch 8`, so 1e-3
   at batch 16; Mixup/CutMix, RandAugment and erasing off), then `test` of its best checkpoint (top-1 / top-5
   on val: the test split of an ImageNet layout is val);
3. video: `src.cli fit --config configs/synthetic.yaml --model.init_from <image checkpoint>
   --model.init_inflation centre` on the motion benchmark of `make demo` (`src.demo.prepare_data`, cached in
   <data-root>/synthetic), and the same fit from scratch with the same seed and epochs, each followed by
   `test`;
4. the static-clip check: the image checkpoint loaded into the image network and, inflated with the centre
   rule, into the video network; on clips of identical frames both must give the same logits.

Default sizes (for under 10 minutes on 2 CPU cores): images 6 classes x 40 train / 10 val at 64 px, 20
epochs; video: the demo's 3000 / 600 / 600 clips of 8 frames at 32², 4 epochs per run. `--fast` (the test's
wiring check, about a minute): 6 x 8 / 4 images at 32 px, 1 epoch; the demo's fast clips (28 / 14 / 14), 1
epoch. Every step prints its command line; the summary is written to <runs>/chain_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from src.demo import FAST_FIT, default_threads, prepare_data
from src.paths import REPO_ROOT, configs_dir
from src.runs import TestResults, best_checkpoint, cli_env, next_version, run_cli, test_results

# the embedded image benchmark: write_official_archives options (corrupt: the doctor has work to do)
IMAGE_DATA = {
    "classes": 6,
    "train_per_class": 40,
    "val_per_class": 10,
    "size": 64,
    "seed": 0,
    "corrupt": True,
}
FAST_IMAGE_DATA = {**IMAGE_DATA, "train_per_class": 8, "val_per_class": 4, "size": 32}
IMAGE_EPOCHS, FAST_IMAGE_EPOCHS = 20, 1
VIDEO_EPOCHS, FAST_VIDEO_EPOCHS = 4, 1
IMAGE_BATCH = 16
LR_BATCH = 8  # configs/imagenet.yaml's lr 5e-4 read as per 8 images: 1e-3 at batch 16, the video recipe's lr
SEED = 0
VIDEO_FRAMES = 8  # configs/synthetic.yaml's data.num_frames (and the fast variant's)


def image_overrides(crop: int, epochs: int) -> list[str]:
    """`src.cli fit` overrides that run configs/imagenet.yaml on a CPU: structvit_xs's image network (conv
    stem, as the video network of configs/synthetic.yaml, so the checkpoint inflates into it), `crop`² crops,
    one process, float32, two loader workers. Mixup/CutMix, RandAugment and random erasing off: regularisers
    of a 300-epoch schedule that slow a 20-epoch one on 240 images down."""
    return [
        "--model.backbone.variant", "structvit_xs", "--model.backbone.stem", "conv",
        "--model.backbone.drop_path_rate", "0.0", "--model.lr_batch", str(LR_BATCH),
        "--model.warmup_epochs", "1", "--model.mixup_alpha", "0.0", "--model.cutmix_alpha", "0.0",
        "--data.rand_augment", "null", "--data.erase_prob", "0.0",
        "--data.crop_size", str(crop), "--data.batch_size", str(IMAGE_BATCH),
        "--data.eval_batch_size", str(2 * IMAGE_BATCH), "--data.num_workers", "2",
        "--data.pin_memory", "false",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.max_epochs", str(epochs),
        "--trainer.log_every_n_steps", "5",
    ]  # fmt: skip


def without(args: list[str], flag: str) -> list[str]:
    """`args` (flag, value pairs) without `flag` and its value."""
    pairs = list(zip(args[::2], args[1::2]))
    return [item for key, value in pairs if key != flag for item in (key, value)]


def config_lr(name: str) -> float:
    """`model.lr` of configs/<name>."""
    import yaml

    return float(yaml.safe_load((configs_dir() / name).read_text())["model"]["lr"])


# ----------------------------------------------------------------------------------------------- data


def prepare_images(data_root: Path, fast: bool, workers: int) -> tuple[Path, dict, float]:
    """Write the miniature ILSVRC2012 archives (cached) and prepare them with `python -m data_prep.imagenet`
    in a subprocess (cached by its imagenet.json; --overwrite when the archives changed). Returns (prepared
    folder, its imagenet.json, seconds)."""
    from data_prep.synthetic_images import write_official_archives

    suffix = "_fast" if fast else ""
    archives = Path(data_root) / f"synthetic_images_archives{suffix}"
    root = Path(data_root) / f"synthetic_images_imagenet{suffix}"
    options = FAST_IMAGE_DATA if fast else IMAGE_DATA
    start = time.perf_counter()
    call = ", ".join(f"{key}={value!r}" for key, value in options.items())
    print(
        '$ python -c "from data_prep.synthetic_images import write_official_archives as w; '
        f"w('{archives}', {call})\"",
        flush=True,
    )
    written = write_official_archives(archives, **options)
    print(
        f"      {', '.join(written['archives'])}: {'cached' if written['cached'] else 'written'}", flush=True
    )

    marker = root / "imagenet.json"
    previous = json.loads(marker.read_text()) if marker.is_file() else {}
    sizes = {name: (archives / name).stat().st_size for name in written["archives"]}
    stale = bool(previous) and previous.get("archives") != sizes  # other options, other archives
    args = ["--archives", str(archives), "--out", str(root), "--workers", str(workers), "--quiet"]
    args += ["--overwrite"] if stale else []
    print("$ python -m data_prep.imagenet " + " ".join(args), flush=True)
    code = subprocess.call(
        [sys.executable, "-m", "data_prep.imagenet", *args], cwd=REPO_ROOT, env=cli_env(None)
    )
    if code != 0:
        raise RuntimeError(f"`python -m data_prep.imagenet` failed (exit {code}); its output is above")
    return root, json.loads(marker.read_text()), time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One fit + test through `src.cli`: where it is, what it scored, how long it took."""

    name: str
    run_dir: str
    checkpoint: str
    fit_command: str
    results: TestResults
    fit_seconds: float
    test_seconds: float


def fit_and_test(
    name: str, config: str, fit_args: list[str], runs: Path, pairs: list[list[int]], threads: int, quiet: bool
) -> Run:
    """`src.cli fit --config <config> FIT_ARGS` into `<runs>/<name>/version_<n>`, then `src.cli test` of its
    best checkpoint with the run's own config.yaml (results in `version_<n>/test`)."""
    version = next_version(runs, name)
    run_dir = runs / name / f"version_{version}"
    common = ["--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name]
    fit = ["fit", "--config", config, *common, "--trainer.logger.init_args.version", str(version), *fit_args]
    fit += ["--trainer.default_root_dir", str(runs / name)]
    fit_s = run_cli(fit, threads=threads, quiet=quiet)
    checkpoint = best_checkpoint(run_dir)
    test = ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(checkpoint), *common]
    test += ["--trainer.logger.init_args.version", f"version_{version}/test"]
    test_s = run_cli(test, threads=threads, quiet=quiet)
    results = test_results(run_dir / "test", pairs)
    return Run(
        name, str(run_dir), str(checkpoint), "python -m src.cli " + " ".join(fit), results, fit_s, test_s
    )


def static_clip_check(checkpoint: Path, image_root: Path, frames: int, clips: int = 8) -> dict:
    """Load the image checkpoint into the image network and, centre-inflated, into the video network; feed the
    first `clips` val images (the image run's evaluation crop and normalisation) as images and as clips of
    `frames` identical frames. Returns the largest |logit difference| and the top-1 agreement of the two."""
    import numpy as np
    import torch
    from PIL import Image

    from src.data.index import read_quarantine
    from src.models import build_model
    from src.models.checkpoints import load_checkpoint_file, load_pretrained
    from src.task import BackboneConfig

    payload = load_checkpoint_file(checkpoint)
    hparams, data = payload["hyper_parameters"], payload["datamodule_hyper_parameters"]
    options = BackboneConfig(**hparams["backbone"]).overrides()
    options.pop("image", None)
    variant, num_classes = hparams["backbone"]["variant"], len(hparams["class_names"])
    torch.manual_seed(SEED)
    image_net = build_model(variant, num_classes=num_classes, image=True, **options).eval()
    video_net = build_model(variant, num_classes=num_classes, **options).eval()
    loaded = [
        load_pretrained(image_net, payload),
        load_pretrained(video_net, payload, temporal_inflation="centre"),
    ]
    if not all(report.clean for report in loaded):
        raise RuntimeError(f"{checkpoint} did not load cleanly:\n{loaded[0]}\n{loaded[1]}")

    # ImageDataModule's evaluation geometry: resize to crop / crop_pct, centre crop (the images are square)
    size = int(data["crop_size"])
    resized = round(size / float(data["crop_pct"]))
    box = (
        (resized - size) // 2,
        (resized - size) // 2,
        (resized - size) // 2 + size,
        (resized - size) // 2 + size,
    )
    skip = set(read_quarantine(image_root))
    files = sorted(
        p for p in (image_root / "val").rglob("*.JPEG") if str(p.relative_to(image_root)) not in skip
    )
    pixels = [
        np.asarray(Image.open(p).convert("RGB").resize((resized, resized), Image.BICUBIC).crop(box))
        for p in files[:clips]
    ]
    mean = torch.tensor(data["mean"]).view(3, 1, 1)
    std = torch.tensor(data["std"]).view(3, 1, 1)
    batch = (torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        image_logits = image_net(batch)
        video_logits = video_net(batch.unsqueeze(2).expand(-1, -1, frames, -1, -1))
    return {
        "clips": int(batch.shape[0]),
        "frames": frames,
        "size": size,
        "max_abs_logit_diff": float((image_logits - video_logits).abs().max()),
        "top1_agreement": float((image_logits.argmax(-1) == video_logits.argmax(-1)).float().mean()),
    }


# ----------------------------------------------------------------------------------------------- report


def _pct(value: float | None) -> str:
    return "  n/a " if value is None else f"{100 * value:5.1f} %"


def _epochs(count: int) -> str:
    return f"{count} epoch{'s' if count != 1 else ''}"


def report(summary: dict) -> str:
    """The closing table the demo prints."""
    image, video, static, seconds = (
        summary["image"],
        summary["video"],
        summary["static_clip"],
        summary["seconds"],
    )
    scratch, chained = video["from_scratch"]["results"], video["from_image"]["results"]
    lines = [
        "",
        f"== The three-stage chain ({'fast wiring check' if summary['fast'] else 'default sizes'}) ==",
        f"  image stage   {image['model']}, {image['counts']['train']} train / {image['counts']['val']} val "
        "images, "
        f"{_epochs(image['epochs'])}, lr {image['lr']:g} (= {image['config_lr']:g} x {image['batch']} / "
        f"{image['lr_batch']})",
        f"                val top-1 {_pct(image['results']['top1'])}   "
        f"top-5 {_pct(image['results']['top5'])}",
        f"  static clips  {static['clips']} images as {static['frames']}-frame clips: "
        "max |image - video logits| = "
        f"{static['max_abs_logit_diff']:.2e}, top-1 agreement {_pct(static['top1_agreement']).strip()}",
        f"  video stage   structvit_xs on the motion benchmark ({video['clips']} test clips), "
        f"{_epochs(video['epochs'])} per run, seed {summary['seed']}",
        "                                 top-1     top-5     time-reversed pairs   fit",
    ]
    for label, key in (("from the image checkpoint", "from_image"), ("from scratch", "from_scratch")):
        run, res = video[key], video[key]["results"]
        lines.append(
            f"    {label:<27} {_pct(res['top1'])}   {_pct(res['top5'])}   {_pct(res['reversed_pairs'])}"
            f"               {run['fit_seconds']:.0f} s"
        )
    gain = chained["top1"] - scratch["top1"]
    note = " (fast variant: a wiring check on 14 clips, not a measurement)" if summary["fast"] else ""
    lines += [
        f"    the image start: {100 * gain:+.1f} points of test top-1{note}",
        f"  wall time     {seconds['total']:.0f} s (image data {seconds['image_data']:.0f} s, image fit+test "
        f"{seconds['image']:.0f} s, video data {seconds['video_data']:.0f} s, video from image "
        f"{seconds['video_from_image']:.0f} s, from scratch {seconds['video_from_scratch']:.0f} s, static "
        f"check {seconds['static']:.0f} s); load average {summary['loadavg_start']:.1f} -> "
        f"{summary['loadavg_end']:.1f} "
        f"on {os.cpu_count()} cores",
        f"  summary       {summary['summary_file']}",
    ]
    return "\n".join(lines)


def run_chain(
    data_root: Path,
    runs: Path,
    *,
    fast: bool = False,
    image_epochs: int | None = None,
    video_epochs: int | None = None,
    threads: int | None = None,
    quiet: bool = False,
) -> dict:
    """Run the four steps; returns the summary (also written to `<runs>/chain_summary.json`)."""
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    threads = threads or default_threads()
    suffix = "_fast" if fast else ""
    image_epochs = image_epochs or (FAST_IMAGE_EPOCHS if fast else IMAGE_EPOCHS)
    video_epochs = video_epochs or (FAST_VIDEO_EPOCHS if fast else VIDEO_EPOCHS)
    runs.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    print(
        f"[1/5] image data: the embedded image benchmark as ILSVRC2012 archives, prepared under {data_root}"
    )
    image_root, prepared, seconds["image_data"] = prepare_images(data_root, fast, workers=os.cpu_count() or 1)
    doctor = prepared["doctor"]
    print(
        f"      {image_root}: {prepared['num_classes']} classes, {prepared['counts']['train']} train / "
        f"{prepared['counts']['val']} val images; doctor: {doctor['reencoded']} re-encoded, "
        f"{doctor['quarantined']} "
        f"quarantined ({seconds['image_data']:.1f} s)",
        flush=True,
    )

    crop = (FAST_IMAGE_DATA if fast else IMAGE_DATA)["size"]
    lr0 = config_lr("imagenet.yaml")
    lr = lr0 * IMAGE_BATCH / LR_BATCH
    print(
        f"[2/5] image fit + test: structvit_xs's image network, {crop}² crops, {_epochs(image_epochs)}, "
        f"batch {IMAGE_BATCH}; lr {lr:g} = the config's {lr0:g} x batch {IMAGE_BATCH} / --model.lr_batch "
        f"{LR_BATCH} "
        f"(the config's lr_batch 512 would give {lr0 * IMAGE_BATCH / 512:.2g})",
        flush=True,
    )
    tick = time.perf_counter()
    image = fit_and_test(
        f"chain_image{suffix}",
        "configs/imagenet.yaml",
        [
            "--data.root",
            str(image_root.resolve()),
            "--seed_everything",
            str(SEED),
            *image_overrides(crop, image_epochs),
        ],
        runs,
        [],
        threads,
        quiet,
    )
    seconds["image"] = time.perf_counter() - tick
    print(
        f"      image val top-1 {_pct(image.results.top1)}, top-5 {_pct(image.results.top5)}: "
        f"{image.checkpoint}",
        flush=True,
    )

    print(f"[3/5] video data: the synthetic motion benchmark (as `make demo`) under {data_root}", flush=True)
    index, manifest, seconds["video_data"] = prepare_data(data_root, fast, workers=os.cpu_count() or 1)
    pairs = manifest["reversed_pairs"]
    video_args = ["--data.root", str(Path(index).resolve()), "--seed_everything", str(SEED)]
    video_args += [
        "--data.seed",
        str(SEED),
        *(without(FAST_FIT, "--trainer.max_epochs") if fast else []),  # the epochs are set just below
        "--trainer.max_epochs",
        str(video_epochs),
    ]
    video: dict[str, Run] = {}
    from_image = ["--model.init_from", image.checkpoint, "--model.init_inflation", "centre"]
    for key, label, init in (
        ("from_image", "from the image checkpoint", from_image),
        ("from_scratch", "from scratch (same seed and epochs)", ["--model.init_from", "null"]),
    ):
        print(f"[4/5] video fit + test, {label}: {_epochs(video_epochs)}", flush=True)
        tick = time.perf_counter()
        video[key] = fit_and_test(
            f"chain_video_{key}{suffix}",
            "configs/synthetic.yaml",
            [*video_args, *init],
            runs,
            pairs,
            threads,
            quiet,
        )
        seconds[f"video_{key}"] = time.perf_counter() - tick
        res = video[key].results
        print(
            f"      {label}: test top-1 {_pct(res.top1)}, time-reversed pairs {_pct(res.reversed_pairs)}",
            flush=True,
        )

    print("[5/5] static clips: image network vs centre-inflated video network, same checkpoint", flush=True)
    print(
        '$ python -c "from experiments.imagenet_chain import static_clip_check as s; '
        f"print(s('{image.checkpoint}', '{image_root}', {VIDEO_FRAMES}))\"",
        flush=True,
    )
    tick = time.perf_counter()
    static = static_clip_check(Path(image.checkpoint), image_root, frames=VIDEO_FRAMES)
    seconds["static"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - start

    summary_file = runs / "chain_summary.json"
    summary = {
        "fast": fast,
        "seed": SEED,
        "threads": threads,
        "image": {
            "model": "structvit_xs (image network, conv stem)",
            "root": str(image_root),
            "counts": prepared["counts"],
            "doctor": doctor,
            "epochs": image_epochs,
            "crop_size": crop,
            "batch": IMAGE_BATCH,
            "config_lr": lr0,
            "lr_batch": LR_BATCH,
            "lr": lr,
            **asdict(image),
        },
        "video": {
            "index": str(index),
            "fingerprint": manifest.get("fingerprint"),
            "reversed_pairs": pairs,
            "epochs": video_epochs,
            "clips": video["from_image"].results.clips,
            **{key: asdict(run) for key, run in video.items()},
        },
        "static_clip": static,
        "seconds": seconds,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
        "summary_file": str(summary_file),
    }
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    print(report(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line of `make demo-chain`."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.imagenet_chain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("DATA_ROOT") or "data"),
        help="where both benchmarks are generated (default $DATA_ROOT or ./data)",
    )
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="run folders and chain_summary.json (runs)"
    )
    parser.add_argument("--fast", action="store_true", help="tiny data, 1 epoch per stage: the wiring check")
    parser.add_argument("--image-epochs", type=int, default=None, help=f"default {IMAGE_EPOCHS} (fast: 1)")
    parser.add_argument(
        "--video-epochs", type=int, default=None, help=f"per video run, default {VIDEO_EPOCHS} (fast: 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch threads of the src.cli steps (%(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="hide the output of the src.cli steps")
    args = parser.parse_args(argv)
    for flag in ("image_epochs", "video_epochs", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    run_chain(
        args.data_root.resolve(),
        args.runs.resolve(),
        fast=args.fast,
        image_epochs=args.image_epochs,
        video_epochs=args.video_epochs,
        threads=args.threads,
        quiet=args.quiet,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
