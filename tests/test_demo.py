"""`make demo` and `make ablation-synthetic`: the demo's end-to-end fast variant (generate -> fit -> test ->
predict through `python -m src.cli`), its result arithmetic, and the ablation's frame-shuffle control."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.ablation_synthetic import (
    ShuffleFrames,
    arms,
    budget_args,
    effective_budget,
    mean_std,
    plan_versions,
    write_section,
)
from src.demo import best_checkpoint, event_scalars, next_version, summarize

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- result arithmetic
def test_reversed_pair_accuracy_counts_only_clips_of_paired_classes():
    names = ["right", "left", "grow", "bounce"]
    matrix = [  # rows: true class, columns: predicted
        [3, 1, 0, 0],  # right: 3 of 4 right, 1 taken for its reversal
        [2, 2, 0, 0],  # left: 2 of 4, 2 taken for its reversal
        [0, 0, 4, 0],  # grow: unpaired here
        [0, 0, 1, 3],  # bounce: unpaired
    ]
    res = summarize(names, matrix, pairs=[[0, 1]], top5=0.95)
    assert res.clips == 16
    assert res.top1 == pytest.approx(12 / 16)
    assert res.mean_class == pytest.approx((0.75 + 0.5 + 1.0 + 0.75) / 4)
    assert res.reversed_clips == 8
    assert res.reversed_pairs == pytest.approx(5 / 8)
    assert res.reversed_confusion == pytest.approx(3 / 8)
    assert res.top5 == 0.95
    assert res.per_class == {"right": 0.75, "left": 0.5, "grow": 1.0, "bounce": 0.75}


def test_mean_class_accuracy_leaves_out_classes_without_test_clips():
    res = summarize(["a", "b", "c"], [[1, 1, 0], [0, 0, 0], [0, 0, 2]], pairs=[])
    assert res.mean_class == pytest.approx((0.5 + 1.0) / 2)
    assert res.reversed_pairs is None and res.reversed_clips == 0


def test_an_empty_confusion_matrix_is_an_error_not_zero_accuracy():
    with pytest.raises(ValueError, match="no test clip"):
        summarize(["a", "b"], [[0, 0], [0, 0]], pairs=[[0, 1]])


def test_next_version_follows_the_existing_run_folders(tmp_path):
    assert next_version(tmp_path, "synthetic") == 0
    for name in ("version_0", "version_3", "version_x", "other"):
        (tmp_path / "synthetic" / name).mkdir(parents=True)
    assert next_version(tmp_path, "synthetic") == 4


def test_best_checkpoint_prefers_best_over_last_and_names_the_folder_when_empty(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=str(folder)):
        best_checkpoint(tmp_path)
    (folder / "last.ckpt").write_bytes(b"x")
    assert best_checkpoint(tmp_path).name == "last.ckpt"
    (folder / "best-004-100.ckpt").write_bytes(b"x")
    assert best_checkpoint(tmp_path).name == "best-004-100.ckpt"


# --------------------------------------------------------------------------------- frame-shuffle control
def test_shuffle_frames_permutes_time_per_clip_and_keeps_every_frame_whole():
    b, v, t = 4, 2, 8
    # frame k of clip (i, j) is filled with the value 1000*i + 100*j + k, so its position is readable
    video = torch.arange(t, dtype=torch.float32).view(1, 1, 1, t, 1, 1).expand(b, v, 3, t, 5, 5).clone()
    video += (1000 * torch.arange(b)).view(b, 1, 1, 1, 1, 1) + (100 * torch.arange(v)).view(1, v, 1, 1, 1, 1)
    out = ShuffleFrames(seed=0).shuffle(video)
    assert out.shape == video.shape
    orders = set()
    for i in range(b):
        for j in range(v):
            clip = out[i, j]
            frame_values = clip[0, :, 0, 0]
            assert torch.equal(clip, frame_values.view(1, t, 1, 1).expand(3, t, 5, 5)), "a frame was split"
            assert sorted(frame_values.tolist()) == sorted(video[i, j, 0, :, 0, 0].tolist()), "frames lost"
            orders.add(tuple((frame_values % 100).long().tolist()))
    assert len(orders) > 1, "every clip got the same order"


def test_shuffle_frames_handles_training_clips_without_views():
    video = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(3, 3, 6, 2, 2).clone()
    out = ShuffleFrames(seed=1).shuffle(video)
    for clip in out:
        assert sorted(clip[0, :, 0, 0].tolist()) == list(range(6))


class _SeenFrames(pl.LightningModule):
    """Records the frame order that training_step and test_step receive (values = frame positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, list[list[int]]] = {"train": [], "test": []}

    def _record(self, batch: dict, stage: str) -> None:
        video = batch["video"]
        self.seen[stage] += video.reshape(-1, *video.shape[-4:])[:, 0, :, 0, 0].long().tolist()

    def training_step(self, batch, batch_idx):
        self._record(batch, "train")
        return self.weight * batch["video"].mean()

    def test_step(self, batch, batch_idx):
        self._record(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_shuffle_frames_callback_changes_what_the_steps_of_a_real_trainer_see(tmp_path):
    clips = [{"video": torch.arange(8.0).view(1, 8, 1, 1).expand(3, 8, 4, 4).clone()} for _ in range(6)]
    loader = DataLoader(clips, batch_size=3)
    model = _SeenFrames()
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[ShuffleFrames(seed=0)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    trainer.test(model, loader, verbose=False)
    for stage in ("train", "test"):
        orders = model.seen[stage]
        assert len(orders) == 6 and all(sorted(o) == list(range(8)) for o in orders)
        assert any(o != list(range(8)) for o in orders), f"{stage}: frames reached the step in order"


# ------------------------------------------------------------------------------------ ablation plumbing
def test_ablation_rows_are_the_dims_then_the_shuffled_control_at_the_largest_d():
    rows = arms([0, 1, 4], control=True)
    assert [(a.structure_dim, a.shuffle) for a in rows] == [(0, False), (1, False), (4, False), (4, True)]
    assert "UniFormer" in rows[0].label and "ConvSA" in rows[1].label and "shuffled" in rows[3].label
    assert len(arms([0, 4], control=False)) == 2


def test_ablation_budget_sets_only_the_options_given():
    assert budget_args(None, None, None, None) == []
    assert budget_args(3, 700, 8, 64) == [
        "--trainer.max_epochs",
        "3",
        "--data.limit",
        "700",
        "--data.num_frames",
        "8",
        "--data.crop_size",
        "64",
    ]
    assert budget_args(None, None, None, None, num_workers=1) == ["--data.num_workers", "1"]
    assert effective_budget(["--data.num_workers", "1", "--trainer.max_epochs", "3"])["workers"] == 1


def test_parallel_runs_get_distinct_versions_after_the_existing_ones(tmp_path):
    (tmp_path / "D0" / "version_0").mkdir(parents=True)
    plan = [(arm, seed) for arm in arms([0, 4], control=True) for seed in (0, 1)]
    assert plan_versions(plan, tmp_path) == [1, 2, 0, 1, 0, 1]


def test_mean_std_is_in_percent_and_says_when_there_is_one_seed():
    assert mean_std([0.9, 0.8, 0.7]) == "80.0 ± 10.0"
    assert mean_std([0.5]) == "50.0 ± –"


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
