"""`make gpu-check`: one prepared check that proves the CUDA path in minutes; `DEVICE=cpu` is its dry run.

    python -m benchmarks.gpu_check --device cuda|cpu [--out PATH] [--only PARTS] [--work DIR]

Parts, in order, each in its own processes with its own time budget (a part that fails, crashes or runs out
of time is recorded and the next one runs; the whole check has a total budget too):

  tests     pytest -m gpu tests/gpu/test_cuda_paths.py: StructSA fast = reference (float32), bf16 autocast
            error with attn_fp32 off / on, the SDPA kernel of every StructSA config, a bf16-mixed StructViT-S step
  cli       `python -m data_prep.synthetic`, then `python -m src.cli fit` (bf16-mixed, strategy ddp, one
            device: NCCL on CUDA, gloo on CPU) and `test` of its checkpoint: the commands a user types
  models    training steps of uniformer_s / structvit_s / structvit_s_4_2 side by side and their ratios,
            then with cuDNN autotuning on
  bench     StructSA fast vs reference at the stage-3 shape, K/V conv fusion and channels_last_3d, the
            depthwise convolutions' layouts, JPEG decode images/s (one CPU thread, batched nvjpeg), the
            largest batch of structvit_s_4_2
  pipeline  the configs' loader (PyAV, augmentation on the device): clips/s with 16 workers and one
            worker's rate against the step rate; the moved augmentation's rate on the GPU; torchcodec's
            NVDEC decoding (clips/s, distance to PyAV's frames) where torchcodec and FFmpeg are installed
  compile   pytest tests/gpu/test_cuda_compile.py: torch.compile vs eager, output and step time

On CUDA the shapes are the paper's training shapes (16x224², batch 8, bf16); with `--device cpu` every part runs the same
code at tiny shapes, and only what needs CUDA itself differs (SDPA kernel names, NCCL, inductor), as the
results say. Writes benchmarks/results/gpu-check.json (gpu-check-cpu.json for the dry run) after every part
and a markdown table beside it; exits 1 if any correctness check failed or any part crashed or timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIN_PART_S = 10.0  # a part is not started with less time than this left in the total budget
LOG_TAIL = 4000


@dataclass(frozen=True)
class Part:
    """One part of the check: its name, what it proves, and its time budget on CUDA and on CPU (seconds)."""

    name: str
    what: str
    budget_cuda_s: float
    budget_cpu_s: float

    def budget(self, device: str) -> float:
        return self.budget_cuda_s if device == "cuda" else self.budget_cpu_s


# Budgets: on CUDA the expected times (docs/gpu-check.md) plus margin, capped together by TOTAL_BUDGET_S; on
# CPU generous, for a loaded 2-core host (the dry run's parts overlap two at a time).
PARTS = (
    Part(
        "tests",
        "StructSA fast = reference (fp32), bf16 error, SDPA kernel per config, bf16-mixed step",
        90,
        75,
    ),
    Part("cli", "synthetic data, `src.cli fit` (bf16-mixed, ddp, 1 device) then `test`", 120, 90),
    Part("models", "training steps side by side and ratios, cuDNN autotuning off and on", 90, 90),
    Part(
        "bench",
        "StructSA fast vs reference at stage 3, K/V conv fusion and layouts, JPEG decode, largest batch",
        120,
        90,
    ),
    Part(
        "pipeline", "DataLoader clips/s (16 workers on CUDA) and one worker's rate vs the step rate", 60, 60
    ),
    Part("compile", "torch.compile vs eager: output and training-step time", 180, 75),
)
TOTAL_BUDGET_S = {"cuda": 460.0, "cpu": 115.0}  # at most 8 min on the GPU, under 2 min dry
BENCH_ITEMS = {
    "models": ("models",),
    "bench": ("structsa", "convs", "jpeg_decode", "max_batch"),
    "pipeline": ("pipeline",),
}
TEST_FILES = {"tests": "tests/gpu/test_cuda_paths.py", "compile": "tests/gpu/test_cuda_compile.py"}
# what the dry run cannot check, and why (stated in every CPU result file)
CPU_LIMITS = (
    "SDPA kernel names: checked against flash / mem-efficient / cuDNN on CUDA only; on CPU the tests check the "
    "fused CPU kernel (flash-cpu), never math",
    "NCCL: the CLI part runs `--trainer.strategy ddp` with gloo on CPU; NCCL only on CUDA",
    "inductor: torch.compile uses the aot_eager backend on CPU (inductor's C++ build takes minutes on 2 cores)",
    "cuDNN autotuning: the models part measures it on CUDA only (torch.backends.cudnn.benchmark is a no-op on CPU)",
    "nvjpeg: the JPEG-decode row measures torchvision's CPU decode only; the batched CUDA decode and its pixel "
    "difference to the CPU's are measured on CUDA only",
    "timings, memory and ratios are measured at tiny shapes and mean nothing beyond 'this line ran'",
)


@dataclass(frozen=True)
class CliPlan:
    """The CLI part on one device: synthetic data size, extra config files and overrides, epochs."""

    data: dict
    configs: tuple[str, ...]
    overrides: tuple[str, ...]
    accelerator: str


CLI_PLANS = {
    "cuda": CliPlan(
        data=dict(train=224, val=56, test=56, frames=16, size=96, workers=16),
        configs=("configs/synthetic.yaml", "configs/model/structvit_s_4_2.yaml"),
        overrides=(
            "--data.num_frames",
            "16",
            "--data.crop_size",
            "96",
            "--data.batch_size",
            "16",
            "--data.num_workers",
            "8",
            "--trainer.max_epochs",
            "2",
        ),
        accelerator="cuda",
    ),
    "cpu": CliPlan(
        data=dict(train=8, val=4, test=4, frames=8, size=32, workers=1),
        configs=("configs/synthetic.yaml",),
        overrides=(
            "--data.num_frames",
            "8",
            "--data.crop_size",
            "32",
            "--data.batch_size",
            "4",
            "--data.num_workers",
            "0",
            "--trainer.max_epochs",
            "1",
        ),
        accelerator="cpu",
    ),
}


@dataclass
class Context:
    """Settings shared by the parts of one run."""

    device: str
    work: Path
    deadline: float  # time.monotonic() by which the whole check must end
    tolerance_scale: float = 1.0
    select: str | None = None  # pytest -k expression for the test parts (tests of this module)

    def env(self, **extra: str) -> dict[str, str]:
        """The parts' environment: unbuffered output, the dry-run device for the gpu tests."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GPU_CHECK_DEVICE": self.device, **extra}
        if self.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"  # one torch thread per process: the parts share a small host's cores
        return env


