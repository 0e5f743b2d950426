"""Markdown tables of a `make gpu-check` result (benchmarks/gpu_check.py): every figure from the JSON rows.

`python -m benchmarks.gpu_tables benchmarks/results/gpu-check.json` re-renders a saved result.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("—" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _e(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def _rows(results: dict, part: str, item: str | None = None, key: str | None = None) -> list[dict]:
    rows = results["parts"].get(part, {}).get("rows", [])
    if item is not None:
        rows = [r for r in rows if r.get("item") == item]
    if key is not None:
        rows = [r for r in rows if key in r]
    return rows


def header(results: dict) -> str:
    """Machine, date, command, total time and the parts' status."""
    m = results["machine"]
    device = m.get("gpu") or "no GPU (CPU dry run)"
    lines = [
        f"# make gpu-check ({results['device']})\n",
        f"Command: `{results['command']}` · device: {device} · host CPU: {m['cpu']} ({m['cpu_cores']} cores) · "
        f"torch {m['torch']}"
        + (f" (CUDA {m['cuda']}, cuDNN {m['cudnn']})" if m.get("cuda") else "")
        + f" · date {m['date']} · load average at start {m.get('load_average_1m')} · "
        f"run time {results.get('duration_s', 0):.0f} s of {results['budget_s']:.0f} s · "
        f"exit code {results.get('exit_code')}\n",
    ]
    if results.get("limits_on_this_device"):
        lines.append("Not checked on this device: " + "; ".join(results["limits_on_this_device"]) + ".\n")
    parts = [
        (name, p["status"], p.get("seconds"), p.get("budget_s"), p.get("reason", ""))
        for name, p in results["parts"].items()
    ]
    lines.append(_table(("part", "status", "s", "budget s", "result"), parts))
    return "\n".join(lines)


def correctness(results: dict) -> str:
    """fp32 and bf16 errors, SDPA kernels, the bf16-mixed steps."""
    out = []
    fp32 = _rows(results, "tests", key="output_rel_err")
    if fp32:
        out.append(
            "## StructSA fast vs reference path, float32 (TF32 off), relative error\n\n"
            + _table(
                ("shape", "D", "S", "output", "worst gradient", "bound", "passed"),
                (
                    (
                        r["shape"],
                        r["D"],
                        r["S"],
                        _e(r["output_rel_err"]),
                        f"{_e(r['grad_rel_err'])} ({r['worst_grad']})",
                        _e(r["bound"]),
                        r.get("passed"),
                    )
                    for r in fp32
                ),
            )
        )
    bf16 = _rows(results, "tests", key="rel_err_attn_fp32_off")
    if bf16:
        out.append(
            "## Fast path under bf16 autocast vs float64 reference, relative error\n\n"
            + _table(
                (
                    "shape",
                    "D",
                    "S",
                    "attn_fp32 off",
                    "attn_fp32 on",
                    "bf16 units (off, on)",
                    "bound",
                    "passed",
                ),
                (
                    (
                        r["shape"],
                        r["D"],
                        r["S"],
                        _e(r["rel_err_attn_fp32_off"]),
                        _e(r["rel_err_attn_fp32_on"]),
                        r["units_of_bf16_roundoff"],
                        _e(r["bound"]),
                        r.get("passed"),
                    )
                    for r in bf16
                ),
            )
        )
    kernels = _rows(results, "tests", key="kernels")
    if kernels:
        out.append(
            "## SDPA kernel that ran (profiler, forward + backward)\n\n"
            + _table(
                ("shape", "D", "S", "precision", "kernels", "passed"),
                (
                    (
                        r["shape"],
                        r["D"],
                        r["S"],
                        r["precision"],
                        ", ".join(r["kernels"]) or "none",
                        r.get("passed"),
                    )
                    for r in kernels
                ),
            )
        )
    steps = _rows(results, "tests", key="finite_grads")
    if steps:
        out.append(
            "## bf16-mixed training step\n\n"
            + _table(
                ("model", "input", "loss", "finite loss / grads / params", "grad norm", "SDPA", "passed"),
                (
                    (
                        r["model"],
                        "×".join(map(str, r["input"])),
                        f"{r['loss']:.4f}",
                        f"{r['finite_loss']} / {r['finite_grads']} / {r['finite_params_after_step']}",
                        f"{r['grad_norm']:.3g}",
                        ", ".join(r["sdpa_kernels"]),
                        r.get("passed"),
                    )
                    for r in steps
                ),
            )
        )
    compiled = _rows(results, "compile", key="compile_s")
    if compiled:
        out.append(
            "## torch.compile vs eager (bf16 autocast; training step, then inference)\n\n"
            + _table(
                (
                    "model",
                    "kind",
                    "input",
                    "backend",
                    "compile s",
                    "error compiled / eager bf16",
                    "bound",
                    "eager ms",
                    "compiled ms",
                    "compiled / eager",
                    "graphs, breaks",
                    "passed",
                ),
                (row for r in compiled for row in _compile_rows(r)),
            )
        )
    return "\n".join(out)


