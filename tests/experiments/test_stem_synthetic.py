"""`python -m experiments.stem_synthetic`: patch vs convolutional stem trained on rendered clips."""

from __future__ import annotations

import json

import torch

from experiments import stem_synthetic


def test_stem_benchmark_trains_each_stem_on_rendered_clips_and_writes_its_section(tmp_path):
    videos, labels = stem_synthetic.render_split("val", 15, frames=4, size=32)
    assert videos.shape == (15, 3, 4, 32, 32) and labels.tolist()[:3] == [0, 1, 2] and labels[14] == 0
    assert torch.isfinite(videos).all() and videos.std() > 0.1  # normalised pixels, not a blank clip
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Ablation\n\nkeep me\n")
    results = tmp_path / "stem.json"
    code = stem_synthetic.main(
        [
            "--stems",
            "patch",
            "conv",
            "--epochs",
            "1",
            "--train",
            "16",
            "--val",
            "14",
            "--frames",
            "4",
            "--batch",
            "8",
            "--doc",
            str(doc),
            "--results",
            str(results),
        ]
    )
    assert code == 0
    stored = json.loads(results.read_text())["results"]
    assert [r["stem"] for r in stored] == ["patch", "conv"]
    assert all(len(r["val_top1"]) == 1 and 0.0 <= r["val_top1"][0] <= 1.0 for r in stored)
    text = doc.read_text()
    assert "keep me" in text and "## Stem" in text and "| patch |" in text and "| conv |" in text