# ------------------------------------------------------------------------------------------ processes
def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> tuple[int | None, float]:
    """Run `cmd` in its own process group with output appended to `log`; (exit code or None if it was
    killed at `timeout`, seconds). On timeout the whole group (DataLoader workers, compile workers) ends."""
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
            out.write(f"\n[gpu-check] killed after {timeout:.0f} s (time budget)\n")
        except BaseException:  # Ctrl-C: the part runs in its own session, so end it too
            _kill_group(proc)
            raise
    return code, time.perf_counter() - start


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (it and every child it started), then reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def tail(log: Path, chars: int = LOG_TAIL) -> str:
    """The last `chars` characters of a log file ('' if it does not exist)."""
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


# ---------------------------------------------------------------------------------------- test parts
def junit_outcomes(path: Path) -> list[dict]:
    """[{test, outcome: passed|failed|error|skipped, reason}] from a pytest junit XML file."""
    if not path.is_file():
        return []
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                reason = (node.get("message") or node.text or "")[:300]
                break
        outcomes.append(
            {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "reason": reason}
        )
    return outcomes


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file (missing file: none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_test_part(name: str, ctx: Context, timeout: float) -> dict:
    """Run one gpu test file under pytest; its tests' outcomes and the measurements they recorded."""
    log, junit, rows = (ctx.work / f"{name}.{ext}" for ext in ("log", "xml", "jsonl"))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        TEST_FILES[name],
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "addopts=--strict-markers -ra",
        f"--junitxml={junit}",
        f"--timeout={int(timeout)}",
    ]
    if ctx.select:
        cmd += ["-k", ctx.select]
    env = ctx.env(GPU_CHECK_RECORD=str(rows), GPU_CHECK_TOLERANCE_SCALE=str(ctx.tolerance_scale))
    code, seconds = run_logged(cmd, log, timeout, env)
    outcomes = junit_outcomes(junit)
    counts = {k: sum(o["outcome"] == k for o in outcomes) for k in ("passed", "failed", "error", "skipped")}
    result = {
        "seconds": round(seconds, 1),
        "exit_code": code,
        "counts": counts,
        "rows": read_jsonl(rows),
        "tests": outcomes,
    }
    if code is None:
        return {
            **result,
            "status": "error",
            "reason": f"timed out after {timeout:.0f} s",
            "log_tail": tail(log),
        }
    if counts["failed"] or counts["error"]:
        return {
            **result,
            "status": "failed",
            "reason": f"{counts['failed'] + counts['error']} test(s) failed",
            "log_tail": tail(log),
        }
    if code not in (0, 5) or not outcomes:
        return {**result, "status": "error", "reason": f"pytest exit code {code}", "log_tail": tail(log)}
    if not counts["passed"]:
        reasons = sorted({o["reason"] for o in outcomes})
        return {**result, "status": "skipped", "reason": "; ".join(reasons)[:300]}
    return {**result, "status": "passed", "reason": f"{counts['passed']} passed, {counts['skipped']} skipped"}