def _compile_rows(r: dict) -> list[tuple]:
    """A compile row's training step (bounded error) and, where measured, its inference (difference to
    eager bf16, recorded only)."""
    shape = "×".join(map(str, r["input"]))
    rows = [
        (
            r["model"],
            "train step",
            shape,
            r["backend"],
            r["compile_s"],
            f"{_e(r['rel_err_compiled'])} / {_e(r['rel_err_eager_bf16'])}",
            _e(r["bound"]),
            r["eager_step_ms"],
            r["compiled_step_ms"],
            r["compiled_vs_eager"],
            f"{r['graphs']}, {r['graph_breaks']}",
            r.get("passed"),
        )
    ]
    if "compiled_inference_ms" in r:
        rows.append(
            (
                r["model"],
                "inference",
                shape,
                r["backend"],
                r["inference_compile_s"],
                f"{_e(r['inference_rel_diff'])} to eager bf16",
                None,
                r["eager_inference_ms"],
                r["compiled_inference_ms"],
                r["compiled_vs_eager_inference"],
                None,
                None,
            )
        )
    return rows


def cli(results: dict) -> str:
    """The CLI part: each command's time and exit code, the DDP backend and the test report."""
    part = results["parts"].get("cli")
    if not part or "steps" not in part:
        return ""
    rows = [(name, s["exit_code"], s["seconds"], f"`{s['command']}`") for name, s in part["steps"].items()]
    facts = (
        f"DDP backend {part.get('ddp_backend')}, last.ckpt {part.get('checkpoint')}, test scored "
        f"{part.get('test_videos_scored')} of {part.get('test_videos')} videos, test/top1 {part.get('test_top1')}"
    )
    return (
        "## CLI: the commands a user types\n\n"
        + _table(("step", "exit", "s", "command"), rows)
        + "\n"
        + facts
        + "\n"
    )


def models(results: dict) -> str:
    """Training steps side by side and their ratios."""
    rows = _rows(results, "models", "models")
    steps = [r for r in rows if r.get("kind") != "ratio"]
    ratios = [r for r in rows if r.get("kind") == "ratio"]
    if not steps:
        return ""
    text = "## Training step, timed steps interleaved\n\n" + _table(
        (
            "model",
            "cudnn.benchmark",
            "input",
            "precision",
            "status",
            "ms/step",
            "clips/s",
            "peak MiB",
            "SDPA",
        ),
        (
            (
                r["label"],
                r["cudnn_benchmark"],
                "×".join(map(str, r.get("input", []))),
                r.get("precision"),
                r["status"],
                r.get("step_ms"),
                r.get("clips_per_s"),
                r.get("peak_mib"),
                ", ".join(r.get("sdpa_kernels", [])),
            )
            for r in steps
        ),
    )
    if ratios:
        text += "\n" + _table(
            ("ratio", "cudnn.benchmark", "step time", "peak memory", "target"),
            (
                (
                    r["label"],
                    r["cudnn_benchmark"],
                    f"{r['step_ratio']}×",
                    f"{r['peak_ratio']}×",
                    f"≤ {r['target']}×: {'met' if r['target_met'] else 'not met'}" if r["target"] else "—",
                )
                for r in ratios
            ),
        )
    return text


def structsa(results: dict) -> str:
    """Fast vs reference (and vanilla) at the stage-3 shape."""
    rows = _rows(results, "bench", "structsa")
    if not rows:
        return ""

    def figure(r: dict) -> str:
        return (
            f"{r['median_ms']:.2f} ms, {r['peak_mib']:.0f} MiB"
            if r["status"] == "ok"
            else r.get("reason", "")[:70]
        )

    index = {(r["mode"], r["kv_stride"], r["path"]): r for r in rows}
    body = []
    for (mode, s, path), r in index.items():
        if path != "fast":
            continue
        ref = index.get((mode, s, "reference"))
        speed = (
            f"{ref['median_ms'] / r['median_ms']:.1f}× faster, {ref['peak_mib'] / r['peak_mib']:.1f}× less memory"
            if ref and ref["status"] == "ok" and r["status"] == "ok"
            else "—"
        )
        body.append(
            (
                r["label"],
                mode,
                r["structure_dim"],
                s,
                figure(r),
                figure(ref) if ref else "—",
                r.get("kernel"),
                speed,
            )
        )
    vanilla = [(r["label"], r["mode"], figure(r), r.get("kernel")) for r in rows if r["path"] == "vanilla"]
    return (
        "## StructSA fast vs reference path\n\n"
        + _table(("shape", "mode", "D", "S", "fast", "reference", "fast kernel", "fast vs reference"), body)
        + "\nVanilla attention (D = 0) at the same shape: "
        + "; ".join(f"{m} {f} ({k})" for _, m, f, k in vanilla)
        + "\n"
    )


