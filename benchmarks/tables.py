"""Markdown tables from a results JSON, and the update of one suite's section of BENCHMARKS.md.

`python -m benchmarks.tables benchmarks/results/cpu.json [--doc BENCHMARKS.md]` re-renders saved results.
Every ratio is computed here from rows measured side by side in the same run; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

MODE_TITLES = {"forward": "forward (inference, no grad)", "train": "forward + backward"}


def _ratio(a: float | None, b: float | None, digits: int = 1) -> str:
    return "—" if not a or not b else f"{a / b:.{digits}f}×"


def _ms(row: dict | None) -> str:
    if row is None:
        return "—"
    if row.get("status") != "ok":
        return _short_reason(row)
    calls = "" if row.get("reps", 5) >= 5 else f" ({row['reps']} timed call{'s' if row['reps'] > 1 else ''})"
    return f"{row['median_ms']:.1f}{calls}"


def _mib(row: dict | None) -> str:
    return "—" if row is None or row.get("status") != "ok" else f"{row['peak_mib']:.1f}"


def _short_reason(row: dict) -> str:
    reason = row.get("reason", row.get("status", "?"))
    if "predicted peak" in reason:
        return "skipped: memory " + re.sub(r".*predicted peak ([\d.]+ GiB).*", r"\1", reason)
    if "predicted" in reason:
        return "skipped: time " + re.sub(r".*predicted (\d+ s).*", r"\1", reason)
    if "section's time budget" in reason:
        return "skipped: section time budget"
    if "used up" in reason:
        return "skipped: reference-path budget"
    return reason[:60]


def _ok(row: dict | None, key: str) -> float | None:
    return row[key] if row is not None and row.get("status") == "ok" else None


def _index(rows: Iterable[dict]) -> dict[tuple, dict]:
    return {
        (r["label"], r["mode"], r["structure_dim"], r["kv_stride"], r["path"]): r
        for r in rows
        if "label" in r
    }


def header(results: dict) -> str:
    """Who, where, when and how: machine, torch, date, duration and the exact command."""
    m = results["machine"]
    device = m.get("gpu") or f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    return (
        f"Command: `{results['command']}` · device: {device} · RAM {m.get('memory_gib')} GiB · torch {m['torch']} · "
        f"date {m['date']} · load average at start {m.get('load_average_1m')} · "
        f"run time {results.get('duration_s', 0):.0f} s · raw rows: `{results.get('json', results['suite'] + '.json')}`\n"
    ) + _section_dates(results)


def _section_dates(results: dict) -> str:
    """A line naming when each section ran, if a partial re-run mixed sections of different runs."""
    runs = results.get("section_runs", {})
    if len({r["date"] for r in runs.values()}) <= 1:
        return ""
    parts = [f"{name} {r['date']} (load {r.get('load_average_1m')})" for name, r in runs.items()]
    return "\nSections measured at different times: " + "; ".join(parts) + ".\n"


def structsa_tables(rows: list[dict]) -> str:
    """Fast vs reference path, and StructSA vs vanilla attention, one table per mode."""
    idx = _index(rows)
    keys = sorted(
        {(r["label"], r["structure_dim"], r["kv_stride"]) for r in rows if r["path"] != "vanilla"},
        key=lambda k: (k[0], k[1], k[2]),
    )
    labels = list(dict.fromkeys(r["label"] for r in rows))
    keys.sort(key=lambda k: (labels.index(k[0]), k[1], k[2]))
    modes = [m for m in MODE_TITLES if any(r["mode"] == m for r in rows)]
    out = ["### 1. StructSA: fast exact path vs reference path\n"]
    for mode in modes:
        out.append(f"**{MODE_TITLES[mode]}** — time per call (ms, median) and peak memory (MiB, allocator)\n")
        out.append(
            "| shape | D | S | keys D·N' | fast kernel | fast ms | reference ms | speed-up | fast MiB | "
            "reference MiB | memory ratio |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, d, s in keys:
            fast, ref = idx.get((label, mode, d, s, "fast")), idx.get((label, mode, d, s, "reference"))
            if fast is None:
                continue
            out.append(
                f"| {label} | {d} | {s} | {fast['attended']} | {fast.get('kernel', '—')} | {_ms(fast)} | {_ms(ref)} | "
                f"{_ratio(_ok(ref, 'median_ms'), _ok(fast, 'median_ms'))} | {_mib(fast)} | {_mib(ref)} | "
                f"{_ratio(_ok(ref, 'peak_mib'), _ok(fast, 'peak_mib'))} |"
            )
        out.append("")
    out.append("### 2. The cost of structure: StructSA (fast path) vs vanilla attention (D = 0)\n")
    for mode in modes:
        out.append(f"**{MODE_TITLES[mode]}** — ratios StructSA / vanilla at the same shape\n")
        out.append(
            "| shape | D | S | vanilla ms | StructSA ms | time ratio | GMACs ratio (analytic) | "
            "memory ratio |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for label, d, s in keys:
            fast, van = idx.get((label, mode, d, s, "fast")), idx.get((label, mode, 0, 1, "vanilla"))
            if fast is None or van is None:
                continue
            out.append(
                f"| {label} | {d} | {s} | {_ms(van)} | {_ms(fast)} | "
                f"{_ratio(_ok(fast, 'median_ms'), _ok(van, 'median_ms'), 2)} | "
                f"{_ratio(fast['gmacs'], van['gmacs'], 2)} | {_ratio(_ok(fast, 'peak_mib'), _ok(van, 'peak_mib'), 2)} |"
            )
        out.append("")
    return "\n".join(out)


def scaling_table(rows: list[dict]) -> str:
    """Time and memory against tokens; the growth columns show linear vs quadratic memory."""
    first = rows[0]
    out = [
        f"### 3. Scaling with tokens (D = {first['structure_dim']}, S = {first['kv_stride']}, "
        f"C = {first['dim']}, {first['heads']} heads, {first['grid'][1]}×{first['grid'][2]} tokens per frame)\n"
    ]
    for mode in [m for m in MODE_TITLES if any(r["mode"] == m for r in rows)]:
        out.append(f"**{MODE_TITLES[mode]}**\n")
        out.append(
            "| tokens N | fast kernel | fast ms | fast MiB | fast MiB growth | reference ms | reference MiB | "
            "reference MiB growth | speed-up | memory ratio |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        mode_rows = [r for r in rows if r["mode"] == mode]
        tokens = sorted({r["tokens"] for r in mode_rows})
        prev: dict[str, float | None] = {"fast": None, "reference": None}
        for n in tokens:
            fast = next((r for r in mode_rows if r["tokens"] == n and r["path"] == "fast"), None)
            ref = next((r for r in mode_rows if r["tokens"] == n and r["path"] == "reference"), None)
            growth = {}
            for name, row in (("fast", fast), ("reference", ref)):
                cur = _ok(row, "peak_mib")
                growth[name] = _ratio(cur, prev[name], 2) if prev[name] else "—"
                prev[name] = cur
            out.append(
                f"| {n} | {(fast or {}).get('kernel', '—')} | {_ms(fast)} | {_mib(fast)} | {growth['fast']} | {_ms(ref)} | {_mib(ref)} | "
                f"{growth['reference']} | {_ratio(_ok(ref, 'median_ms'), _ok(fast, 'median_ms'))} | "
                f"{_ratio(_ok(ref, 'peak_mib'), _ok(fast, 'peak_mib'))} |"
            )
        out.append("")
    stops = [r for r in rows if r["path"] == "reference" and r.get("status") != "ok"]
    if stops:
        first = min(stops, key=lambda r: r["tokens"])
        out.append(
            f"The reference path stopped at N = {first['tokens']} ({first['mode']}): {first['reason']}.\n"
        )
    return "\n".join(out)


def model_table(rows: list[dict]) -> str:
    """Whole-model training steps, with ratios to uniformer_s."""
    out = [
        "### 4. Whole model: one training step (forward, loss, backward, AdamW)\n",
        "| model | input (B,3,T,H,W) | precision | params (M) | attention kernels | ms / step | clips/s | peak MiB | "
        "time vs uniformer_s | memory vs uniformer_s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r for r in rows if r.get("model") == "uniformer_s"), None)
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"| {r.get('label')} | {r.get('input')} | | | | {r.get('reason')} | | | | |")
            continue
        out.append(
            f"| {r['label']} | {'×'.join(map(str, r['input']))} | {r['precision']} | {r['params_m']} | "
            f"{', '.join(r.get('sdpa_kernels', [])) or '—'} | "
            f"{r['step_ms']:.0f} | {r['clips_per_s']:.2f} | {r['peak_mib']:.0f} | "
            f"{_ratio(r['step_ms'], _ok(base, 'step_ms'), 2)} | {_ratio(r['peak_mib'], _ok(base, 'peak_mib'), 2)} |"
        )
    return "\n".join(out) + "\n"


def pipeline_table(rows: list[dict], gpu_rates: dict[str, float] | None = None) -> str:
    """Data pipeline: clips/s per stage, backend and worker count; workers per GPU from the GPU step rate."""
    out = [
        "### 5. Data pipeline (generated videos; one pass over the set per repetition)\n",
        "| dataset | codec, size, sampling | stage | backend | workers | clips/s | clips/s per worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            out.append(
                f"| {r.get('dataset', r.get('kind', '?'))} | | {r.get('stage', '')} | | | "
                f"{r.get('reason')} | |"
            )
            continue
        out.append(
            f"| {r['dataset']} | {r['codec']} {r['resolution']}, {r['sampling']} | {r['stage']} | {r['backend']} | "
            f"{r['workers']}{' (in-process, 1 thread)' if r.get('in_process') else ''} | {r['clips_per_s']:.2f} | "
            f"{r['clips_per_s_per_worker']:.2f} |"
        )
    out.append("")
    for dataset in dict.fromkeys(r["dataset"] for r in rows if r.get("status") == "ok"):
        out.append(_pipeline_summary(dataset, rows, gpu_rates))
    return "\n".join(out) + "\n"


def _pipeline_summary(dataset: str, rows: list[dict], gpu_rates: dict[str, float] | None) -> str:
    """Before (decord, augmentation in the worker: the pipeline until 2026-12) vs the fastest worker of
    augmentation on the device, per core; the workers one GPU needs at the measured training rate. These rows
    run one after another: section 6 gives the same ratio from interleaved passes."""

    def rate(stage: str, backend: str | None = None) -> tuple[float, str] | None:
        found = [
            (r["clips_per_s_per_worker"], r["backend"])
            for r in rows
            if r.get("status") == "ok"
            and r.get("dataset") == dataset
            and r.get("stage") == stage
            and (backend is None or r.get("backend") == backend)
        ]
        return max(found) if found else None

    before = rate("decode+augment", "decord")
    after = rate("decode+crop (augment on device)")
    if before is None and after is None:
        return f"- {dataset}: no per-worker rows."
    line = f"- {dataset}: "
    if before:
        line += f"before, one worker decodes and augments {before[0]:.2f} clips/s (decord)"
    if after:
        line += f"; with augmentation on the device one worker prepares {after[0]:.2f} clips/s ({after[1]})"
        if before:
            line += f", **{after[0] / before[0]:.2f}x per core**"
    per_worker = (after or before)[0]
    line += f". 16 workers give about {16 * per_worker:.0f} clips/s if workers scale linearly"
    if gpu_rates:
        need = {label: math.ceil(rate / per_worker) for label, rate in gpu_rates.items()}
        line += "; workers needed to feed the measured GPU training rate: " + ", ".join(
            f"{label} {gpu_rates[label]:.1f} clips/s → {n}" for label, n in need.items()
        )
    else:
        line += " (no GPU training rate measured yet: run `make bench-gpu`)"
    return line + "."


def pytorchvideo_table(rows: list[dict]) -> str:
    """This pipeline and PyTorchVideo's datasets on the same files, clips/s per core, and the ratios."""
    out = [
        "### 6. Against PyTorchVideo (same files, sampling and clip shape; in-process, one thread)\n",
        "| dataset | stage | pipeline | backend | clips/s per core | CPU / wall |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("type") == "ratio":
            continue
        if r.get("status") != "ok":
            out.append(f"| {r.get('dataset', '?')} | {r.get('stage', '')} | | | {r.get('reason')} | |")
            continue
        name = "PyTorchVideo" if r["side"] == "pytorchvideo" else f"ours, {r['variant']}"
        out.append(
            f"| {r['dataset']} | {r['stage']} | {name} | {r['backend']} | {r['clips_per_s']:.2f} | "
            f"{r['cpu_over_wall']:.2f} |"
        )
    out.append("")
    out += _before_after(rows)
    for r in rows:
        if r.get("type") != "ratio":
            continue
        ours, theirs = r["ours_best"], r["pytorchvideo_best"]
        out.append(
            f"- {r['dataset']}, {r['stage']}, ours ({r['variant']}) / PyTorchVideo: "
            f"**{r['ours_over_pytorchvideo']:.2f}x** ({ours['clips_per_s']:.2f} clips/s with {ours['backend']} vs "
            f"{theirs['clips_per_s']:.2f} with {theirs['backend']}, the best backend of each)."
        )
    return "\n".join(out) + "\n"


def _before_after(rows: list[dict]) -> list[str]:
    """This pipeline before (decord, augmentation in the worker) and after (augmentation on the device, the
    best backend), from the passes of this section, which alternate row by row (so drifts of the host's
    speed hit both alike; section 5 measures its rows one after another)."""
    lines = []
    ok = [r for r in rows if r.get("type") == "clips" and r.get("status") == "ok" and r.get("side") == "ours"]
    for dataset in dict.fromkeys(r["dataset"] for r in ok):
        mine = [r for r in ok if r["dataset"] == dataset]
        before = [r for r in mine if r["stage"] == "decode+augment" and r["backend"] == "decord"]
        after = [r for r in mine if r["stage"] == "decode+crop (augment on device)"]
        if before and after:
            best = max(after, key=lambda r: r["clips_per_s"])
            gain = best["clips_per_s"] / before[0]["clips_per_s"]
            lines.append(
                f"- {dataset}, this pipeline per core: before (decord, augmentation in the worker) "
                f"{before[0]['clips_per_s']:.2f} clips/s, after (augmentation on the device, {best['backend']}) "
                f"{best['clips_per_s']:.2f} clips/s: **{gain:.2f}x** (passes interleaved)."
            )
    return lines


def decoder_tables(rows: list[dict]) -> str:
    """The decoder benchmark (benchmarks/decoders.py): clips per CPU-second per set, stage and reader, then
    the factors, each a ratio of two rows of the same passes with its per-pass range."""
    out = [
        "### 7. Decoders, fairly: clips per CPU-second on distinct files, cold caches, rows interleaved\n",
        "| set | codec, size, sampling | files | stage | reader | clips / CPU-s | clips/s (wall) | CPU / wall | "
        "frames vs PyAV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("type") != "clips":
            continue
        where = f"{r['codec']} {r['resolution']}, {r['sampling']}"
        if r.get("status") != "ok":
            out.append(
                f"| {r['dataset']} | {where} | | {r['stage']} | {r['reader']} | {r.get('reason', '')[:80]} | | | |"
            )
            continue
        if "mismatched_clips_vs_pyav" in r:
            bad = r["mismatched_clips_vs_pyav"]
            frames = "identical" if not bad else f"{bad} clips differ (max {r['max_abs_diff_vs_pyav']})"
        else:
            frames = "—"
        out.append(
            f"| {r['dataset']} | {where} | {r['files']} | {r['stage']} | {r['reader']} | {r['clips_per_cpu_s']:.2f} | "
            f"{r['clips_per_s']:.2f} | {r['cpu_over_wall']:.2f} | {frames} |"
        )
    out += ["", "| set | factor | ratio | range over passes | from |", "|---|---|---|---|---|"]
    for r in rows:
        if r.get("type") == "ratio":
            out.append(
                f"| {r['dataset']} | {r['factor']} | **{r['ratio']:.2f}×** | {r['pass_min']:.2f}-{r['pass_max']:.2f}× | "
                f"{r['numerator']} over {r['denominator']} |"
            )
    return "\n".join(out) + "\n"


def decoder_runs_table(runs: list[dict]) -> str:
    """Several runs of the decoder benchmark side by side (each a `python -m benchmarks.decoders --json` file):
    clips per CPU-second of every decode and whole-worker row, then every factor, one column per run, with
    the lowest and highest value over the runs."""
    names = [f"run {i + 1}" for i in range(len(runs))]
    head = "| " + " | ".join(names) + " | over the runs |"
    rule = "|---" * len(names) + "|---|"

    def spread(values: list[float | None], fmt: str, unit: str = "") -> str:
        cells = ["—" if v is None else f"{v:{fmt}}{unit}" for v in values]
        seen = [v for v in values if v is not None]
        span = f"{min(seen):{fmt}}-{max(seen):{fmt}}{unit}" if seen else "—"
        return " | ".join(cells) + f" | {span} |"

    def rows_of(run: dict, kind: str) -> dict[tuple, dict]:
        rows = [r for r in run["rows"] if r.get("type") == kind and r.get("status") == "ok"]
        if kind == "ratio":
            return {(r["dataset"], r["factor"]): r for r in rows}
        return {(r["dataset"], r["stage"], r["reader"]): r for r in rows}

    clips, ratios = [rows_of(run, "clips") for run in runs], [rows_of(run, "ratio") for run in runs]
    out = [
        "| set | stage | reader | " + head.removeprefix("| "),
        "|---|---|---" + rule,
    ]
    for key in dict.fromkeys(k for run in clips for k in run):
        values = [run[key]["clips_per_cpu_s"] if key in run else None for run in clips]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + spread(values, ".2f"))
    out += ["", "| set | factor | " + head.removeprefix("| "), "|---|---" + rule]
    for key in dict.fromkeys(k for run in ratios for k in run):
        values = [run[key]["ratio"] if key in run else None for run in ratios]
        out.append(f"| {key[0]} | {key[1]} | " + spread(values, ".2f", "×"))
    return "\n".join(out) + "\n"


def _overrides(overrides: dict | None) -> str:
    return "" if not overrides else " (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")"