# ------------------------------------------------------------------------------------------ CLI part
def cli_commands(ctx: Context) -> dict[str, list[str]]:
    """The data, fit and test commands of the CLI part, as a user would type them."""
    plan = CLI_PLANS[ctx.device]
    data, runs = ctx.work / "synthetic", ctx.work / "runs"
    py = sys.executable
    d = plan.data
    generate = [
        py,
        "-m",
        "data_prep.synthetic",
        "--out",
        str(data),
        "--train",
        str(d["train"]),
        "--val",
        str(d["val"]),
        "--test",
        str(d["test"]),
        "--frames",
        str(d["frames"]),
        "--size",
        str(d["size"]),
        "--workers",
        str(d["workers"]),
    ]
    common = [arg for config in plan.configs for arg in ("--config", config)] + [
        "--data.root",
        str(data),
        *plan.overrides,
        "--trainer.accelerator",
        plan.accelerator,
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "ddp",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.logger.init_args.name",
        "gpu-check",
        "--trainer.default_root_dir",
        str(runs / "gpu-check"),
    ]
    fit = [py, "-m", "src.cli", "fit", *common, "--trainer.logger.init_args.version", "fit"]
    ckpt = runs / "gpu-check" / "fit" / "checkpoints" / "last.ckpt"
    test = [
        py,
        "-m",
        "src.cli",
        "test",
        *common,
        "--trainer.logger.init_args.version",
        "test",
        "--ckpt_path",
        str(ckpt),
    ]
    return {"data": generate, "fit": fit, "test": test}


def _confusion_total(path: Path) -> int | None:
    """Sum of a confusion_matrix.csv written by `test` (the number of test videos scored), None if absent."""
    from src.runs import read_confusion

    return sum(map(sum, read_confusion(path)[1])) if path.is_file() else None


