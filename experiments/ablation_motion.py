"""`make ablation-motion`: does StructSA see motion that plain attention cannot, and which filter init lets it?

The motion-only task: random-dot kinematograms (`python -m data_prep.synthetic --task dots`: 4 frames of an
8x8 grid of dots, half of them moving one cell per frame in one of 8 directions, the rest redrawn every
frame), written as lossless H.264 and decoded once with the project's decoder (`src.data.decoding`). The
model: `pure_attention_tiny` (per-frame 4x4 patches, two pre-norm StructSA + MLP blocks, dim 64, 2 heads,
mean pool), so no convolution outside StructSA mixes frames. Every arm trains with the same budget (AdamW,
lr 1e-3, weight decay 0.05 off the norms and biases, batch 16, 1000 steps, the clips drawn in a seeded
shuffled order) and is tested on all test clips. Per arm and seed it records the test accuracy curve, the
time per step, the mean pairwise cosine similarity of each channel's D key filters (and value filters)
after training, and the test accuracy with each channel's D filters replaced by their mean (a model that
uses D distinct structures loses much; one that uses a single structure loses little).

    python -m experiments.ablation_motion --data-root data --out experiments/results/ablation_motion.json \
        [--arms D0 D1-identity D4-shifted ...] [--seeds 0 1 2] [--steps 1000] [--jobs 2] [--doc BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.tables import write_section
from data_prep.synthetic import generate_dataset
from src.data.decoding import read_frames
from src.data.transforms import MEAN, STD
from src.models import build_model
from src.optim import param_groups_weight_decay

SECTION = "## Motion"
_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1, 1)
MODEL = "pure_attention_tiny"
DATASET = dict(train=8000, val=1000, test=1000, frames=4, size=32)


@dataclass(frozen=True)
class Arm:
    """One row: D, the structure-filter init, and whether the model gets a learned position embedding."""

    name: str
    structure_dim: int
    struct_init: str = "identity"
    pos_embed: str = "none"
    # fine-tuning: start from the saved model of arm `init_from` with the same seed (--save-models folder); the
    # StructSA filters it lacks are set with `struct_init`
    init_from: str | None = None

    def overrides(self) -> dict:
        return dict(structure_dim=self.structure_dim, struct_init=self.struct_init, pos_embed=self.pos_embed)


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("D0", 0),
        Arm("D0-pos", 0, pos_embed="learned"),
        Arm("D1-identity", 1, "identity"),
        Arm("D1-noisy_identity", 1, "noisy_identity"),
        Arm("D1-random", 1, "random"),
        Arm("D4-identity", 4, "identity"),
        Arm("D4-noisy_identity", 4, "noisy_identity"),
        Arm("D4-shifted", 4, "shifted"),
        Arm("D4-random", 4, "random"),
        # from a trained plain-attention model (with positions: the only plain one that learns the task at all)
        Arm("D4-pos-from-D0-pos-identity", 4, "identity", "learned", init_from="D0-pos"),
        Arm("D4-pos-from-D0-pos-shifted", 4, "shifted", "learned", init_from="D0-pos"),
    )
}
DEFAULT_ARMS = (
    "D0",
    "D0-pos",
    "D1-identity",
    "D1-random",
    "D4-identity",
    "D4-noisy_identity",
    "D4-shifted",
    "D4-random",
)


@dataclass
class Result:
    """One arm trained with one seed."""

    arm: str
    seed: int
    top1: float
    curve: list[tuple[int, float]]  # (step, test top-1); step 0 only for a fine-tuned arm
    seconds_per_step: float
    key_filter_cosine: float | None = None  # mean pairwise cosine of each channel's D key filters
    value_filter_cosine: float | None = None
    top1_mean_filters: float | None = None  # test top-1 with every channel's D filters replaced by their mean
    params: int = 0
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ data
def load_split(index: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip of `split` decoded with the project's decoder: uint8 (N, T, H, W, 3) and labels (N,), cached."""
    manifest = json.loads((index / "manifest.json").read_text())
    cache = index / f".decoded_{split}_{manifest['fingerprint']}.npz"
    if cache.is_file():
        data = np.load(cache)
        return torch.from_numpy(data["clips"]), torch.from_numpy(data["labels"])
    with open(index / f"{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    frames = manifest["generation"]["frames"]
    clips = np.stack([read_frames(index / r["path"], list(range(frames))).numpy() for r in rows])
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}.npz")
    np.savez(tmp, clips=clips, labels=labels)
    os.replace(tmp, cache)
    return torch.from_numpy(clips), torch.from_numpy(labels)