def compile_table(rows: list[dict]) -> str:
    """torch.compile vs eager per model and kind (benchmarks/compile_speed.py), from interleaved calls."""
    out = [
        "### 8. torch.compile vs eager (`--model.compile`): training step and inference, calls interleaved\n",
        "| model | kind | input (B,3,T,H,W) | precision | backend, mode | eager ms | compiled ms | eager / compiled | "
        "compile s (first call) | max abs logit diff (relative) | graphs, breaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            out.append(
                f"| {r.get('label')} | {r.get('kind')} | {r.get('input')} | | | {r.get('reason')} | | | | | |"
            )
            continue
        out.append(
            f"| {r['label']}{_overrides(r.get('overrides'))} | {r['kind']} | {'×'.join(map(str, r['input']))} | "
            f"{r['precision']} | {r['backend']}, {r['mode']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['speedup']:.2f}× | "
            f"{r['compile_s']:.1f} | {r['max_abs_diff']:.1e} ({r['rel_diff']:.1e}) | "
            f"{r['graphs']}, {r['graph_breaks']} |"
        )
    if rows and all(r.get("status") == "ok" for r in rows):
        out.append(
            f"\nMedian of {rows[0]['reps']} calls per cell; train = forward, cross-entropy, backward, AdamW in train "
            "mode (the overrides beside a model's name); inference = eval mode under no_grad. The compile time is the first compiled call with a cold "
            "inductor cache; the logit difference is that call's against the eager copy's (same weights, same clips)."
        )
    return "\n".join(out) + "\n"