def run_cli_part(ctx: Context, timeout: float) -> dict:
    """Generate the synthetic data, fit and test through the CLI; check backend, checkpoint and test report."""
    log = ctx.work / "cli.log"
    deadline = time.monotonic() + timeout
    steps = {}
    for name, cmd in cli_commands(ctx).items():
        left = deadline - time.monotonic()
        code, seconds = run_logged(cmd, log, left, ctx.env())
        steps[name] = {"exit_code": code, "seconds": round(seconds, 1), "command": _display(cmd)}
        if code != 0:
            why = f"timed out after {timeout:.0f} s" if code is None else f"exit code {code}"
            return {"status": "error", "reason": f"{name}: {why}", "steps": steps, "log_tail": tail(log)}
    return {"steps": steps, **_cli_checks(ctx, log.read_text(errors="replace"))}


def _cli_checks(ctx: Context, text: str) -> dict:
    """Status of a finished fit + test: DDP backend (nccl on CUDA, gloo on CPU), no non-finite loss, a
    checkpoint, every test video scored."""
    backend = re.findall(r"distributed_backend=(\w+)", text)
    expected = "nccl" if ctx.device == "cuda" else "gloo"
    runs = ctx.work / "runs" / "gpu-check"
    scored = _confusion_total(runs / "test" / "confusion_matrix.csv")
    top1 = re.findall(r"test/top1\s*[│|]\s*([0-9.]+)", text)
    checks = {
        "ddp_backend": backend[-1] if backend else None,
        "checkpoint": (runs / "fit" / "checkpoints" / "last.ckpt").is_file(),
        "test_videos_scored": scored,
        "test_videos": CLI_PLANS[ctx.device].data["test"],
        "test_top1": float(top1[-1]) if top1 else None,
        "nonfinite_skips": text.count("non-finite loss at global step"),
    }
    problems = []
    if set(backend) != {expected}:
        problems.append(f"DDP backend {backend or 'not reported'}, expected {expected}")
    if not checks["checkpoint"]:
        problems.append("no last.ckpt after fit")
    if scored != checks["test_videos"]:
        problems.append(f"test scored {scored} videos of {checks['test_videos']}")
    if checks["nonfinite_skips"]:
        problems.append(
            f"{checks['nonfinite_skips']} training step(s) had a non-finite loss under bf16-mixed"
        )
    note = "" if ctx.device == "cuda" else "NCCL is CUDA-only: gloo here"
    if problems:
        return {**checks, "status": "failed", "reason": "; ".join(problems), "log_tail": text[-LOG_TAIL:]}
    return {
        **checks,
        "status": "passed",
        "reason": f"fit + test through the CLI, {backend[-1]} DDP",
        "note": note,
    }


def _display(cmd: list[str]) -> str:
    return " ".join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd))


# --------------------------------------------------------------------------------- benchmark parts
def run_bench_part(name: str, ctx: Context, timeout: float) -> dict:
    """Run the part's benchmark items in a worker process; rows measured before a crash or kill are kept."""
    log, out = ctx.work / f"{name}.log", ctx.work / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        "--device",
        ctx.device,
        "--work",
        str(ctx.work),
        "--worker",
        ",".join(BENCH_ITEMS[name]),
        "--worker-out",
        str(out),
    ]
    code, seconds = run_logged(cmd, log, timeout, ctx.env())
    done = json.loads(out.read_text()) if out.is_file() else {"rows": [], "item_seconds": {}}
    result = {"seconds": round(seconds, 1), "exit_code": code, **done}
    errors = [r for r in done["rows"] if r.get("status") == "error"]
    missing = [i for i in BENCH_ITEMS[name] if i not in done["item_seconds"]]
    if code is None:
        return {
            **result,
            "status": "error",
            "reason": f"timed out after {timeout:.0f} s; not run: {missing}",
            "log_tail": tail(log),
        }
    if code != 0 or errors or missing:
        reason = "; ".join(r["reason"] for r in errors) or f"worker exit code {code}; not run: {missing}"
        return {**result, "status": "error", "reason": reason[:500], "log_tail": tail(log)}
    return {**result, "status": "passed", "reason": f"{len(done['rows'])} rows"}


