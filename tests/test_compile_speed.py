"""benchmarks/compile_speed.py: the compiled-vs-eager harness runs end to end and writes complete rows.

Timings are never asserted (they depend on the machine); the rows' fields, the logit comparison and the table are.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_writes_a_train_and_an_inference_row_with_compile_time_and_logit_difference(
    tmp_path, capsys
):
    from benchmarks.compile_speed import main

    out = tmp_path / "compile.json"
    assert main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert [(r["label"], r["kind"]) for r in rows] == [
        ("structvit_xs", "train"),
        ("structvit_xs", "inference"),
    ]
    for r in rows:
        assert r["status"] == "ok" and r["backend"] == "aot_eager" and r["mode"] == "default"
        assert r["eager_ms"] > 0 and r["compiled_ms"] > 0 and r["compile_s"] > 0 and r["reps"] == 2
        assert r["graphs"] >= 1  # the compiled copy really went through dynamo
        # same weights, same clips: the traced graph runs eager's kernels (inductor's reorder sums: ~1e-7)
        assert r["max_abs_diff"] < 1e-3 and r["rel_diff"] < 1e-4
    assert {"cpu", "torch", "date"} <= set(results["machine"])
    assert "torch.compile vs eager" in capsys.readouterr().out


def test_an_unknown_model_name_is_refused_naming_the_known_ones(capsys):
    from benchmarks.compile_speed import main

    with pytest.raises(SystemExit):
        main(["--models", "structvit_q"])
    err = capsys.readouterr().err
    assert "structvit_q" in err and "uniformer_s" in err
