"""`make finetune-from-plain`: StructViT (D = 4) fine-tuned from a trained plain-attention structvit_xs (D = 0,
UniFormer attention) on the moving-shapes benchmark, per start of the StructSA filters.

`identity` reproduces the plain model exactly at step 0 (every structure filter is the same delta); `shifted`
and `random` break the symmetry of the D filters at the price of a different function at step 0. For each
start this reports the function gap at step 0 (largest |logit difference| and top-1 agreement with the
source on validation clips, and the top-1 of both), then fine-tunes through `python -m src.cli fit` with
`--model.init_from` (several seeds) and reads the validation top-1 after every epoch and the test top-1.

    python -m experiments.finetune_from_plain --source runs/ablation/D0/version_0/checkpoints/best-....ckpt \
        --data-root data --inits identity shifted random --seeds 0 1 --epochs 2 --doc BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.tables import write_section
from experiments.ablation_synthetic import fit_and_test
from src.models.structsa import STRUCT_INITS
from src.runs import next_version, test_results

SECTION = "## Fine-tuning from plain attention"


@dataclass
class Gap:
    """How far the D = 4 model built from the source is from it before any step."""

    init: str
    clips: int
    max_abs_logit_diff: float
    top1_agreement: float
    source_top1: float
    start_top1: float


@dataclass
class FineTune:
    """One fine-tuning run of one start and seed."""

    init: str
    seed: int
    run_dir: str
    val_top1: list[float]
    test_top1: float
    train_seconds: float


def val_clips(root: Path, trained, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` validation videos as the source's protocol makes them: (N*V, 3, T, H, W), labels (N,)."""
    from src.data.index import read_split

    entries, _ = read_split(root, "val", len(trained.class_names), limit=limit)
    views = [trained.read_views(e.path) for e in entries]
    return torch.cat(views), torch.tensor([e.label for e in entries])


@torch.no_grad()
def function_gap(source: Path, init: str, clips: torch.Tensor, labels: torch.Tensor) -> Gap:
    """Build the D = 4 model from the source's weights with `init` (as `--model.init_from` does) and compare."""
    from src.models import build_model
    from src.models.checkpoints import load_pretrained
    from src.task import BackboneConfig
    from src.trained import load_trained

    trained = load_trained(source)
    plain = trained.module.backbone
    overrides = {**BackboneConfig(**trained.module.hparams.backbone).overrides(), "structure_dim": 4}
    torch.manual_seed(0)
    model = build_model(trained.variant, num_classes=len(trained.class_names), **overrides).eval()
    report = load_pretrained(model, plain.state_dict(), struct_init=init)
    if report.head_dropped or not report.clean:
        raise RuntimeError(f"loading {source} into D = 4 left weights out:\n{report}")
    views = clips.shape[0] // labels.shape[0]
    before, after = plain(clips), model(clips)
    p_before = before.softmax(-1).unflatten(0, (-1, views)).mean(1)
    p_after = after.softmax(-1).unflatten(0, (-1, views)).mean(1)
    return Gap(
        init,
        int(labels.shape[0]),
        float((before - after).abs().max()),
        float((p_before.argmax(-1) == p_after.argmax(-1)).float().mean()),
        float((p_before.argmax(-1) == labels).float().mean()),
        float((p_after.argmax(-1) == labels).float().mean()),
    )