def worker(device: str, items: list[str], work: Path, out: Path) -> int:
    """Worker process: run benchmark items in order, rewriting `out` after each (an error row on failure)."""
    import torch

    from benchmarks.gpu_bench import CONFIGS, run_item

    if device == "cpu":
        torch.set_num_threads(1)  # on a shared host more threads make the timings swing
    cfg = CONFIGS[device]
    done: dict = {"rows": [], "item_seconds": {}}
    for item in items:
        print(f"[{item}]", flush=True)
        start = time.perf_counter()
        try:
            rows = run_item(item, cfg, work)
        except Exception as err:  # noqa: BLE001 - recorded as an error row; the next item still runs
            traceback.print_exc()
            rows = [{"item": item, "status": "error", "reason": f"{type(err).__name__}: {err}"[:300]}]
        done["rows"] += rows
        done["item_seconds"][item] = round(time.perf_counter() - start, 1)
        _write_json(out, done)
    return 0


# --------------------------------------------------------------------------------------- the check
def run_part(part: Part, ctx: Context) -> dict:
    """Run one part within its budget and what is left of the total; never raises."""
    left = ctx.deadline - time.monotonic()
    budget = min(part.budget(ctx.device), left)
    base = {"what": part.what, "budget_s": part.budget(ctx.device)}
    if budget < MIN_PART_S:
        return {
            **base,
            "status": "skipped",
            "reason": f"the check's total budget is used up ({left:.0f} s left)",
        }
    start = time.perf_counter()
    try:
        if part.name in TEST_FILES:
            result = run_test_part(part.name, ctx, budget)
        elif part.name == "cli":
            result = run_cli_part(ctx, budget)
        else:
            result = run_bench_part(part.name, ctx, budget)
    except Exception as err:  # noqa: BLE001 - a harness error of one part must not stop the others
        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(err).__name__}: {err}"[:300]}
    return {**base, "seconds": round(time.perf_counter() - start, 1), **result}


def summary(parts: dict[str, dict]) -> dict:
    """Headline numbers from the parts' rows: step ratios, fast/reference, largest batch, feeding the GPU."""
    from benchmarks.gpu_bench import feeding

    bench = parts.get("bench", {}).get("rows", [])
    pipeline = parts.get("pipeline", {}).get("rows", [])
    models = parts.get("models", {}).get("rows", [])
    ratios = [r for r in models if r.get("kind") == "ratio"]
    out: dict = {
        "step_ratios": {
            r["label"] + (", cudnn.benchmark" if r["cudnn_benchmark"] else ""): r["step_ratio"]
            for r in ratios
        },
        "step_target": next(
            (
                f"{r['label']} <= {r['target']}x: {'met' if r['target_met'] else 'not met'}"
                for r in ratios
                if r.get("target") and not r["cudnn_benchmark"]
            ),
            None,
        ),
        "feeding": feeding(models, pipeline),
    }
    largest = next((r for r in bench if r.get("item") == "max_batch" and r.get("status") == "ok"), None)
    if largest:
        out["largest_batch"] = {
            k: largest[k] for k in ("label", "largest_batch", "smallest_failing", "limit", "stopped_by")
        }
    compile_rows = parts.get("compile", {}).get("rows", [])
    if compile_rows:
        out["compile"] = {
            k: compile_rows[0].get(k)
            for k in ("compile_s", "eager_step_ms", "compiled_step_ms", "compiled_vs_eager")
        }
    return out


def exit_code(parts: dict[str, dict]) -> int:
    """1 if any part failed a correctness check, crashed or timed out; 0 otherwise (skips say why)."""
    return 1 if any(p["status"] in ("failed", "error") for p in parts.values()) else 0


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def default_out(device: str) -> Path:
    """benchmarks/results/gpu-check.json on CUDA, gpu-check-cpu.json for the dry run."""
    return RESULTS / ("gpu-check.json" if device == "cuda" else "gpu-check-cpu.json")


