"""The paper's three-stage chain on this CPU: configs/imagenet.yaml fits and tests StructViT's image network on the
embedded image benchmark (ImageNet layout, with corrupt files), and its checkpoint starts a video StructViT that
fine-tunes on the synthetic motion benchmark; the inflated model gives the image model's logits on a static clip."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.cli_runs import image_run_args, ok, run_cli


def test_the_imagenet_config_holds_the_image_recipe_with_its_sources(capsys):
    from src.cli import cli_main

    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", "configs/imagenet.yaml", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model, data = config["model"], config["data"]
    assert data["class_path"] == "src.data.images.ImageDataModule"
    assert model["backbone"]["image"] is True and model["backbone"]["variant"] == "structvit_s"
    assert (model["backbone"]["structure_dim"], model["backbone"]["kv_stride"]) == (4, 1)  # S-4-1
    assert model["backbone"]["drop_path_rate"] == 0.1
    assert (model["lr"], model["lr_batch"], model["min_lr"], model["warmup_epochs"]) == (5e-4, 512, 1e-5, 5)
    assert (model["weight_decay"], model["label_smoothing"], model["mixup_alpha"], model["cutmix_alpha"]) == (
        0.05,
        0.1,
        0.8,
        1.0,
    )
    assert config["trainer"]["max_epochs"] == 300
    assert data["init_args"]["batch_size"] * config["trainer"]["devices"] == 1024
    assert (data["init_args"]["crop_size"], data["init_args"]["crop_pct"]) == (224, 0.875)
    text = (Path(__file__).resolve().parents[1] / "configs" / "imagenet.yaml").read_text()
    assert "UniFormer" in text and "not given by the paper" in text  # every value names its source


def _scalars(run: Path) -> dict[str, float]:
    """The last value of every scalar of the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(run.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values[tag] = accumulator.Scalars(tag)[-1].value
    return values


@pytest.fixture(scope="module")
def image_set(tmp_path_factory) -> Path:
    """The embedded image benchmark as the three official ILSVRC2012 archives (6 shape/texture classes, 16 train /
    4 val images each at 40², a truncated, a CMYK and a PNG-in-JPEG file in train), prepared as a user does:
    `python -m data_prep.imagenet` (what `make prepare-imagenet` runs)."""
    from data_prep.synthetic_images import write_official_archives

    folder = tmp_path_factory.mktemp("images")
    write_official_archives(
        folder / "archives", classes=6, train_per_class=16, val_per_class=4, size=40, corrupt=True
    )
    root = folder / "imagenet"
    command = ["--archives", str(folder / "archives"), "--out", str(root), "--workers", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "data_prep.imagenet", *command], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from src.data.index import read_quarantine

    # the truncated file; the CMYK and PNG ones were re-encoded
    assert list(read_quarantine(root)) == ["train/n00000010/n00000010_0.JPEG"]
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_fit_and_test_then_the_checkpoint_inflates_into_the_video_model(image_set, tmp_path):
    runs = tmp_path / "runs"
    fitted = ok(
        run_cli(
            "fit",
            *image_run_args(image_set, runs, "imagenet", "fit"),
            "--trainer.max_epochs",
            "2",
            timeout=400,
        )
    )
    assert "lr 0.002 (= 0.001 x 8 / 4, scaled to the global batch)" in fitted.stdout + fitted.stderr
    run = runs / "imagenet" / "fit"
    checkpoint = next((run / "checkpoints").glob("best-*.ckpt"))
    values = _scalars(run)
    assert (
        values["train/decode_failures"] == 0
    )  # the doctor's quarantine is skipped, the re-encoded files decode
    assert values["val/videos"] == 24

    tested = ok(
        run_cli(
            "test",
            *image_run_args(image_set, runs, "imagenet", "test"),
            "--ckpt_path",
            str(checkpoint),
            timeout=300,
        )
    )
    values = _scalars(runs / "imagenet" / "test")
    assert 0 <= values["test/top1"] <= values["test/top5"] <= 1 and values["test/videos"] == 24
    assert re.search(r"test/top5", tested.stdout)

    # an image checkpoint has no clip protocol: predict refuses it in one line, naming what to do with it
    from src.trained import read_card

    card = read_card(checkpoint)
    assert card.is_image and card.protocol is None and "image network" in str(card)
    refused = run_cli(
        "predict", "--ckpt_path", str(checkpoint), "--data.predict_path", str(image_set / "val")
    )
    assert refused.returncode == 2 and "--model.init_from" in refused.stderr.splitlines()[-1], refused.stderr[
        -2000:
    ]

    # stage 2 (the image checkpoint starting a video fit, its report and card) runs in the demo-chain test,
    # tests/experiments/test_imagenet_chain.py. Here: the file a real image fit wrote, inflated, gives the
    # image model's logits on a clip of identical frames
    from src.models import build_model
    from src.models.checkpoints import load_checkpoint_file, load_pretrained

    payload = load_checkpoint_file(checkpoint)
    options = {"stem": "conv", "drop_path_rate": 0.0}
    image = build_model("structvit_xs", num_classes=6, image=True, **options).eval()
    assert load_pretrained(image, payload).clean
    video = build_model("structvit_xs", num_classes=6, **options).eval()
    assert load_pretrained(video, payload, temporal_inflation="centre").clean
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            video(frames.unsqueeze(2).expand(-1, -1, 8, -1, -1)), image(frames), atol=1e-5, rtol=0
        )
