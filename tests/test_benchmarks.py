"""The benchmark harness: allocator-true memory, budgets that skip instead of crashing, valid JSON and tables.

Timings are never asserted (they depend on the machine); the harness's accounting and outputs are.
"""

import json

import pytest
import torch

from benchmarks.attention import AttentionCase, measure_attention
from benchmarks.limits import Budget, QuadraticPredictor, check
from benchmarks.memory import cpu_peak_bytes, peak_of_running_sum
from benchmarks.run import main
from benchmarks.tables import update_document, write_section
from benchmarks.timing import time_call

MB = 1_000_000


def test_cpu_peak_is_the_high_water_mark_of_tensor_memory():
    def allocate_then_smaller():
        big = torch.empty(8 * MB, dtype=torch.uint8)
        del big
        kept = torch.empty(3 * MB, dtype=torch.uint8)
        extra = torch.empty(2 * MB, dtype=torch.uint8)
        return kept, extra

    peak = cpu_peak_bytes(allocate_then_smaller)
    assert 8 * MB <= peak < 8 * MB + 64 * 1024  # the 8 MB block, not the 5 MB that were live at the end


def test_cpu_peak_counts_backward_allocations():
    x = torch.randn(1000, 1000, requires_grad=True)  # 4 MB; lives before the call, so not counted

    def forward_backward():
        (x * 2).relu().sum().backward()

    peak = cpu_peak_bytes(forward_backward)
    assert peak >= 8 * MB  # x*2 and relu (4 MB each) stay alive for backward, which also allocates x.grad


def test_running_sum_peak():
    assert peak_of_running_sum([5, -5, 3, 4, -7]) == 7
    assert peak_of_running_sum([-2, 1]) == 0


def test_time_call_runs_warmup_then_reps():
    calls = []
    timing = time_call(lambda: calls.append(1), reps=5, warmup=2)
    assert len(calls) == 7
    assert timing.reps == 5 and timing.min_s <= timing.median_s <= timing.max_s
    with pytest.raises(ValueError, match="reps"):
        time_call(lambda: None, reps=0)


def test_torch_timer_calls_more_often_than_asked_so_time_call_stays_hand_written():
    from torch.utils.benchmark import Timer

    calls = []
    timer = Timer("fn()", globals={"fn": lambda: calls.append(torch.get_num_threads())})
    timer.timeit(number=1)  # one timed call, after a warm-up of its own that cannot be turned off
    assert len(calls) == 3
    calls.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timer.blocked_autorange(
            min_run_time=0.01
        )  # as many calls as fill the time: a training step would run on
    finally:
        torch.set_num_threads(threads)
    assert len(calls) > 10
    assert set(calls) == {1}  # and under one thread, whatever the caller set, unless told otherwise
    calls.clear()
    time_call(
        lambda: calls.append(1), reps=1, warmup=0
    )  # what gpu_bench / model_step interleave, call by call
    assert len(calls) == 1


def test_predictor_extrapolates_quadratically_and_budget_names_the_limit():
    predictor = QuadraticPredictor()
    predictor.record(("cfg",), pairs=100, peak_bytes=2**20, seconds=0.5)
    peak, seconds = predictor.predict(("cfg",), pairs=400)
    assert peak == 4 * 2**20 and seconds == 2.0
    assert check(Budget(memory_bytes=2**30, seconds=60), peak, seconds, calls=6) is None
    assert "GiB" in check(Budget(memory_bytes=2**20, seconds=60), peak, seconds, calls=6)
    assert "12 s" in check(Budget(memory_bytes=2**30, seconds=10), peak, seconds, calls=6)


def test_reference_case_over_the_memory_budget_is_skipped_with_a_reason():
    case = AttentionCase(
        "tiny", 64, 1, (2, 2, 4), structure_dim=2, kv_stride=1, path="reference", mode="train"
    )
    row = measure_attention(
        case, reps=1, warmup=0, budget=Budget(memory_bytes=1024), predictor=QuadraticPredictor()
    )
    assert row["status"] == "skipped"
    assert "budget" in row["reason"] and row["predicted_peak_mib"] > 0


def test_fast_path_row_reports_time_memory_and_shape():
    case = AttentionCase("tiny", 64, 1, (2, 2, 4), structure_dim=2, kv_stride=2, path="fast", mode="train")
    row = measure_attention(case, reps=2, warmup=1)
    assert row["status"] == "ok" and row["reps"] == 2
    assert row["tokens"] == 16 and row["keys"] == 2 * 1 * 2 and row["attended"] == 8
    assert row["median_ms"] > 0 and row["peak_mib"] > 0


def test_update_document_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Ablation\n\nkept table\n")
    update_document(doc, "cpu", "first tables")
    update_document(doc, "cpu", "second tables")
    text = doc.read_text()
    assert "second tables" in text and "first tables" not in text
    assert "## Ablation\n\nkept table" in text and text.count("<!-- bench:cpu:begin -->") == 1


