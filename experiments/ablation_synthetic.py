"""`make ablation-synthetic`: the paper's Table 1a (structure dimension D) on the synthetic motion benchmark.

Trains structvit_xs with D in {0, 1, 4} (plain attention as in UniFormer, ConvSA, StructSA) for the same
budget and several seeds, plus a frame-order-agnostic control (D = 4, the frames of every clip shuffled in
time at the input, in training and in testing), each through `python -m src.cli fit` and `test` with
`configs/synthetic.yaml`. Writes mean ± std of test top-1 and of the accuracy on the time-reversed class
pairs, parameters, GFLOPs (src.models.flops) and train time to a results JSON and, with `--doc`, to the
"## Ablation" section of BENCHMARKS.md.

    python -m experiments.ablation_synthetic --data-root data --runs runs/ablation \
        [--dims 0 1 4] [--seeds 0 1 2] [--epochs N] [--limit N] [--no-control] [--doc BENCHMARKS.md]

The budget options (`--epochs`, `--limit`, `--frames`, `--size`) change every run alike; left unset,
each run uses the values of configs/synthetic.yaml (the demo's recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from benchmarks.tables import write_section
from data_prep.synthetic import generate_dataset
from src.models.structsa import STRUCT_INITS
from src.paths import REPO_ROOT, configs_dir
from src.runs import best_checkpoint, next_version, run_cli, test_results

SECTION = "## Ablation"


def synthetic_config() -> Path:
    """configs/synthetic.yaml: the demo's recipe, which every run of the ablation starts from."""
    return configs_dir() / "synthetic.yaml"