def val_curve(run_dir: Path) -> list[float]:
    """val/top1 after every epoch, from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("val/top1")] if "val/top1" in events.Tags()["scalars"] else []


def fine_tune(
    source: Path, init: str, seed: int, index: Path, runs: Path, budget: list[str], threads: int | None
) -> FineTune:
    """`src.cli fit` from the source with `init`, then `src.cli test` of the best checkpoint."""
    name = f"from_plain_{init}"
    version = next_version(runs, name)
    extra = ["--model.backbone.structure_dim", "4", "--model.init_from", str(source)]
    extra += ["--model.init_struct_filters", init, "--trainer.num_sanity_val_steps", "0", *budget]
    print(f"--- start {init}, seed {seed}: {runs / name / f'version_{version}'}", flush=True)
    run_dir, train_s, _ = fit_and_test(name, version, seed, index, runs, extra, threads)
    top1 = test_results(run_dir / "test", []).top1
    result = FineTune(init, seed, str(run_dir), val_curve(run_dir), top1, train_s)
    print(
        f"    {init}, seed {seed}: val {[round(100 * v, 1) for v in result.val_top1]}, test "
        f"{100 * result.test_top1:.1f} %, {train_s:.0f} s",
        flush=True,
    )
    return result


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def section_text(source: Path, gaps: list[Gap], runs: list[FineTune], command: str, budget: list[str]) -> str:
    """The BENCHMARKS.md section's body (write_section adds the heading): the gap and fine-tuning tables."""
    epochs = max((len(r.val_top1) for r in runs), default=0)
    lines = [
        f"Command: `{command}` (torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, 2-core CPU). Source: "
        f"`{source}` (structvit_xs, D = 0, trained on the moving-shapes benchmark). Fine-tuning budget: "
        f"`{' '.join(budget)}` on top of `configs/synthetic.yaml`.",
        "",
        f"Step 0, on the first {gaps[0].clips if gaps else 0} validation videos: the D = 4 model as "
        "`--model.init_from` builds it, against the source.",
        "",
        "| start | max abs logit diff | top-1 agreement with the source | source top-1 | start top-1 |",
        "|---|---|---|---|---|",
    ]
    for g in gaps:
        lines.append(
            f"| {g.init} | {g.max_abs_logit_diff:.2e} | {100 * g.top1_agreement:.1f} % | "
            f"{100 * g.source_top1:.1f} % | {100 * g.start_top1:.1f} % |"
        )
    lines += [
        "",
        "Fine-tuning (mean ± std over seeds; val = 600 validation clips after each epoch, test = 600 test "
        "clips with the best checkpoint):",
        "",
        "| start | seeds | "
        + " | ".join(f"val @ epoch {e + 1}" for e in range(epochs))
        + " | test top-1 | train s |",
        "|---|---|" + "---|" * epochs + "---|---|",
    ]
    for init in dict.fromkeys(r.init for r in runs):
        rows = [r for r in runs if r.init == init]
        curve = [_pct([r.val_top1[e] for r in rows if len(r.val_top1) > e]) for e in range(epochs)]
        lines.append(
            f"| {init} | {len(rows)} | " + " | ".join(curve) + f" | {_pct([r.test_top1 for r in rows])} | "
            f"{statistics.fmean(r.train_seconds for r in rows):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure the gaps, fine-tune every start and seed, print and write the results."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.finetune_from_plain", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--source", type=Path, required=True, help="checkpoint of a D = 0 run (src.cli fit)")
    p.add_argument(
        "--data-root", type=Path, default=Path("data"), help="folder holding synthetic/ (default data)"
    )
    p.add_argument("--runs", type=Path, default=Path("runs/finetune_from_plain"))
    p.add_argument("--inits", nargs="+", choices=STRUCT_INITS, default=["identity", "shifted", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--lr", type=float, default=2e-4, help="peak learning rate of the fine-tuning (default 2e-4)"
    )
    p.add_argument("--gap-clips", type=int, default=200, help="validation videos for the step-0 gap")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--doc", type=Path, help="write the section into this file")
    p.add_argument("--results", type=Path, default=Path("experiments/results/finetune_from_plain.json"))
    args = p.parse_args(argv)
    from src.trained import load_trained

    index = (args.data_root / "synthetic").resolve()
    trained = load_trained(args.source)
    clips, labels = val_clips(index, trained, args.gap_clips)
    gaps = [function_gap(args.source, init, clips, labels) for init in args.inits]
    for g in gaps:
        print(
            f"step 0, {g.init}: max |logit diff| {g.max_abs_logit_diff:.2e}, agreement {100 * g.top1_agreement:.1f} %, "
            f"top-1 {100 * g.source_top1:.1f} -> {100 * g.start_top1:.1f} %",
            flush=True,
        )
    budget = [
        "--trainer.max_epochs",
        str(args.epochs),
        "--model.lr",
        f"{args.lr:g}",
        "--model.warmup_epochs",
        "0.2",
        "--data.num_workers",
        str(args.num_workers),
    ]
    runs = [
        fine_tune(args.source, init, seed, index, args.runs.resolve(), budget, args.threads)
        for seed in args.seeds
        for init in args.inits
    ]
    command = "python -m experiments.finetune_from_plain " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    text = section_text(args.source, gaps, runs, command, budget)
    print("\n" + text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {"command": command, "gaps": [asdict(g) for g in gaps], "runs": [asdict(r) for r in runs]},
            indent=2,
        )
        + "\n"
    )
    if args.doc:
        write_section(args.doc, text, SECTION)


if __name__ == "__main__":
    main()