def render(results: dict, gpu_rates: dict[str, float] | None = None) -> str:
    """All tables of one results file, with its header, as markdown."""
    sections = results.get("sections", {})
    parts = [header(results)]
    if sections.get("structsa"):
        parts.append(structsa_tables(sections["structsa"]))
    if sections.get("scaling"):
        parts.append(scaling_table(sections["scaling"]))
    if sections.get("model"):
        parts.append(model_table(sections["model"]))
    if sections.get("pipeline"):
        parts.append(pipeline_table(sections["pipeline"], gpu_rates))
    if sections.get("pytorchvideo"):
        parts.append(pytorchvideo_table(sections["pytorchvideo"]))
    if sections.get("decoders"):
        parts.append(decoder_tables(sections["decoders"]))
    if sections.get("compile"):
        parts.append(compile_table(sections["compile"]))
    if sections.get("images"):
        from benchmarks.images import table as images_table

        parts.append("### Still images (benchmarks/images.py)\n\n" + images_table(sections["images"]))
    return "\n".join(parts)


def gpu_training_rates(results_dir: Path) -> dict[str, float] | None:
    """clips/s per model from a saved GPU run (results/gpu.json), or None if there is none."""
    path = Path(results_dir) / "gpu.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("sections", {}).get("model", [])
    return {r["label"]: r["clips_per_s"] for r in rows if r.get("status") == "ok"} or None