class ShuffleFrames(pl.Callback):
    """Shuffles the frames of every clip in time before the model sees them: the frame-order-agnostic control.

    Works on the batch dict in place at `on_{train,validation,test,predict}_batch_start`, so the step that
    follows gets the shuffled `video` ((B, 3, T, H, W) or (B, V, 3, T, H, W)); every clip (and every view)
    draws its own permutation. Appearance and the set of frames are kept; only their order is lost.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def shuffle(self, video: torch.Tensor) -> torch.Tensor:
        """`video` (..., 3, T, H, W) with each clip's T frames in a random order."""
        lead, frames = video.shape[:-4], video.shape[-3]
        order = torch.rand(*lead, frames, generator=self.generator).argsort(dim=-1).to(video.device)
        index = order.view(*lead, 1, frames, 1, 1).expand_as(video)
        return video.gather(-3, index)

    def _apply(self, batch: Any) -> None:
        if (
            isinstance(batch, dict)
            and isinstance(batch.get("video"), torch.Tensor)
            and batch["video"].numel()
        ):
            batch["video"] = self.shuffle(batch["video"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._apply(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._apply(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._apply(batch)


@dataclass
class Arm:
    """One row of the table: a structure dimension, with or without shuffled frames."""

    label: str
    structure_dim: int
    shuffle: bool = False
    struct_init: str | None = None  # StructSA filter init (None: the config's / variant's default)


@dataclass
class RunResult:
    """One training + test of one arm and seed."""

    arm: str
    structure_dim: int
    shuffle: bool
    seed: int
    run_dir: str
    top1: float
    top5: float | None
    reversed_pairs: float | None
    reversed_confusion: float | None
    train_seconds: float
    test_seconds: float


def arms(dims: list[int], control: bool, struct_init: str | None = None) -> list[Arm]:
    """The table's rows: D = 0 (UniFormer attention), 1 (ConvSA), 4 (StructSA), ..., then the control."""
    names = {0: "D=0 (plain attention, UniFormer)", 1: "D=1 (ConvSA)"}
    init = f", {struct_init} init" if struct_init else ""
    rows = [
        Arm(
            names.get(d, f"D={d} (StructSA)") + (init if d else ""), d, struct_init=struct_init if d else None
        )
        for d in dims
    ]
    if control:
        rows.append(
            Arm(
                f"D={max(dims)}{init}, frames shuffled in time",
                max(dims),
                shuffle=True,
                struct_init=struct_init,
            )
        )
    return rows


def budget_args(
    epochs: int | None,
    limit: int | None,
    frames: int | None,
    size: int | None,
    num_workers: int | None = None,
) -> list[str]:
    """`src.cli fit` overrides that set the shared budget and the loader workers (only the options given)."""
    args: list[str] = []
    if num_workers is not None:
        args += ["--data.num_workers", str(num_workers)]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    if limit is not None:
        args += ["--data.limit", str(limit)]
    if frames is not None:
        args += ["--data.num_frames", str(frames)]
    if size is not None:
        args += ["--data.crop_size", str(size)]
    return args


def run_name(arm: Arm) -> str:
    """The run folder's name of an arm: D<d>[_<init>], with _shuffled for the control."""
    init = f"_{arm.struct_init}" if arm.struct_init else ""
    return f"D{arm.structure_dim}{init}" + ("_shuffled" if arm.shuffle else "")


def plan_versions(plan: list[tuple[Arm, int]], runs: Path) -> list[int]:
    """The `version_<n>` of every planned run, fixed before any starts (parallel runs must not collide)."""
    taken: dict[str, int] = {}
    versions = []
    for arm, _ in plan:
        name = run_name(arm)
        taken[name] = taken.get(name, next_version(runs, name) - 1) + 1
        versions.append(taken[name])
    return versions


def fit_and_test(
    name: str, version: int, seed: int, index: Path, runs: Path, extra: list[str], threads: int | None
) -> tuple[Path, float, float]:
    """`src.cli fit` of configs/synthetic.yaml with `extra` options into `<runs>/<name>/version_<version>`, then
    `src.cli test` of its best checkpoint with the run's own config; returns (run folder, fit s, test s)."""
    run_dir = runs / name / f"version_{version}"
    common = ["--trainer.logger.init_args.save_dir", str(runs), "--trainer.logger.init_args.name", name]
    fit = ["fit", "--config", str(synthetic_config().relative_to(REPO_ROOT)), "--data.root", str(index), *common]  # fmt: skip
    fit += ["--trainer.logger.init_args.version", str(version), "--seed_everything", str(seed)]  # fmt: skip
    fit += ["--data.seed", str(seed), "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    train_s = run_cli(fit, threads=threads, log=run_dir.parent / f"version_{version}.fit.log")
    test = ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(best_checkpoint(run_dir))]
    test += [*common, "--trainer.logger.init_args.version", f"version_{version}/test"]  # fmt: skip
    test_s = run_cli(test, threads=threads, log=run_dir.parent / f"version_{version}.test.log")
    return run_dir, train_s, test_s


def run_one(
    arm: Arm,
    seed: int,
    version: int,
    index: Path,
    runs: Path,
    pairs: list[list[int]],
    budget: list[str],
    threads: int | None,
) -> RunResult:
    """Fit and test one arm with one seed; the test uses the best checkpoint and the run's own config."""
    extra = ["--model.backbone.structure_dim", str(arm.structure_dim), *budget]
    if arm.struct_init:
        extra += ["--model.backbone.struct_init", arm.struct_init]
    if arm.shuffle:
        spec = {"class_path": "experiments.ablation_synthetic.ShuffleFrames", "init_args": {"seed": seed}}
        extra += [f"--trainer.callbacks+={json.dumps(spec)}"]
    print(f"--- {arm.label}, seed {seed}: {runs / run_name(arm) / f'version_{version}'}", flush=True)
    run_dir, train_s, test_s = fit_and_test(run_name(arm), version, seed, index, runs, extra, threads)
    res = test_results(run_dir / "test", pairs)
    print(
        f"    {arm.label}, seed {seed}: top-1 {100 * res.top1:.1f} %, reversed pairs "
        f"{100 * (res.reversed_pairs or 0):.1f} %, train {train_s:.0f} s",
        flush=True,
    )
    return RunResult(
        arm.label, arm.structure_dim, arm.shuffle, seed, str(run_dir), res.top1, res.top5, res.reversed_pairs,
        res.reversed_confusion, train_s, test_s,
    )  # fmt: skip


def mean_std(values: list[float]) -> str:
    """'mean ± std' in percent (std over seeds; '± –' for one seed)."""
    mean = 100 * statistics.fmean(values)
    std = f"{100 * statistics.stdev(values):.1f}" if len(values) > 1 else "–"
    return f"{mean:.1f} ± {std}"


def table(results: list[RunResult], costs: dict[int, tuple[int, float]]) -> str:
    """Markdown table: one row per arm (mean ± std over its seeds)."""
    lines = [
        "| model | seeds | test top-1 (%) | reversed pairs top-1 (%) | taken for the reversed partner (%) | params "
        "| GFLOPs / clip | train time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order: list[str] = []
    for r in results:
        if r.arm not in order:
            order.append(r.arm)
    for arm in order:
        rows = [r for r in results if r.arm == arm]
        params, gflops = costs[rows[0].structure_dim]
        rev = [r.reversed_pairs for r in rows if r.reversed_pairs is not None]
        swapped = [r.reversed_confusion for r in rows if r.reversed_confusion is not None]
        minutes = statistics.fmean(r.train_seconds for r in rows) / 60
        lines.append(
            f"| {arm} | {len(rows)} | {mean_std([r.top1 for r in rows])} | "
            f"{mean_std(rev) if rev else 'n/a'} | {mean_std(swapped) if swapped else 'n/a'} | "
            f"{params / 1e6:.2f} M | {gflops:.3f} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def model_costs(dims: list[int], frames: int, size: int, num_classes: int) -> dict[int, tuple[int, float]]:
    """(parameters, GFLOPs as multiply-adds) of structvit_xs per D for one (1, 3, frames, size, size) clip."""
    from src.models.flops import model_flops

    out = {}
    for d in dims:
        rep = model_flops("structvit_xs", frames=frames, size=size, num_classes=num_classes, structure_dim=d)
        out[d] = (rep.params, rep.gflops)
    return out


def effective_budget(budget: list[str]) -> dict[str, Any]:
    """Epochs, frames, crop size, batch and train limit of the runs: configs/synthetic.yaml + the overrides."""
    config = yaml.safe_load(synthetic_config().read_text())
    values = {
        "epochs": config["trainer"]["max_epochs"],
        "frames": config["data"]["num_frames"],
        "size": config["data"]["crop_size"],
        "batch": config["data"]["batch_size"],
        "limit": None,
        "workers": config["data"]["num_workers"],
    }
    keys = {
        "--trainer.max_epochs": "epochs",
        "--data.num_frames": "frames",
        "--data.crop_size": "size",
        "--data.limit": "limit",
        "--data.num_workers": "workers",
    }
    for flag, value in zip(budget[::2], budget[1::2]):
        values[keys[flag]] = int(value)
    return values


def section_text(results: list[RunResult], costs: dict, budget: dict, command: str, seconds: float) -> str:
    """The BENCHMARKS.md section: what ran, the table, the reading."""
    load = os.getloadavg()[0]
    limit = (
        f"first {budget['limit']} clips of each split"
        if budget["limit"]
        else "all 3000 train / 600 val / 600 test clips"
    )
    return "\n".join(
        [
            "structvit_xs on the synthetic motion benchmark (`data_prep.synthetic`: 14 motion classes, 12 of them in "
            "6 time-reversed pairs), the paper's Table 1a in miniature. Every run: `python -m src.cli fit` with "
            "`configs/synthetic.yaml` and `--model.backbone.structure_dim D`, then `test` on its best checkpoint. "
            "*Reversed pairs* is top-1 over the test clips of the 12 paired classes; *taken for the reversed partner* "
            "is the share of those clips predicted as the time-reversal of their class (a model blind to frame order "
            "splits a pair about evenly, so about as many as it gets right). "
            "The control shuffles the frames of every clip in time at the input, in training and in testing "
            "(`experiments.ablation_synthetic.ShuffleFrames`).",
            "",
            f"Command: `{command}` ({len(results)} trainings, {seconds / 60:.0f} min in all; {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, load average {load:.1f} at the end, {time.strftime('%Y-%m-%d')}). Budget per run: "
            f"{budget['epochs']} epochs, {budget['frames']} frames at {budget['size']}², batch {budget['batch']}, {limit}, "
            f"{budget['workers']} loader worker(s).",
            "",
            table(results, costs),
            "",
            f"GFLOPs: multiply-adds per {budget['frames']}×{budget['size']}² clip (`python -m src.models.flops --model "
            f"structvit_xs --frames {budget['frames']} --size {budget['size']} --num-classes 14 --structure-dim D`). "
            "Train time: wall time of the fit command (validation each epoch included) on the shared machine.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the ablation grid; print the table; write results JSON and (with --doc) the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ablation_synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("DATA_ROOT") or "data"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[0, 1, 4], help="structure dimensions D (default 0 1 4)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument(
        "--control-seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds of the shuffled-frames control (default: the same as --seeds)",
    )
    parser.add_argument("--no-control", action="store_true", help="skip the shuffled-frames control")
    parser.add_argument(
        "--struct-init",
        choices=STRUCT_INITS,
        default=None,
        help="StructSA filter init of the D >= 1 runs (default: the variant's)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default: configs/synthetic.yaml)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N clips of each split (data.limit), to fit a smaller budget",
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: the config's)")
    parser.add_argument("--size", type=int, default=None, help="crop size (default: the config's)")
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trainings at once (default 1); on 2 cores, 2 jobs with --threads 1 --num-workers 1 "
        "use both cores for the models",
    )
    parser.add_argument(
        "--num-workers", type=int, default=None, help="loader workers per run (default: the config's)"
    )
    parser.add_argument(
        "--doc", type=Path, default=None, help="write the table into this file's '## Ablation' section"
    )
    parser.add_argument("--results", type=Path, default=Path("experiments/results/ablation_synthetic.json"))
    args = parser.parse_args(argv)
    if any(d < 0 for d in args.dims):
        parser.error(f"--dims must be >= 0, got {args.dims}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    start = time.perf_counter()
    index = args.data_root / "synthetic"
    manifest = generate_dataset(index, workers=os.cpu_count() or 1, progress=True)
    runs = args.runs.resolve()
    budget = budget_args(args.epochs, args.limit, args.frames, args.size, args.num_workers)
    plan = [
        (arm, seed)
        for arm in arms(args.dims, not args.no_control, args.struct_init)
        for seed in (args.control_seeds or args.seeds if arm.shuffle else args.seeds)
    ]
    versions = plan_versions(plan, runs)
    print(f"ablation: {len(plan)} trainings into {runs}, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # threads only wait on the src.cli subprocesses
        results = list(
            pool.map(
                lambda job: run_one(
                    job[0][0],
                    job[0][1],
                    job[1],
                    index.resolve(),
                    runs,
                    manifest["reversed_pairs"],
                    budget,
                    args.threads,
                ),
                zip(plan, versions),
            )
        )
    seconds = time.perf_counter() - start

    eff = effective_budget(budget)
    costs = model_costs(
        sorted({r.structure_dim for r in results}), eff["frames"], eff["size"], manifest["num_classes"]
    )
    command = "python -m experiments.ablation_synthetic " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = section_text(results, costs, eff, command, seconds)
    print("\n" + table(results, costs), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {
                "command": command,
                "budget": eff,
                "seconds": seconds,
                "costs": {str(k): v for k, v in costs.items()},
                "runs": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    if args.doc is not None:
        write_section(args.doc, text)
        print(f"wrote the {SECTION!r} section of {args.doc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