def convs(results: dict) -> str:
    """Conv variants against the current form."""
    rows = _rows(results, "bench", key="variant")
    if not rows:
        return ""
    return "## Conv3d variants (forward + backward), against the current form\n\n" + _table(
        ("shape", "variant", "ms", "vs current", "ms, cudnn.benchmark", "vs current", "rel. error", "exact"),
        (
            (
                r["shape"] + (f", D={r['D']} S={r['S']}" if "D" in r else ""),
                r["variant"],
                r["ms"],
                r["vs_current"],
                r["ms_cudnn_benchmark"],
                r["benchmark_vs_current"],
                _e(r["rel_err_vs_current"]),
                r["exact"],
            )
            for r in rows
        ),
    )


def largest_batch(results: dict) -> str:
    rows = _rows(results, "bench", "max_batch", key="trials")
    if not rows:
        return ""
    r = rows[0]
    trials = "; ".join(
        f"{t['batch']}: "
        + (
            f"{t['peak_mib']} MiB, {t['clips_per_s']} clips/s"
            if t["fits"]
            else t.get("reason", "does not fit")[:40]
        )
        for t in r["trials"]
    )
    failing = (
        f"{r['smallest_failing']} does not"
        if r["smallest_failing"] is not None
        else f"no failing batch found (search stopped by its {r.get('stopped_by', 'time budget')})"
    )
    return (
        f"## Largest batch\n\n{r['label']} at {r['input'][0]}×{r['input'][1]}², {r['precision']}: "
        f"**{r['largest_batch']}** fits, {failing} (limit: {r['limit']}). "
        f"Trials: {trials}.\n"
    )


def jpeg_decode(results: dict) -> str:
    """torchvision's JPEG decode: one CPU thread against batched nvjpeg, and how far their pixels differ."""
    rows = _rows(results, "bench", "jpeg_decode", key="cpu_images_per_s")
    if not rows:
        return ""
    r = rows[0]
    cuda = (
        f"{r['cuda_images_per_s']} ({r['cuda']})"
        if r.get("cuda_images_per_s") is not None
        else r.get("cuda", "not run")
    )
    diff = f"{r['max_abs_diff']} (mean {r['mean_abs_diff']})" if r.get("max_abs_diff") is not None else None
    return "## JPEG decode (torchvision.io.decode_jpeg)\n\n" + _table(
        (
            "images",
            "size",
            "quality",
            "mean KiB",
            "CPU images/s (1 thread)",
            "CUDA images/s",
            "CUDA / CPU",
            "max abs pixel diff CUDA vs CPU",
        ),
        [
            (
                r["images"],
                "×".join(map(str, r["size"])),
                r["quality"],
                r["mean_kib"],
                r["cpu_images_per_s"],
                cuda,
                r.get("cuda_vs_cpu"),
                diff,
            )
        ],
    )


def pipeline(results: dict) -> str:
    """Loader rates and how many workers one GPU needs."""
    rows = _rows(results, "pipeline", "pipeline", key="clips_per_s")
    feeding = results.get("summary", {}).get("feeding", [])
    if not rows:
        return ""
    text = "## Data pipeline against the step rate\n\n" + _table(
        ("dataset", "stage", "workers", "clips/s", "clips/s per worker"),
        (
            (r["dataset"], r["stage"], r["workers"], r["clips_per_s"], r["clips_per_s_per_worker"])
            for r in rows
        ),
    )
    for r in rows:
        if "max_abs_diff_vs_pyav" in r:
            text += (
                f"\n{r['stage']}: frames differ from PyAV's on the CPU by {r['mean_abs_diff_vs_pyav']} levels on "
                f"average, {r['max_abs_diff_vs_pyav']} at most.\n"
            )
    for r in results["parts"].get("pipeline", {}).get("rows", []):
        if r.get("status") == "skipped":
            text += f"\n{r.get('stage')}: skipped ({r.get('reason')}).\n"
    if feeding:
        text += "\n" + _table(
            (
                "model",
                "step clips/s",
                "one worker clips/s",
                "workers (cores) needed",
                "loader clips/s",
                "loader / step",
            ),
            (
                (
                    f["model"],
                    f["step_clips_per_s"],
                    f["worker_clips_per_s"],
                    f["workers_needed"],
                    f"{f['loader_clips_per_s']} ({f['loader_workers']} workers)",
                    f["loader_over_step"],
                )
                for f in feeding
            ),
        )
    return text


SECTIONS: tuple[Callable[[dict], str], ...] = (
    header,
    correctness,
    cli,
    models,
    structsa,
    convs,
    jpeg_decode,
    largest_batch,
    pipeline,
)


def render(results: dict) -> str:
    """The whole markdown report of one gpu-check result."""
    return "\n".join(s for s in (section(results) for section in SECTIONS) if s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    print(render(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