def to_input(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> normalised float (N, 3, T, H, W), the project's mean and std."""
    x = clips.permute(0, 4, 1, 2, 3).float().div_(255)
    return (x - _MEAN) / _STD


# ------------------------------------------------------------------------------------------------ analysis
@torch.no_grad()
def accuracy(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    """Top-1 over all clips, in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        correct += (model(to_input(clips[i : i + batch])).argmax(1) == labels[i : i + batch]).sum().item()
    model.train()
    return correct / len(labels)


def filter_cosine(model: torch.nn.Module, which: str) -> float | None:
    """Mean over channels (and StructSA layers) of the mean pairwise cosine similarity of the D filters."""
    values = []
    for m in model.structsa_modules():
        conv = getattr(m, which)
        if conv is None or m.structure_dim < 2:
            return None
        w = F.normalize(conv.weight.detach().reshape(m.dim, m.structure_dim, -1), dim=-1)
        cos = w @ w.transpose(1, 2)  # (C, D, D)
        d = m.structure_dim
        values.append(((cos.sum((1, 2)) - d) / (d * (d - 1))).mean().item())
    return statistics.fmean(values)


@torch.no_grad()
def mean_filter_accuracy(model: torch.nn.Module, clips: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 with each channel's D key and value filters replaced by their mean (the model restored after)."""
    modules = [m for m in model.structsa_modules() if m.structure_dim >= 2]
    if not modules:
        return None
    saved = [(m.k_struct.weight.clone(), m.v_struct.weight.clone()) for m in modules]
    for m in modules:
        for conv in (m.k_struct, m.v_struct):
            w = conv.weight.view(m.dim, m.structure_dim, -1)
            w.copy_(w.mean(1, keepdim=True).expand_as(w))
    try:
        return accuracy(model, clips, labels)
    finally:
        for m, (k, v) in zip(modules, saved):
            m.k_struct.weight.copy_(k)
            m.v_struct.weight.copy_(v)


# ------------------------------------------------------------------------------------------------ training
def save_model(model: torch.nn.Module, arm: Arm, path: Path, manifest: dict) -> None:
    """Write `model` as a checkpoint that `src.trained.load_trained` rebuilds (so `python -m src.visualize
    --ckpt` draws it): weights, hyper-parameters and the protocol of this study (every frame, full size)."""
    from src.data.protocol import CHECKPOINT_KEY, EvalProtocol

    frames, size = manifest["generation"]["frames"], manifest["generation"]["size"]
    classes = (Path(manifest["root"]) / "classes.txt").read_text().split() if "root" in manifest else None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {
                "backbone": {"variant": MODEL, **arm.overrides(), "num_frames": frames, "crop_size": size},
                "num_classes": manifest["num_classes"],
                "class_names": classes,
            },
            CHECKPOINT_KEY: EvalProtocol(frames, "segment", 1, size, (1, 1), MEAN, STD).to_dict(),
        },
        path,
    )


@torch.no_grad()
def start_from(
    model: torch.nn.Module, arm: Arm, seed: int, save_dir: Path | None, test_x: torch.Tensor
) -> dict:
    """Load the saved model of `arm.init_from` (same seed) into `model`; return the function gap at step 0."""
    from src.models.checkpoints import load_checkpoint_file, load_pretrained, read_state_dict

    path = (save_dir or Path()) / f"{arm.init_from}_seed{seed}.ckpt"
    if save_dir is None or not path.is_file():
        raise FileNotFoundError(
            f"{arm.name} starts from {path}: train arm {arm.init_from} with --save-models first"
        )
    state, _ = read_state_dict(load_checkpoint_file(path))  # the backbone's tensors, prefix removed
    load_pretrained(model, state, struct_init=arm.struct_init)
    source = build_model(
        MODEL,
        num_classes=model.num_classes,
        **{
            **ARMS[arm.init_from].overrides(),
            "num_frames": model.grid[0],
            "crop_size": model.grid[1] * model.patch_size,
        },
    )
    source.load_state_dict(state)
    x = to_input(test_x[:250])
    model.eval()
    source.eval()
    new, old = model(x), source(x)
    model.train()
    return {
        "source": str(path),
        "step0_max_logit_gap": (new - old).abs().max().item(),
        "step0_prediction_agreement": (new.argmax(1) == old.argmax(1)).float().mean().item(),
    }