def _out_path(arg: Path | None, device: str) -> Path:
    if arg is None:
        return default_out(device)
    return arg if arg.suffix == ".json" else arg / default_out(device).name


def check(args: argparse.Namespace, parts: list[Part]) -> int:
    """Run the parts in order, writing JSON + markdown after each; the exit code of the whole check."""
    from benchmarks.gpu_tables import render

    started = time.monotonic()
    machine: dict = {}
    probe = threading.Thread(target=lambda: machine.update(_machine_info()), daemon=True)
    probe.start()  # importing torch for it takes seconds: overlap them with the first parts
    out = _out_path(args.out, args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.device, work, started + args.budget_s, args.tolerance_scale, args.select)
    results: dict = {
        "check": "gpu-check",
        "device": args.device,
        "command": "python -m benchmarks.gpu_check " + " ".join(args.argv),
        "machine": machine,
        "budget_s": args.budget_s,
        "limits_on_this_device": list(CPU_LIMITS) if args.device == "cpu" else [],
        "parts": {},
    }
    lock = threading.Lock()

    def run_and_write(part: Part) -> None:
        print(
            f"[gpu-check] {part.name}: {part.what} (budget {part.budget(args.device):.0f} s, "
            f"{ctx.deadline - time.monotonic():.0f} s left)",
            flush=True,
        )
        result = run_part(part, ctx)
        print(
            f"[gpu-check] {part.name}: {result['status']} in {result.get('seconds', 0):.0f} s: "
            f"{result.get('reason', '')}",
            flush=True,
        )
        probe.join()
        with lock:
            done = {**results["parts"], part.name: result}
            results["parts"] = {p.name: done[p.name] for p in parts if p.name in done}  # in part order
            results.update(
                summary=summary(results["parts"]),
                duration_s=round(time.monotonic() - started, 1),
                exit_code=exit_code(results["parts"]),
            )
            _write_json(out, results)
            out.with_suffix(".md").write_text(render(results))

    # On CUDA the parts run one at a time (they measure time and memory); the CPU dry run may overlap them.
    jobs = 1 if args.device == "cuda" else args.jobs
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run_and_write, parts))
    if not args.work and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    code = results["exit_code"]
    print(
        f"[gpu-check] {'PASSED' if code == 0 else 'FAILED'} in {results['duration_s']:.0f} s: {out} and "
        f"{out.with_suffix('.md')}" + (f"; work folder {work}" if args.work or args.keep_work else ""),
        flush=True,
    )
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the check (or, with --worker, one worker process's benchmark items)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (or a folder for it); default benchmarks/results/gpu-check[-cpu].json",
    )
    parser.add_argument(
        "--only", default=",".join(p.name for p in PARTS), help="comma-separated parts to run"
    )
    parser.add_argument(
        "--work", default=None, help="folder for data, runs and logs (default: a temporary one)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="total time budget of the parts (default 460 s on CUDA, 115 s on CPU)",
    )
    parser.add_argument(
        "--tolerance-scale",
        type=float,
        default=1.0,
        help="multiply every correctness bound (0 makes every comparison fail: proves the exit code)",
    )
    parser.add_argument("--select", default=None, help="pytest -k expression for the test parts")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="CPU dry run only: parts run at the same time (default 2; on CUDA always 1)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.device, args.worker.split(","), Path(args.work), args.worker_out)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    known = {p.name: p for p in PARTS}
    if unknown := [n for n in names if n not in known]:
        parser.error(f"--only {unknown}: choose from {list(known)}")
    if args.device == "cuda" and not _cuda_available():
        print(
            "gpu-check: no CUDA GPU is visible here; run the CPU dry run with `make gpu-check DEVICE=cpu`",
            file=sys.stderr,
        )
        return 2
    args.budget_s = args.budget_s or TOTAL_BUDGET_S[args.device]
    args.argv = argv
    return check(args, [p for p in PARTS if p.name in names])


def _machine_info() -> dict:
    from benchmarks.machine import machine_info

    return machine_info()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