@pytest.mark.slow
def test_tiny_suite_runs_every_section_and_writes_valid_json_and_tables(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Ablation\n\nother engineer's table\n")
    code = main(
        [
            "--suite",
            "tiny",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(tmp_path / "videos"),
            "--doc",
            str(doc),
            "--threads",
            "1",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "tiny.json").read_text())
    assert {"cpu", "cpu_cores", "torch", "date"} <= set(results["machine"])
    sections = results["sections"]
    assert set(sections) == {
        "structsa",
        "scaling",
        "model",
        "pipeline",
        "pytorchvideo",
        "decoders",
        "compile",
        "images",
    }
    assert any(r.get("reader") == "ImageDataModule (folder)" for r in sections["images"])
    assert sections["compile"] == []  # off in the tiny suite: tests/test_compile_speed.py runs its quick path
    paths = {r["path"] for r in sections["structsa"]}
    assert paths == {"fast", "reference", "vanilla"}
    # every row measured; only an optional reader that cannot run here (torchcodec without FFmpeg) is skipped
    assert all(
        r["status"] == "ok" or (r["status"] == "skipped" and r.get("reader") == "torchcodec")
        for rows in sections.values()
        for r in rows
    )
    assert {r["label"] for r in sections["model"]} == {"uniformer_s", "structvit_s S=2"}
    stages = {(r["dataset"], r["stage"], r["backend"]) for r in sections["pipeline"]}
    assert ("k400", "decode", "pyav") in stages and ("ssv2", "dataloader", "decord") in stages  # the default
    assert ("k400", "decode+augment", "decord") in stages  # before: augmentation in the worker
    assert ("k400", "decode+crop (augment on device)", "pyav") in stages
    compared = [r for r in sections["pytorchvideo"] if r.get("type") == "ratio"]
    assert {(r["dataset"], r["variant"]) for r in compared if r["stage"] == "decode+augment"} == {
        (d, v) for d in ("k400", "ssv2") for v in ("augment on CPU", "augment on device")
    }
    decoders = {(r["dataset"], r["stage"], r["reader"]) for r in sections["decoders"] if r["type"] == "clips"}
    assert ("k400-340p", "decode", "decord (before tuning)") in decoders
    assert ("ssv1", "worker, augment_on device", "jpeg folder (Pillow)") in decoders
    assert any(
        r["type"] == "ratio" and r["factor"].startswith("loader per core") for r in sections["decoders"]
    )
    text = doc.read_text()
    for title in (
        "fast exact path vs reference path",
        "vanilla attention",
        "Scaling with tokens",
        "Whole model",
        "Data pipeline",
        "Against PyTorchVideo",
        "Decoders, fairly",
    ):
        assert title in text
    assert "other engineer's table" in text


def test_sdpa_kernel_names_the_fused_kernel_and_exposes_the_math_fallback():
    from benchmarks.kernels import sdpa_kernel
    from benchmarks.memory import operator_names

    q = torch.randn(1, 2, 16, 8)
    k = torch.randn(1, 2, 32, 8)
    strided = torch.randn(1, 2, 8, 32).transpose(-1, -2)  # last-dim stride 32: no fused kernel accepts it
    fused = sdpa_kernel(operator_names(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k)))
    fallback = sdpa_kernel(
        operator_names(lambda: torch.nn.functional.scaled_dot_product_attention(q, strided, k))
    )
    assert fused == "flash-cpu"
    assert fallback == "math"


def test_sdpa_kernels_lists_each_kernel_once():
    from benchmarks.kernels import sdpa_kernels

    names = [
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_attention_math",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::mm",
    ]
    assert sdpa_kernels(names) == ["flash-cpu", "math"]


def test_write_section_replaces_only_the_ablation_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Results\n\nkeep me\n")
    write_section(doc, "first table")
    write_section(doc, "second table")
    text = doc.read_text()
    assert text.count("## Ablation") == 1 and "second table" in text and "first table" not in text
    assert text.startswith("# Benchmarks\n\n## Results\n\nkeep me\n")
    doc.write_text(text + "\n## Later\n\nalso keep\n")
    write_section(doc, "third table")
    assert "also keep" in doc.read_text() and "third table" in doc.read_text()


def test_the_attention_command_line_prints_both_paths_and_their_ratio(capsys):
    from benchmarks.attention import main as attention_main

    attention_main(
        ["--dim", "16", "--heads", "2", "--grid", "2", "3", "3", "--structure-dim", "2", "--repeats", "2"]
    )
    out = capsys.readouterr().out
    assert "fast" in out and "reference" in out and "reference / fast = " in out
    assert "(2 runs" in out  # every path timed `--repeats` times