def _markers(suite: str) -> tuple[str, str]:
    return f"<!-- bench:{suite}:begin -->", f"<!-- bench:{suite}:end -->"


def update_document(doc: Path, suite: str, tables: str) -> None:
    """Replace the text between this suite's markers in `doc` (appending a new section if it has none)."""
    begin, end = _markers(suite)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{tables.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## Results: {suite} suite\n\n{block}\n"
    doc.write_text(text)


def write_section(doc: Path, text: str, section: str = "## Ablation") -> None:
    """Replace (or append) the `section` heading's section of `doc` (default `## Ablation`), up to the next `## `."""
    content = doc.read_text() if doc.is_file() else ""
    block = f"{section}\n\n{text.strip()}\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(content):
        content = pattern.sub(lambda _: block + "\n", content, count=1).rstrip() + "\n"
    else:
        content = content.rstrip() + "\n\n" + block
    doc.write_text(content)


def main(argv: list[str] | None = None) -> None:
    """Re-render a saved results file (and optionally update its section of a document)."""
    parser = argparse.ArgumentParser(description="render benchmark tables from a results JSON")
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", type=Path, default=None)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    tables = render(results, gpu_training_rates(args.results.parent))
    print(tables)
    if args.doc:
        update_document(args.doc, results["suite"], tables)


if __name__ == "__main__":
    main()
