"""The measurements of `make gpu-check` (benchmarks/gpu_check.py), one function per item, per-device settings.

models    training-step clips/s and peak memory of uniformer_s, structvit_s (S = 1) and structvit_s_4_2
          (S = 2), timed steps interleaved (benchmarks.model_step), with the ratios to uniformer_s; then
          uniformer_s and structvit_s_4_2 again with cuDNN autotuning (`torch.backends.cudnn.benchmark`)
structsa  StructSA fast vs reference path, time and memory, at the paper's stage-3 shape (16x224²), as far as
          the reference path fits the memory budget (benchmarks.attention)
convs     the K/V structure convolutions fused or not, channels_last_3d, and the conv blocks' depthwise
          Conv3d layouts, each against the current form (benchmarks.conv_variants)
jpeg_decode torchvision.io.decode_jpeg of ImageNet-like JPEGs: images/s on one CPU thread and, on CUDA,
          batched through nvjpeg, with the largest pixel difference between the two decodes
max_batch the largest training batch of structvit_s_4_2 that fits (doubling, then bisection)
pipeline  the train DataLoader's clips/s with 16 workers, and one worker's decode + augment rate
          (benchmarks.pipeline), to set against the step rate

The CUDA settings are the paper's training shapes (16x224², batch 8, bf16); the CPU settings are tiny, so the dry run executes every line
(`make gpu-check DEVICE=cpu`, run by `make test`); its numbers mean nothing beyond "it ran".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.attention import STAGE3_16F, LayerShape, grid_cases, run_cases
from benchmarks.conv_variants import DepthwiseShape, KVShape, cudnn_benchmark, measure_depthwise, measure_kv
from benchmarks.limits import Budget, device_memory_budget
from benchmarks.memory import is_oom, oom_reason, peak_bytes
from benchmarks.model_step import ModelCase, Trainee, measure_models
from benchmarks.suites import TINY_KINETICS
from benchmarks.timing import time_call
from benchmarks.videos import KINETICS, VideoKind

UNIFORMER = ModelCase("uniformer_s", "uniformer_s")
STRUCTVIT_S = ModelCase("structvit_s (S=1)", "structvit_s", {"kv_stride": 1})
STRUCTVIT_S_4_2 = ModelCase("structvit_s_4_2 (S=2)", "structvit_s", {"kv_stride": 2})
STEP_TARGET = 1.10  # the goal: a structvit_s_4_2 step at most 1.10x uniformer_s's on the GPU


@dataclass(frozen=True)
class BenchConfig:
    """What each item measures on one device (see the module docstring)."""

    device: str
    model_input: tuple[int, int, int]  # batch, frames, size
    model_bf16: bool
    model_reps: int
    model_warmup: int
    autotuned_models: tuple[
        ModelCase, ...
    ]  # measured again with cudnn.benchmark (a no-op on CPU: none there)
    layer: LayerShape
    layer_dtype: torch.dtype
    layer_reps: int
    layer_warmup: int
    reference_case_s: float
    reference_total_s: float
    kv_shapes: tuple[KVShape, ...]
    depthwise_shapes: tuple[DepthwiseShape, ...]
    conv_dtype: torch.dtype
    conv_reps: int
    conv_warmup: int
    max_batch_model: ModelCase
    max_batch_input: tuple[int, int]  # frames, size
    max_batch_start: int
    max_batch_cap: int
    max_batch_limit_mib: float | None  # None: the GPU's own limit (out-of-memory); CPU: a modelled budget
    max_batch_s: float
    jpeg_images: int  # synthetic textured JPEGs, encoded once, decoded on each rep
    jpeg_size: tuple[int, int]  # width, height
    jpeg_quality: int
    jpeg_reps: int
    pipeline_kind: VideoKind
    pipeline_videos: int
    pipeline_workers: int
    pipeline_batch: int
    pipeline_reps: int


def _stage3_kv(batch: int, s: int) -> KVShape:
    return KVShape(f"stage3 16x224² (N=1568), batch {batch}", 320, 5, (8, 14, 14), batch, 4, s)


CONFIGS: dict[str, BenchConfig] = {
    "cuda": BenchConfig(
        device="cuda",
        model_input=(8, 16, 224),
        model_bf16=True,
        model_reps=10,
        model_warmup=3,
        autotuned_models=(UNIFORMER, STRUCTVIT_S_4_2),
        layer=STAGE3_16F,
        layer_dtype=torch.bfloat16,
        layer_reps=10,
        layer_warmup=3,
        reference_case_s=30.0,
        reference_total_s=60.0,
        kv_shapes=(_stage3_kv(8, 1), _stage3_kv(8, 2)),
        depthwise_shapes=(
            DepthwiseShape("stage1 CBlock 5³ (C=64, 8x56²)", 64, 5, (8, 56, 56), 8),
            DepthwiseShape("stage2 CBlock 5³ (C=128, 8x28²)", 128, 5, (8, 28, 28), 8),
            DepthwiseShape("stage1 pos_embed 3³ (C=64, 8x56²)", 64, 3, (8, 56, 56), 8),
            DepthwiseShape("stage3 pos_embed 3³ (C=320, 8x14²)", 320, 3, (8, 14, 14), 8),
        ),
        conv_dtype=torch.bfloat16,
        conv_reps=10,
        conv_warmup=3,
        max_batch_model=STRUCTVIT_S_4_2,
        max_batch_input=(16, 224),
        max_batch_start=8,
        max_batch_cap=1024,
        max_batch_limit_mib=None,
        max_batch_s=60.0,
        jpeg_images=256,
        jpeg_size=(500, 375),  # ImageNet's most common size
        jpeg_quality=90,
        jpeg_reps=5,
        pipeline_kind=KINETICS,
        pipeline_videos=4,
        pipeline_workers=16,
        pipeline_batch=8,
        pipeline_reps=2,
    ),
    "cpu": BenchConfig(
        device="cpu",
        model_input=(2, 4, 32),
        model_bf16=False,
        model_reps=1,
        model_warmup=0,
        autotuned_models=(),
        layer=LayerShape("tiny (N=32)", 128, 2, (2, 4, 4)),
        layer_dtype=torch.float32,
        layer_reps=1,
        layer_warmup=0,
        reference_case_s=10.0,
        reference_total_s=10.0,
        kv_shapes=(
            KVShape("tiny (N=32), batch 2", 128, 2, (2, 4, 4), 2, 4, 1),
            KVShape("tiny (N=32), batch 2", 128, 2, (2, 4, 4), 2, 4, 2),
        ),
        depthwise_shapes=(DepthwiseShape("tiny 5³ (C=16, 2x8²)", 16, 5, (2, 8, 8), 2),),
        conv_dtype=torch.float32,
        conv_reps=1,
        conv_warmup=0,
        max_batch_model=ModelCase("structvit_xs", "structvit_xs"),
        max_batch_input=(4, 32),
        max_batch_start=8,
        max_batch_cap=64,
        max_batch_limit_mib=24.0,  # ~12 MiB at batch 2 and ~0.75 MiB more per clip here; the search bisects
        max_batch_s=40.0,  # ~8 s on 2 idle cores; a loaded host (the suite's other worker) is several times slower
        jpeg_images=8,
        jpeg_size=(64, 48),
        jpeg_quality=90,
        jpeg_reps=3,
        pipeline_kind=TINY_KINETICS,
        pipeline_videos=1,
        pipeline_workers=1,
        pipeline_batch=2,
        pipeline_reps=1,
    ),
}


# ------------------------------------------------------------------------------------------- models
def models_item(cfg: BenchConfig) -> list[dict]:
    """Step time, clips/s and peak memory of the three models side by side, then `autotuned_models` again
    with cuDNN autotuning on (Lightning's `benchmark=True`), with the ratios to uniformer_s of each pass."""
    rows = _model_rows(cfg, [UNIFORMER, STRUCTVIT_S, STRUCTVIT_S_4_2], autotune=False)
    rows += _model_rows(cfg, list(cfg.autotuned_models), autotune=True)
    return rows + step_ratios(rows)


def _model_rows(cfg: BenchConfig, cases: list[ModelCase], autotune: bool) -> list[dict]:
    if not cases:
        return []
    batch, frames, size = cfg.model_input
    with cudnn_benchmark(autotune):
        rows = measure_models(
            cases,
            batch=batch,
            frames=frames,
            size=size,
            reps=cfg.model_reps,
            warmup=cfg.model_warmup,
            device=cfg.device,
            bf16=cfg.model_bf16,
        )
    for row in rows:
        print(
            f"  {row['label']:22s} cudnn.benchmark={autotune!s:5s} {row.get('step_ms', row.get('reason'))} ms/step, "
            f"{row.get('peak_mib')} MiB"
        )
    return [{"item": "models", "cudnn_benchmark": autotune, **row} for row in rows]


def step_ratios(rows: list[dict]) -> list[dict]:
    """Step-time and peak-memory ratios of each StructViT to uniformer_s, from rows of the same pass."""
    out = []
    for autotune in (False, True):
        by_label = {
            r["label"]: r
            for r in rows
            if r.get("status") == "ok" and r.get("cudnn_benchmark") == autotune and r.get("kind") != "ratio"
        }
        base = by_label.get(UNIFORMER.label)
        for case in (STRUCTVIT_S, STRUCTVIT_S_4_2):
            row = by_label.get(case.label)
            if base is None or row is None:
                continue
            ratio = row["step_ms"] / base["step_ms"]
            target = STEP_TARGET if case is STRUCTVIT_S_4_2 else None
            out.append(
                {
                    "item": "models",
                    "label": f"{case.label} / uniformer_s",
                    "kind": "ratio",
                    "status": "ok",
                    "cudnn_benchmark": autotune,
                    "step_ratio": round(ratio, 3),
                    "peak_ratio": round(row["peak_mib"] / base["peak_mib"], 3),
                    "target": target,
                    "target_met": None if target is None else ratio <= target,
                }
            )
    return out


# ----------------------------------------------------------------------------------------- structsa
def structsa_item(cfg: BenchConfig) -> list[dict]:
    """Fast vs reference (and vanilla) at the stage-3 shape, D = 4, S = 1 and 2, forward and train."""
    cases = grid_cases((cfg.layer,), (4,), (1, 2), ("forward", "train"))
    rows = run_cases(
        cases,
        reps=cfg.layer_reps,
        warmup=cfg.layer_warmup,
        device=cfg.device,
        dtype=cfg.layer_dtype,
        budget=Budget(
            device_memory_budget(cfg.device, None if cfg.device == "cuda" else 2 * 2**30),
            cfg.reference_case_s,
        ),
        reference_total_s=cfg.reference_total_s,
        log=print,
    )
    return [{"item": "structsa", **row} for row in rows]


# -------------------------------------------------------------------------------------------- convs
def convs_item(cfg: BenchConfig) -> list[dict]:
    """K/V structure-conv variants and depthwise layouts, each against the current form."""
    rows = []
    for shape in cfg.kv_shapes:
        rows += measure_kv(shape, cfg.device, cfg.conv_dtype, reps=cfg.conv_reps, warmup=cfg.conv_warmup)
    for shape in cfg.depthwise_shapes:
        rows += measure_depthwise(
            shape, cfg.device, cfg.conv_dtype, reps=cfg.conv_reps, warmup=cfg.conv_warmup
        )
    for row in rows:
        print(
            f"  {row['shape']:36s} {row['variant']:30s} {row['ms']:9.3f} ms ({row['vs_current']}x), "
            f"benchmark {row['ms_cudnn_benchmark']:9.3f} ms, exact={row['exact']}"
        )
    return rows


# ---------------------------------------------------------------------------------------- max batch
class _Trainer:
    """One model and optimiser; `trial(batch)` runs training steps at that batch and says whether it fits."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.trainee = Trainee(cfg.max_batch_model, cfg.device, cfg.model_bf16)

    def trial(self, batch: int) -> dict:
        """{batch, fits, peak_mib, step_ms, clips_per_s} or {batch, fits: False, reason}."""
        frames, size = self.cfg.max_batch_input
        row: dict = {"batch": batch}
        try:
            clips = torch.randn(batch, 3, frames, size, size, device=self.cfg.device)
            labels = torch.randint(0, 400, (batch,), device=self.cfg.device)

            def step() -> None:
                self.trainee.step(clips, labels)

            step()  # warm-up (the first trial also creates the optimiser state)
            peak = peak_bytes(step, self.cfg.device)
            seconds = time_call(step, reps=1, warmup=0, device=self.cfg.device).median_s
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            row.update(fits=False, reason=oom_reason(err))
        else:
            row.update(
                peak_mib=round(peak / 2**20, 1),
                step_ms=round(seconds * 1e3, 1),
                clips_per_s=round(batch / seconds, 2),
            )
            limit = self.cfg.max_batch_limit_mib
            row["fits"] = limit is None or peak / 2**20 <= limit
            if not row["fits"]:
                row["reason"] = f"peak {peak / 2**20:.1f} MiB > modelled limit {limit} MiB"
        finally:
            self.trainee.optimizer.zero_grad(set_to_none=True)
            if torch.device(self.cfg.device).type == "cuda":
                torch.cuda.empty_cache()
        return row


def search_largest(trial, start: int, cap: int, deadline: float) -> tuple[int, int | None, list[dict]]:
    """(largest batch that fits, smallest that does not or None, trials): doubling from `start`, then
    bisection to within 1/16 of the answer, stopping at `cap` or when the monotonic clock passes `deadline`."""
    trials: list[dict] = []
    fits, fails = 0, None
    batch = start
    while batch <= cap and time.monotonic() < deadline:
        trials.append(trial(batch))
        if not trials[-1]["fits"]:
            fails = batch
            break
        fits, batch = batch, batch * 2
    while fails is not None and fails - fits > max(1, fits // 16) and time.monotonic() < deadline:
        batch = (fits + fails) // 2
        trials.append(trial(batch))
        fits, fails = (batch, fails) if trials[-1]["fits"] else (fits, batch)
    return fits, fails, trials


def stopped_by(fits: int, fails: int | None, trials: list[dict], cap: int) -> str:
    """Why the search ended: bisected to its tolerance, reached the cap, or ran out of its time budget."""
    if fails is not None and fails - fits <= max(1, fits // 16):
        return "bisected"
    if fails is None and trials and trials[-1]["fits"] and trials[-1]["batch"] * 2 > cap:
        return "cap"
    return "time budget"


def max_batch_item(cfg: BenchConfig) -> list[dict]:
    """The largest training batch of the configured model that fits, with clips/s at each batch tried."""
    frames, size = cfg.max_batch_input
    trainer = _Trainer(cfg)
    fits, fails, trials = search_largest(
        trainer.trial, cfg.max_batch_start, cfg.max_batch_cap, time.monotonic() + cfg.max_batch_s
    )
    for t in trials:
        print(
            f"  batch {t['batch']:4d}: "
            + (
                f"fits, {t['peak_mib']} MiB, {t['clips_per_s']} clips/s"
                if t["fits"]
                else f"does not fit: {t['reason']}"
            )
        )
    best = max((t for t in trials if t["fits"]), key=lambda t: t["batch"], default=None)
    return [
        {
            "item": "max_batch",
            "label": cfg.max_batch_model.label,
            "input": [frames, size],
            "precision": "bf16-autocast" if cfg.model_bf16 else "fp32",
            "status": "ok",
            "largest_batch": fits,
            "smallest_failing": fails,
            "limit": "out of memory"
            if cfg.max_batch_limit_mib is None
            else f"{cfg.max_batch_limit_mib} MiB (modelled)",
            "clips_per_s_at_largest": best["clips_per_s"] if best else None,
            "trials": trials,
            "complete": fails is not None and fails - fits <= max(1, fits // 16),
            "stopped_by": stopped_by(fits, fails, trials, cfg.max_batch_cap),
        }
    ]


# -------------------------------------------------------------------------------------- jpeg decode
def textured_jpegs(count: int, width: int, height: int, quality: int, seed: int = 0) -> list[torch.Tensor]:
    """`count` JPEG files as 1-D uint8 tensors: smooth colour blobs, stripes and fine grain, so the entropy
    coder has photo-like work (flat or pure-noise images decode far faster or slower than photographs)."""
    import torch.nn.functional as F
    from torchvision.io import encode_jpeg

    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    files = []
    for _ in range(count):
        blobs = F.interpolate(
            torch.rand(1, 3, 6, 8, generator=gen), size=(height, width), mode="bicubic", align_corners=False
        )[0]
        freq = 4 + 40 * torch.rand(3, 2, 1, 1, generator=gen)
        stripes = torch.sin(2 * math.pi * (freq[:, 0] * xs + freq[:, 1] * ys))
        grain = torch.randn(3, height, width, generator=gen)
        image = 255 * blobs + 30 * stripes + 12 * grain
        files.append(encode_jpeg(image.clamp(0, 255).to(torch.uint8), quality=quality))
    return files


def jpeg_decode_item(cfg: BenchConfig) -> list[dict]:
    """Images/s of `torchvision.io.decode_jpeg` on one CPU thread and, on CUDA, of the batched nvjpeg decode
    (one call for the whole list), with the largest pixel difference between the two (recorded, not bounded:
    the IDCTs differ by a few grey levels)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    width, height = cfg.jpeg_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points image I/O to torchcodec
        files = textured_jpegs(cfg.jpeg_images, width, height, cfg.jpeg_quality)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            on_cpu = decode_jpeg(files, mode=ImageReadMode.RGB)  # also the warm-up
            cpu = time_call(lambda: decode_jpeg(files, mode=ImageReadMode.RGB), reps=cfg.jpeg_reps, warmup=0)
        finally:
            torch.set_num_threads(threads)
        row: dict = {
            "item": "jpeg_decode",
            "status": "ok",
            "images": len(files),
            "size": [width, height],
            "quality": cfg.jpeg_quality,
            "mean_kib": round(sum(f.numel() for f in files) / len(files) / 1024, 1),
            "reps": cfg.jpeg_reps,
            "cpu_threads": 1,
            "cpu_images_per_s": round(len(files) / cpu.median_s, 1),
        }
        if torch.device(cfg.device).type != "cuda":
            row.update(
                cuda="not run: no CUDA device (the nvjpeg decode is measured on CUDA only)",
                cuda_images_per_s=None,
                cuda_vs_cpu=None,
                max_abs_diff=None,
                mean_abs_diff=None,
            )
        else:

            def decode() -> list[torch.Tensor]:
                return decode_jpeg(files, mode=ImageReadMode.RGB, device=cfg.device)

            on_gpu = decode()  # also the warm-up: nvjpeg's handles and buffers
            gpu = time_call(decode, reps=cfg.jpeg_reps, warmup=0, device=cfg.device)
            diffs = [(g.cpu().short() - c.short()).abs() for g, c in zip(on_gpu, on_cpu)]
            row.update(
                cuda="batched nvjpeg, one call per list",
                cuda_images_per_s=round(len(files) / gpu.median_s, 1),
                cuda_vs_cpu=round(cpu.median_s / gpu.median_s, 1),
                max_abs_diff=max(int(d.max()) for d in diffs),
                mean_abs_diff=round(sum(float(d.float().mean()) for d in diffs) / len(diffs), 3),
            )
    print(
        f"  {row['images']} JPEGs {width}x{height} ({row['mean_kib']} KiB): CPU 1 thread "
        f"{row['cpu_images_per_s']} images/s; CUDA {row['cuda_images_per_s'] or row['cuda']}"
    )
    return [row]


# ----------------------------------------------------------------------------------------- pipeline
def _repeated_index(source: Path, out: Path, repeats: int) -> Path:
    """An index whose train split lists every video of `source` `repeats` times (absolute paths), so one
    pass gives every loader worker several batches without generating more videos."""
    import csv

    from src.data.index import IndexRow, read_classes, write_index

    with open(source / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = read_classes(source)  # the index reader: names with spaces stay whole
    train = [
        IndexRow(
            str((source / r["path"]).resolve()),
            int(r["label"]),
            num_frames=int(r["num_frames"]),
            fps=float(r["fps"]),
        )
        for _ in range(repeats)
        for r in rows
    ]
    write_index(
        out,
        dataset="gpu-check-pipeline",
        classes=classes,
        splits={"train": train, "val": train[:1]},
        version="generated",
    )
    return out


def pipeline_item(cfg: BenchConfig, work: Path) -> list[dict]:
    """One worker's decode + crop rate, the DataLoader's with `pipeline_workers` workers, and the rate of the
    augmentation half that runs on the device."""
    from benchmarks.pipeline import measure_device_part, measure_loader, measure_torchcodec_device
    from benchmarks.videos import video_set

    start = time.perf_counter()
    index = video_set(cfg.pipeline_kind, cfg.pipeline_videos, work / "videos")
    print(f"  {cfg.pipeline_videos} {cfg.pipeline_kind.name} videos in {time.perf_counter() - start:.1f} s")
    clips_per_pass = cfg.pipeline_workers * cfg.pipeline_batch * 2  # two batches per worker and pass
    repeated = _repeated_index(
        index, work / "pipeline-index", math.ceil(clips_per_pass / cfg.pipeline_videos)
    )
    # the loader first: once this process has decoded, the data module starts workers from a forkserver
    # (decord's threads would deadlock forked children), which a training process does not pay
    # the configs' recipe: decord, augmentation on the device (the workers decode and crop)
    common = dict(reps=cfg.pipeline_reps, batch_size=cfg.pipeline_batch)
    rows = [
        measure_loader(
            cfg.pipeline_kind,
            repeated,
            "decord",
            cfg.pipeline_workers,
            warmup=1,
            augment_on="device",
            **common,
        )
    ]
    rows.append(
        measure_loader(cfg.pipeline_kind, index, "decord", 0, warmup=0, augment_on="device", **common)
    )
    # the half that moved: RandAugment, flip, normalise, erase on the batch, on this device
    rows.append(
        measure_device_part(cfg.pipeline_kind, index, "decord", warmup=1, device=cfg.device, **common)
    )
    # torchcodec's decoding on this device (NVDEC on CUDA): speed, and distance to PyAV's frames
    rows.append(
        measure_torchcodec_device(cfg.pipeline_kind, index, cfg.device, reps=cfg.pipeline_reps, warmup=1)
    )
    for row in rows:
        print(
            f"  {row['stage']:15s} workers={row.get('workers', 1):2d}: "
            f"{row.get('clips_per_s', row.get('reason'))} clips/s"
        )
    return [{"item": "pipeline", **row} for row in rows]


def feeding(model_rows: list[dict], pipeline_rows: list[dict]) -> list[dict]:
    """For each model: its step rate against the loader's rate, and the loader workers (cores) one GPU needs."""
    per_worker = next((r for r in pipeline_rows if r.get("in_process") and r.get("status") == "ok"), None)
    loader = next(
        (r for r in pipeline_rows if r.get("stage") == "dataloader" and r.get("status") == "ok"), None
    )
    out = []
    for row in model_rows:
        if (
            row.get("status") != "ok"
            or row.get("kind") == "ratio"
            or row.get("cudnn_benchmark")
            or per_worker is None
        ):
            continue
        rate = row["clips_per_s"]
        out.append(
            {
                "model": row["label"],
                "step_clips_per_s": rate,
                "worker_clips_per_s": per_worker["clips_per_s"],
                "workers_needed": math.ceil(rate / per_worker["clips_per_s"]),
                "loader_workers": loader["workers"] if loader else None,
                "loader_clips_per_s": loader["clips_per_s"] if loader else None,
                "loader_over_step": round(loader["clips_per_s"] / rate, 2) if loader else None,
            }
        )
    return out


ITEMS = ("models", "structsa", "convs", "jpeg_decode", "max_batch", "pipeline")


def run_item(name: str, cfg: BenchConfig, work: Path) -> list[dict]:
    """Run one item by name."""
    if name == "pipeline":
        return pipeline_item(cfg, work)
    return {
        "models": models_item,
        "structsa": structsa_item,
        "convs": convs_item,
        "jpeg_decode": jpeg_decode_item,
        "max_batch": max_batch_item,
    }[name](cfg)
