"""`make demo`: the demo's end-to-end fast variant (generate -> fit -> test -> predict through
`python -m src.cli`, the data through `python -m data_prep.synthetic`), and its report."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.runs import event_scalars

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_fast_demo_generates_fits_tests_and_predicts_through_the_cli(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.demo",
            "--data-root",
            str(data),
            "--runs",
            str(runs),
            "--fast",
            "--quiet",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = runs / "synthetic_fast" / "version_0"
    summary = json.loads((run_dir / "demo_summary.json").read_text())

    # the data step wrote a real index of H.264 clips
    index = data / "synthetic_fast"
    classes = (index / "classes.txt").read_text().split()
    assert len(classes) == 14 and (index / "manifest.json").is_file()
    # fit: the run folder of the CLI, with its config, a best checkpoint carrying the config, and TensorBoard scalars
    assert (run_dir / "config.yaml").is_file()
    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)
    assert Path(summary["checkpoint"]).name.startswith("best-") and "cli_config" in checkpoint
    assert any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    fit_scalars = event_scalars(run_dir)
    assert {"train/loss_epoch", "val/top1"} <= set(fit_scalars)
    # test: every test clip evaluated once; the demo's own arithmetic agrees with the metrics the task logged
    results = summary["results"]
    with open(run_dir / "test" / "confusion_matrix.csv", newline="") as f:
        matrix = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    assert results["clips"] == sum(map(sum, matrix)) == 14
    test_scalars = event_scalars(run_dir / "test")
    assert results["top1"] == pytest.approx(test_scalars["test/top1"], abs=1e-6)
    assert results["mean_class"] == pytest.approx(test_scalars["test/mean_class"], abs=1e-6)
    assert results["top5"] == pytest.approx(test_scalars["test/top5"]) and results["top5"] >= results["top1"]
    assert results["reversed_clips"] == 12  # one test clip per class, 12 classes in reversed pairs
    # predict, from the checkpoint alone (no config, no data.root): one record per copied test clip, top-5 classes
    # of the index, probabilities in decreasing order, and a feature row per clip in the same order
    records = [
        json.loads(line) for line in (run_dir / "predict" / "predictions.jsonl").read_text().splitlines()
    ]
    features = np.load(run_dir / "predict" / "predictions.features.npy")
    assert features.shape == (4, 192) and np.isfinite(features).all()
    assert (run_dir / "predict" / "predictions.features.txt").read_text().splitlines() == [
        r["path"] for r in records
    ]
    assert not (run_dir / "predict" / "config.yaml").exists()
    clip_names = sorted(p.name for p in (run_dir / "predict" / "clips").iterdir())
    assert sorted(Path(r["path"]).name for r in records) == clip_names and len(records) == 4
    for record in records:
        probs = [c["prob"] for c in record["top5"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert all(c["class"] in classes for c in record["top5"])
    # export: the demo checkpoint to ONNX and TorchScript, each checked against eager PyTorch inside the command
    pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install -e '.[export]'")
    for fmt, name in (("onnx", "demo.onnx"), ("torchscript", "demo.pt")):
        exported = subprocess.run(
            [
                sys.executable,
                "-m",
                "src.export",
                "--ckpt",
                summary["checkpoint"],
                "--format",
                fmt,
                "--out",
                str(tmp_path / name),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
        diff = float(re.search(r"max abs diff (\S+) \(atol 0.0001\) OK", exported.stdout).group(1))
        assert diff <= 1e-4 and (tmp_path / name).stat().st_size > 1e5
        assert json.loads((tmp_path / f"{name}.json").read_text())["class_names"] == classes
    # the report names the numbers, the log folder and how to open TensorBoard
    out = result.stdout
    assert f"top-1                {100 * results['top1']:5.1f} %" in out
    assert "time-reversed pairs" in out and "make tensorboard" in out and str(runs.name) in out