def train_arm(
    arm: Arm,
    seed: int,
    index: Path,
    steps: int,
    batch: int,
    lr: float,
    eval_every: int,
    save_dir: Path | None = None,
) -> Result:
    """Train `arm` from scratch with `seed` and measure it (one torch thread; called in a worker process)."""
    torch.set_num_threads(1)
    train_x, train_y = load_split(index, "train")
    test_x, test_y = load_split(index, "test")
    manifest = json.loads((index / "manifest.json").read_text())
    frames, size = manifest["generation"]["frames"], manifest["generation"]["size"]
    torch.manual_seed(seed)
    model = build_model(
        MODEL, num_classes=manifest["num_classes"], num_frames=frames, crop_size=size, **arm.overrides()
    )
    extra: dict = {}
    curve: list[tuple[int, float]] = []
    if arm.init_from:
        extra = start_from(model, arm, seed, save_dir, test_x)
        curve.append((0, accuracy(model, test_x, test_y)))
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05, model.no_weight_decay()), lr=lr)
    order = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(train_y), generator=order), 0
    train_seconds = 0.0
    for step in range(1, steps + 1):
        if pos + batch > len(perm):
            perm, pos = torch.randperm(len(train_y), generator=order), 0
        idx = perm[pos : pos + batch]
        pos += batch
        start = time.perf_counter()
        loss = F.cross_entropy(model(to_input(train_x[idx])), train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            curve.append((step, accuracy(model, test_x, test_y)))
    if save_dir is not None:
        save_model(model, arm, save_dir / f"{arm.name}_seed{seed}.ckpt", {**manifest, "root": str(index)})
    return Result(
        arm=arm.name,
        seed=seed,
        top1=curve[-1][1],
        curve=curve,
        seconds_per_step=train_seconds / steps,
        key_filter_cosine=filter_cosine(model, "k_struct"),
        value_filter_cosine=filter_cosine(model, "v_struct"),
        top1_mean_filters=mean_filter_accuracy(model, test_x, test_y),
        params=sum(p.numel() for p in model.parameters()),
        extra=extra,
    )


def _train_job(args: tuple) -> dict:
    arm, seed, index, steps, batch, lr, eval_every, save_dir = args
    result = train_arm(
        ARMS[arm], seed, Path(index), steps, batch, lr, eval_every, Path(save_dir) if save_dir else None
    )
    print(
        f"  {arm} seed {seed}: top-1 {100 * result.top1:.1f} %, {1000 * result.seconds_per_step:.0f} ms/step",
        file=sys.stderr,
        flush=True,
    )
    return asdict(result)


# ------------------------------------------------------------------------------------------------ report
def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(results: list[dict], arms: list[str]) -> str:
    """Markdown: one row per arm, mean ± std over seeds (std of the seeds, n - 1)."""
    steps = sorted({s for r in results for s, _ in r["curve"]})
    head = [
        "arm",
        "D",
        "init",
        "position",
        "seeds",
        "test top-1 (%)",
        *[f"@{s}" for s in steps[:-1]],
        "key filters cos",
        "value filters cos",
        "top-1, filters → mean (%)",
        "ms / step",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in arms:
        rows = [r for r in results if r["arm"] == name]
        if not rows:
            continue
        arm = ARMS[name]
        curves = [dict(map(tuple, r["curve"])) for r in rows]
        at = [_pct([c[s] for c in curves]) if all(s in c for c in curves) else "–" for s in steps[:-1]]
        cos_k = [r["key_filter_cosine"] for r in rows if r["key_filter_cosine"] is not None]
        cos_v = [r["value_filter_cosine"] for r in rows if r["value_filter_cosine"] is not None]
        mean_f = [r["top1_mean_filters"] for r in rows if r["top1_mean_filters"] is not None]
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    str(arm.structure_dim),
                    arm.struct_init if arm.structure_dim else "–",
                    arm.pos_embed,
                    str(len(rows)),
                    _pct([r["top1"] for r in rows]),
                    *at,
                    f"{statistics.fmean(cos_k):.2f}" if cos_k else "–",
                    f"{statistics.fmean(cos_v):.2f}" if cos_v else "–",
                    _pct(mean_f) if mean_f else "–",
                    f"{1000 * statistics.median(r['seconds_per_step'] for r in rows):.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def step_times(arms: list[str], batch: int = 16, reps: int = 5) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, AdamW) per arm, one thread, on random clips.

    Each arm is timed with `torch.utils.benchmark.Timer` (`blocked_autorange`), the arms interleaved `reps`
    times so that a change in the machine's load touches them alike; the training runs' own step times are
    measured under whatever else the machine runs and are only indicative.
    """
    from torch.utils.benchmark import Timer

    torch.set_num_threads(1)
    steps = {}
    for name in arms:
        arm = ARMS[name]
        model = build_model(MODEL, num_classes=8, **arm.overrides())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randn(batch, 3, 4, 32, 32), torch.randint(0, 8, (batch,))

        def step(model=model, optimizer=optimizer, x=x, y=y) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        step()
        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(reps):
        for name in arms:
            times[name].append(
                Timer("step()", globals={"step": steps[name]}).blocked_autorange(min_run_time=1.0).median
            )
    return {name: statistics.median(values) for name, values in times.items()}


def finetune_table(results: list[dict], arms: list[str]) -> str:
    """Markdown for the fine-tuned arms: the function gap to the source model at step 0, then the curve."""
    lines = [
        "| arm | start of the filters the source lacks | seeds | max abs logit change at step 0 | "
        "predictions kept at step 0 (%) | test top-1 by step (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name in arms:
        rows = [r for r in results if r["arm"] == name and r["extra"]]
        if not rows:
            continue
        steps = sorted({s for r in rows for s, _ in r["curve"]})
        curve = ", ".join(f"{s}: {_pct([dict(map(tuple, r['curve']))[s] for r in rows])}" for s in steps)
        gap = statistics.fmean(r["extra"]["step0_max_logit_gap"] for r in rows)
        kept = _pct([r["extra"]["step0_prediction_agreement"] for r in rows])
        lines.append(f"| {name} | {ARMS[name].struct_init} | {len(rows)} | {gap:.2g} | {kept} | {curve} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ablation_motion", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data-root", type=Path, default=Path("data"), help="the dots index goes to <root>/dots"
    )
    parser.add_argument("--out", type=Path, default=Path("experiments/results/ablation_motion.json"))
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=sorted(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time, one torch thread each")
    parser.add_argument(
        "--dataset",
        default=None,
        help="train,val,test,frames,size of the dots index (default 8000,1000,1000,4,32)",
    )
    parser.add_argument(
        "--save-models",
        type=Path,
        default=None,
        help="write each trained model to DIR/<arm>_seed<n>.ckpt (for python -m src.visualize)",
    )
    parser.add_argument(
        "--time-steps",
        action="store_true",
        help="only time one training step per arm (interleaved, median of 5) and print the ratios",
    )
    parser.add_argument(
        "--doc", type=Path, default=None, help="write the table into this markdown file's '## Motion'"
    )
    a = parser.parse_args(argv)
    if a.time_steps:
        times = step_times(a.arms, a.batch)
        base = times.get("D0") or min(times.values())
        for name, seconds in times.items():
            print(f"{name:32s} {1000 * seconds:7.1f} ms / step  {seconds / base:5.2f}x")
        return 0
    sizes = dict(DATASET)
    if a.dataset:
        sizes = dict(zip(("train", "val", "test", "frames", "size"), map(int, a.dataset.split(","))))
    index = a.data_root / "dots"
    start = time.perf_counter()
    generate_dataset(index, task="dots", workers=max(a.jobs, 1), **sizes)
    load_split(index, "train")
    load_split(index, "test")  # decode once here, not in every worker
    # every finished training is appended to <out>.partial.jsonl at once, and a rerun with the same budget skips
    # the (arm, seed) pairs found there: an interrupted ablation loses at most the trainings in flight
    partial = a.out.with_suffix(".partial.jsonl")
    budget = {"steps": a.steps, "batch": a.batch, "lr": a.lr, "dataset": sizes}
    latest = {(r["arm"], r["seed"]): r for r in _read_partial(partial) if r.get("budget") == budget}
    done = list(latest.values())
    finished = {(r["arm"], r["seed"]) for r in done}
    if a.save_models:  # the models are wanted: train every pair again
        done, finished = [], set()
    jobs = [
        (arm, seed, str(index), a.steps, a.batch, a.lr, a.eval_every, a.save_models and str(a.save_models))
        for arm in a.arms
        for seed in a.seeds
        if (arm, seed) not in finished
    ]
    print(
        f"ablation-motion: {len(jobs)} trainings ({len(finished)} found in {partial}), {a.jobs} at a time",
        file=sys.stderr,
        flush=True,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    results = [r for r in done if r["arm"] in a.arms and r["seed"] in a.seeds]
    pool = multiprocessing.get_context("spawn").Pool(a.jobs) if a.jobs > 1 and jobs else None
    try:
        stream = pool.imap_unordered(_train_job, jobs, chunksize=1) if pool else map(_train_job, jobs)
        with open(partial, "a") as f:
            for result in stream:
                result["budget"] = budget
                f.write(json.dumps(result) + "\n")
                f.flush()
                results.append(result)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    order = {(arm, seed): i for i, (arm, seed) in enumerate((x, y) for x in a.arms for y in a.seeds)}
    results.sort(key=lambda r: order[(r["arm"], r["seed"])])
    seconds = time.perf_counter() - start
    command = "python -m experiments.ablation_motion " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {
        "command": command,
        "seconds": round(seconds),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "dataset": sizes,
        "steps": a.steps,
        "batch": a.batch,
        "lr": a.lr,
        "results": results,
    }
    a.out.write_text(json.dumps(report, indent=1))
    text = table(results, a.arms)
    finetune = finetune_table(results, a.arms)
    if finetune:
        text += (
            "\n\nFine-tuned from a saved model (step 0 = the loaded model, before any update):\n\n" + finetune
        )
    print(text)
    if a.doc:
        write_section(a.doc, section_text(report, text), SECTION)
    return 0


def _read_partial(path: Path) -> list[dict]:
    """The results already appended to `path` (a line cut short by a kill is ignored)."""
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return results


def _train_minutes(report: dict) -> float:
    """Minutes spent in training steps over every result (evaluation excluded), summed over the trainings."""
    return sum(r["seconds_per_step"] for r in report["results"]) * report["steps"] / 60


def section_text(report: dict, text: str) -> str:
    """The BENCHMARKS.md section: the setup, the command, the table (the reading is written by hand below it)."""
    return "\n".join(
        [
            f"Command: `{report['command']}` ({len(report['results'])} trainings, {_train_minutes(report):.0f} min of training "
            f"steps in all, two at a time on {report['cpu_count']} CPU cores; torch {report['torch']}, {report['date']}; a "
            f"rerun with the same budget resumes from `<out>.partial.jsonl`). Task: random-dot kinematograms "
            f"({report['dataset']['frames']} frames, 8x8 dots of 4 px, half coherent, 8 directions; "
            f"{report['dataset']['train']} train / {report['dataset']['test']} test clips, lossless H.264, decoded by "
            f"the project's decoder). Model: `{MODEL}`. Budget: {report['steps']} steps of batch {report['batch']}, "
            f"AdamW lr {report['lr']}. Columns @N: test top-1 after N steps. Chance: 12.5 %. ms / step: the median "
            f"over the arm's trainings, measured while other trainings shared the machine (indicative only; the "
            f"interleaved timing below is the one to compare).",
            "",
            text,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
