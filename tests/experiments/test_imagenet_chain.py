"""`make demo-chain` (experiments.imagenet_chain): the image -> video chain runs end to end through the real
command lines, its summary holds real numbers, and its prepared image folder is cached by the archives it came
from."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import imagenet_chain
from experiments.imagenet_chain import prepare_images, without
from src.trained import read_card

ROOT = Path(__file__).resolve().parents[2]


def _fraction(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fast_chain_fits_the_image_model_starts_the_video_model_from_it_and_reports_real_numbers(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    command = [sys.executable, "-m", "experiments.imagenet_chain", "--fast", "--quiet"]
    command += ["--data-root", str(data), "--runs", str(runs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    # every step printed the command that reruns it
    assert "$ python -m data_prep.imagenet --archives" in out
    assert "$ python -m src.cli fit --config configs/imagenet.yaml" in out
    assert "--model.init_inflation centre" in out and "--model.init_from null" in out
    assert "lr 0.001 = the config's 0.0005 x batch 16 / --model.lr_batch 8" in out

    summary = json.loads((runs / "chain_summary.json").read_text())
    image = summary["image"]
    assert image["counts"] == {"train": 48, "val": 24}  # 6 classes x 8 / 4
    assert (image["doctor"]["quarantined"], image["doctor"]["reencoded"]) == (1, 2)  # truncated; CMYK and PNG
    assert image["lr"] == pytest.approx(image["config_lr"] * image["batch"] / image["lr_batch"])
    assert image["results"]["clips"] == 24  # the val images, the quarantined one is a train file
    assert _fraction(image["results"]["top1"]) and _fraction(image["results"]["top5"])
    assert image["results"]["top1"] <= image["results"]["top5"]

    static = summary["static_clip"]
    assert static["clips"] == 8 and static["frames"] == 8
    assert 0.0 <= static["max_abs_logit_diff"] < 1e-5 and static["top1_agreement"] == 1.0

    video = summary["video"]
    assert video["clips"] == 14 and len(video["reversed_pairs"]) == 6
    for key in ("from_image", "from_scratch"):
        run = video[key]
        results = run["results"]
        assert results["clips"] == 14 and results["reversed_clips"] == 12
        for name in ("top1", "top5", "mean_class", "reversed_pairs", "reversed_confusion"):
            assert _fraction(results[name]), (key, name, results[name])
        run_dir = Path(run["run_dir"])
        assert (run_dir / "test" / "confusion_matrix.csv").is_file()
        assert Path(run["checkpoint"]).is_file() and run["fit_seconds"] > 0
    chained, scratch = (Path(video[k]["checkpoint"]) for k in ("from_image", "from_scratch"))
    assert read_card(chained).init_source["file"] == image["checkpoint"]
    assert read_card(scratch).init_source is None
    report = (Path(video["from_image"]["run_dir"]) / "init_report.txt").read_text()
    assert "head: 0 classes copied by name" in report  # wnids are not motion classes: a fresh head
    # the image model's own StructSA filters, inflated at the centre frame (none set to the identity)
    assert re.search(
        r"blocks3\.0\.attn\.k_struct\.weight: centre \[\d+, 1, 1, 3, 3\] -> \[\d+, 1, 3, 3, 3\]", report
    )
    assert "StructSA filters set to" not in report
    for stage in ("image_data", "image", "video_data", "video_from_image", "video_from_scratch", "static"):
        assert summary["seconds"][stage] > 0
    assert "the image start:" in out and "max |image - video logits|" in out


@pytest.mark.timeout(120)
def test_prepared_images_are_cached_and_prepared_again_when_the_archives_change(tmp_path, monkeypatch):
    small = {**imagenet_chain.FAST_IMAGE_DATA, "train_per_class": 3, "val_per_class": 2, "size": 24}
    monkeypatch.setattr(imagenet_chain, "FAST_IMAGE_DATA", small)
    root, first, _ = prepare_images(tmp_path, fast=True, workers=1)
    assert first["complete"] and first["counts"] == {"train": 18, "val": 12}
    stamp = (root / "imagenet.json").stat().st_mtime_ns
    _, again, _ = prepare_images(tmp_path, fast=True, workers=1)
    assert again == first and (root / "imagenet.json").stat().st_mtime_ns == stamp  # nothing redone

    monkeypatch.setattr(imagenet_chain, "FAST_IMAGE_DATA", {**small, "train_per_class": 4})
    _, other, _ = prepare_images(tmp_path, fast=True, workers=1)
    assert other["counts"] == {"train": 24, "val": 12}  # the old folder was not taken for the new archives


def test_without_drops_a_flag_and_its_value_only():
    args = ["--trainer.max_epochs", "2", "--data.crop_size", "32", "--trainer.max_epochs", "3"]
    assert without(args, "--trainer.max_epochs") == ["--data.crop_size", "32"]
    assert without(args, "--absent") == args
