"""`make gpu-check DEVICE=cpu`, the dry run of the GPU check: every part runs at tiny shapes and is reported,
a correctness failure or a part over its time budget gives a non-zero exit, and the pieces behave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_bench import search_largest, step_ratios, stopped_by
from benchmarks.gpu_check import PARTS, junit_outcomes, main, run_logged

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "StructSA fast vs reference path, float32",
    "bf16 autocast",
    "SDPA kernel",
    "bf16-mixed training step",
    "torch.compile vs eager",
    "CLI: the commands a user types",
    "Training step",
    "Conv3d variants",
    "JPEG decode (torchvision.io.decode_jpeg)",
    "Largest batch",
    "Data pipeline against the step rate",
)


def gpu_check(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(part: dict, key: str) -> list[dict]:
    return [r for r in part.get("rows", []) if key in r]


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_cpu_dry_run_executes_every_part_and_writes_json_and_markdown(tmp_path):
    start = time.monotonic()
    # ~60 s on 2 idle cores; a total budget above the 115 s default keeps a loaded host from failing the test
    # (timings are not asserted), while each part still has its own budget
    result = gpu_check("--out", str(tmp_path), "--budget-s", "240", timeout=300)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    parts = data["parts"]
    assert list(parts) == [p.name for p in PARTS]
    assert all(p["status"] == "passed" for p in parts.values()), {
        n: p.get("reason") for n, p in parts.items()
    }
    assert any(
        "NCCL" in line for line in data["limits_on_this_device"]
    )  # what the dry run cannot check, said

    tests = parts["tests"]
    assert tests["counts"]["skipped"] == 0 and tests["counts"]["passed"] >= 30  # every gpu test ran, on CPU
    assert all(r["passed"] for r in tests["rows"])
    assert {r["kernels"][0] for r in rows(tests, "kernels")} == {"flash-cpu"}
    assert len(rows(tests, "output_rel_err")) == 6 and len(rows(tests, "rel_err_attn_fp32_on")) == 6
    (compiled,) = parts["compile"]["rows"]
    assert compiled["backend"] == "aot_eager" and compiled["graphs"] >= 1 and compiled["compiled_step_ms"] > 0
    assert compiled["compiled_inference_ms"] > 0 and compiled["eager_inference_ms"] > 0  # the inference row

    cli = parts["cli"]
    assert cli["ddp_backend"] == "gloo" and cli["checkpoint"] and cli["test_videos_scored"] == 4
    assert set(cli["steps"]) == {"data", "fit", "test"}

    labels = {r["label"] for r in rows(parts["models"], "step_ratio")}
    assert "structvit_s_4_2 (S=2) / uniformer_s" in labels
    assert "structvit_s_4_2 (S=2) / uniformer_s" in data["summary"]["step_ratios"]
    bench = parts["bench"]["rows"]
    assert {r["path"] for r in bench if r["item"] == "structsa" and r["status"] == "ok"} == {
        "fast",
        "reference",
        "vanilla",
    }
    variants = [r for r in bench if r["item"] in ("kv_structure", "depthwise")]
    assert {r["variant"] for r in variants} >= {"separate (current)", "fused K+V", "channels_last_3d"}
    assert all(r["exact"] for r in variants)
    (jpeg,) = [r for r in bench if r["item"] == "jpeg_decode"]  # real JPEGs decoded on one CPU thread
    assert jpeg["status"] == "ok" and jpeg["images"] == 8 and jpeg["cpu_images_per_s"] > 0, jpeg
    assert jpeg["cpu_threads"] == 1 and jpeg["mean_kib"] > 0
    assert jpeg["cuda"].startswith("not run") and jpeg["cuda_images_per_s"] is None  # nvjpeg: CUDA only
    assert parts["bench"]["item_seconds"]["jpeg_decode"] < 10  # ~0.01 s idle; the bound leaves room for load
    (largest,) = [r for r in bench if r["item"] == "max_batch"]
    assert largest["largest_batch"] >= 8 and largest["trials"]
    if largest["stopped_by"] == "bisected":  # the usual case; a loaded host may end the search by its budget
        assert largest["complete"] and largest["smallest_failing"] > largest["largest_batch"]
    else:
        assert largest["stopped_by"] == "time budget" and not largest["complete"], largest
    pipeline = {r["stage"]: r for r in parts["pipeline"]["rows"]}
    assert set(pipeline) == {
        "dataloader",  # the configs' recipe: PyAV, augmentation on the device
        "decode+crop (augment on device)",
        "device part, on CPU",
        "torchcodec decode on CPU",
    }
    decoded = pipeline["torchcodec decode on CPU"]  # NVDEC on CUDA; on the CPU its frames equal PyAV's
    assert decoded["status"] == "skipped" or decoded["max_abs_diff_vs_pyav"] == 0, decoded
    assert len(data["summary"]["feeding"]) == 3  # one per model: workers needed to feed its step rate

    markdown = (tmp_path / "gpu-check-cpu.md").read_text()
    for title in SECTIONS:
        assert title in markdown, title
    print(f"dry run: {seconds:.0f} s")


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_correctness_failure_makes_the_check_exit_non_zero(tmp_path):
    out = tmp_path / "check.json"
    result = gpu_check(
        "--only", "tests", "--select", "float32", "--tolerance-scale", "0", "--out", str(out), timeout=180
    )
    assert result.returncode == 1, result.stdout[-3000:]
    part = json.loads(out.read_text())["parts"]["tests"]
    assert part["status"] == "failed" and part["counts"]["failed"] == 6 and part["counts"]["passed"] == 0
    assert all(not r["passed"] and r["output_rel_err"] > 0 for r in part["rows"])
    assert "| tests | failed |" in out.with_suffix(".md").read_text()


def test_a_part_over_its_budget_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; child = subprocess.Popen(['sleep', '60']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    code, seconds = run_logged([sys.executable, "-c", script], tmp_path / "part.log", 2.0, dict(os.environ))
    assert code is None and seconds < 10
    assert "killed after 2 s" in (tmp_path / "part.log").read_text()
    child = int(pid_file.read_text())
    time.sleep(0.2)
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()  # gone, or a zombie awaiting its reaper


def test_largest_batch_search_doubles_then_bisects_and_stops_at_the_cap():
    tried = []

    def trial(batch: int) -> dict:
        tried.append(batch)
        return {"batch": batch, "fits": batch <= 37}

    fits, fails, trials = search_largest(trial, 8, 1024, time.monotonic() + 60)
    assert tried == [8, 16, 32, 64, 48, 40, 36, 38]  # doubling, then bisection to within 1/16
    assert (fits, fails) == (36, 38) and len(trials) == len(tried)
    assert search_largest(lambda b: {"batch": b, "fits": True}, 8, 40, time.monotonic() + 60)[:2] == (
        32,
        None,
    )
    assert search_largest(trial, 8, 1024, time.monotonic() - 1) == (0, None, [])  # no time left: no trial


def test_the_search_row_says_why_it_stopped():
    fits = {"batch": 32, "fits": True}
    assert stopped_by(36, 38, [fits], 1024) == "bisected"
    assert stopped_by(32, None, [fits], 40) == "cap"  # 64 would pass the cap
    assert stopped_by(32, None, [fits], 1024) == "time budget"
    assert stopped_by(16, 64, [fits], 1024) == "time budget"  # stopped mid-bisection


def test_step_ratios_compare_rows_of_the_same_cudnn_setting_and_mark_the_target():
    def row(label: str, ms: float, autotune: bool) -> dict:
        return {"label": label, "status": "ok", "step_ms": ms, "peak_mib": 100.0, "cudnn_benchmark": autotune}

    measured = [
        row("uniformer_s", 100, False),
        row("structvit_s_4_2 (S=2)", 115, False),
        row("uniformer_s", 50, True),
        row("structvit_s_4_2 (S=2)", 54, True),
    ]
    ratios = {(r["cudnn_benchmark"], r["label"]): r for r in step_ratios(measured)}
    off, on = (
        ratios[(False, "structvit_s_4_2 (S=2) / uniformer_s")],
        ratios[(True, "structvit_s_4_2 (S=2) / uniformer_s")],
    )
    assert (off["step_ratio"], off["target_met"]) == (1.15, False)
    assert (on["step_ratio"], on["target_met"]) == (1.08, True)


def test_junit_outcomes_read_passed_failed_and_skipped_tests(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="a" name="ok"/>'
        '<testcase classname="a" name="bad"><failure message="too large">x</failure></testcase>'
        '<testcase classname="a" name="skip"><skipped message="CUDA is absent"/></testcase>'
        "</testsuite></testsuites>"
    )
    outcomes = {o["test"]: (o["outcome"], o["reason"]) for o in junit_outcomes(xml)}
    assert outcomes == {
        "a::ok": ("passed", ""),
        "a::bad": ("failed", "too large"),
        "a::skip": ("skipped", "CUDA is absent"),
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_device_cuda_without_a_gpu_names_the_dry_run(capsys):
    assert main(["--device", "cuda"]) == 2
    assert "make gpu-check DEVICE=cpu" in capsys.readouterr().err


def test_an_unknown_part_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--only", "tests,nonsense"])
    assert "nonsense" in capsys.readouterr().err
