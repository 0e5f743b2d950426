"""The command line end to end on a tiny generated index: recipes in every config, parse-time errors,
fit / validate / test / predict, resume after SIGTERM, DDP on CPU (devices=2 and two torchrun "nodes"),
TensorBoard event files read back."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from task_fixtures import OneThread

from tests.helpers.cli_runs import CPU, ROOT, TINY, env, ok, run_args, run_cli, run_cli_together
from tests.helpers.signal_sync import wait_for_markers

DATASET_CONFIGS = ["k400", "ssv1", "ssv2", "diving48", "gym99", "gym288", "synthetic"]


@pytest.fixture(scope="module")
def index(tiny_index) -> Path:
    """The session's tiny synthetic index (tests/conftest.py): 14 classes, 8 / 4 / 4 clips."""
    return tiny_index


# ------------------------------------------------------------------------------------------ parsing
def parse_only(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process up to parsing (print_config or a parse error); (exit code, out, err)."""
    from src.cli import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_print_config_shows_the_ssv2_recipe_of_the_paper(capsys):
    code, out, _ = parse_only(capsys, "fit", "--config", "configs/ssv2.yaml", "--print_config")
    config = yaml.safe_load(out)
    assert code == 0
    assert config["trainer"]["max_epochs"] == 60 and config["model"]["warmup_epochs"] == 5
    assert config["trainer"]["precision"] == "bf16-mixed" and config["trainer"]["gradient_clip_val"] == 20
    assert config["trainer"]["use_distributed_sampler"] is False  # the DataModule shards itself
    assert config["model"]["lr"] == 2e-4 and config["model"]["weight_decay"] == 0.05
    assert config["model"]["label_smoothing"] == 0.1
    assert (config["model"]["mixup_alpha"], config["model"]["cutmix_alpha"]) == (0.8, 1.0)
    assert config["model"]["backbone"]["structure_dim"] == 4
    assert "k400" in config["model"]["init_from"]  # motion datasets start from Kinetics-400
    assert config["data"]["class_path"] == "src.data.VideoDataModule"  # a config that names no DataModule
    data = config["data"]["init_args"]
    assert (data["num_frames"], data["sampling"], data["test_views"], data["flip"]) == (
        16,
        "segment",
        [1, 3],
        "off",
    )


# Printed nulls that mean "none" or "decided by the run", not a value hidden behind the config: each with why.
NULL_MEANS_NONE = {
    "ckpt_path": "no checkpoint to resume",
    "weights_only": "torch's safe default",
    "trainer.callbacks": "extra callbacks besides the declared ones",
    "trainer.min_epochs": "no minimum",
    "trainer.min_steps": "no minimum",
    "trainer.max_time": "no time limit",
    "trainer.profiler": "no profiler",
    "trainer.limit_train_batches": "all",
    "trainer.limit_val_batches": "all",
    "trainer.limit_test_batches": "all",
    "trainer.limit_predict_batches": "all",
    "trainer.model_registry": "none",
    "trainer.logger.init_args.version": "the next free version_<n>",
    "trainer.logger.init_args.sub_dir": "none",
    "trainer.logger.init_args.purge_step": "none",
    "model.backbone.pos_embed": "pure_attention_tiny only",
    "model.backbone.num_frames": "baselines only",
    "model.backbone.crop_size": "baselines only",
    "model.backbone.image": "the video network (configs/imagenet.yaml sets true)",
    "trainer.gradient_clip_val": "no clipping (configs/imagenet.yaml: UniFormer's image recipe clips none)",
    "model.lr_batch": "lr as given, whatever the global batch (configs/imagenet.yaml scales it)",
    "data.init_args.root": "$DATA_ROOT/<dataset> (the environment of the run)",
    "data.init_args.limit": "every row",
    "data.init_args.predict_path": "not predicting",
    "data.init_args.classes": "classes.txt of the index",
    "data.init_args.rand_augment": "no RandAugment",
    "model.init_from": "trained from scratch",
    "predict_writer.output": "beside the checkpoint's run",
    **{
        f"{cb}.{key}": "Lightning's ModelCheckpoint: the run's checkpoints/ folder, saved at every validation"
        for cb in ("checkpoint", "last_checkpoint")
        for key in (
            "dirpath",
            "every_n_train_steps",
            "train_time_interval",
            "every_n_epochs",
            "save_on_train_epoch_end",
        )
    },
    "last_checkpoint.monitor": "none: the newest state",
    "last_checkpoint.save_last": "it is the last checkpoint",
}


def _nulls(tree: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _nulls(value, f"{name}.")
        elif value is None or value == "preset":
            found.append(name)
    return found


@pytest.mark.parametrize("name", [*DATASET_CONFIGS, "custom", "imagenet"])
def test_print_config_shows_every_value_that_runs_and_feeds_back_to_the_same_run(capsys, tmp_path, name):
    """No null or marker stands for a value chosen elsewhere; the declared callbacks are listed; the printed
    config, fed back, prints the same and builds the same DataModule and model."""
    from src.data.datamodule import VideoDataModule
    from src.data.images import ImageDataModule
    from src.task import VideoClassifier

    _, out, _ = parse_only(capsys, "fit", "--config", f"configs/{name}.yaml", "--print_config")
    printed = yaml.safe_load(out)
    hidden = [key for key in _nulls(printed) if key not in NULL_MEANS_NONE]
    assert not hidden, f"configs/{name}.yaml leaves these to a hidden default: {hidden}"
    for callback in (
        "checkpoint",
        "last_checkpoint",
        "lr_monitor",
        "first_batch_frames",
        "sigterm_checkpoint",
        "throughput",
        "predict_writer",
        "hang_guard",
    ):
        assert callback in printed
    assert printed["trainer"]["plugins"] == [{"class_path": "src.checkpoint_io.AtomicCheckpointIO"}]

    again = tmp_path / "printed.yaml"
    again.write_text(out)
    _, out_again, _ = parse_only(capsys, "fit", "--config", str(again), "--print_config")
    assert yaml.safe_load(out_again) == printed
    original = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    module = ImageDataModule if printed["data"]["class_path"].endswith("ImageDataModule") else VideoDataModule
    arguments = original["data"].get("init_args", original["data"])  # a video config names no class
    data, data_again = module(**arguments), module(**printed["data"]["init_args"])

    def plain(values):
        return json.loads(json.dumps(dict(values)))  # tuples and lists alike

    assert plain(data.hparams) == plain(data_again.hparams)
    assert getattr(data, "eval_protocol", None) == getattr(data_again, "eval_protocol", None)
    with torch.device("meta"):
        model = VideoClassifier(**{**original["model"], "num_classes": 10})
        model_again = VideoClassifier(
            **{k: v for k, v in printed["model"].items() if k != "ignore_class_mismatch"}, num_classes=10
        )
    assert plain(model.hparams) == plain(model_again.hparams)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [
        (k, v.shape) for k, v in model_again.state_dict().items()
    ]


@pytest.mark.parametrize("key", ["data.num_frames", "data.crop_size", "data.limit", "data.decode_timeout"])
def test_zero_is_refused_at_parse_time(capsys, key):
    """0 once ran with another value while config.yaml recorded 0 (or, for the timeout, failed every decode)."""
    code, _, err = parse_only(
        capsys, "fit", "--config", "configs/synthetic.yaml", f"--{key}", "0", "--print_config"
    )
    assert code != 0 and f'Parser key "{key}"' in err and "v>0" in err


def test_unknown_keys_fail_at_parse_time_naming_the_key(capsys, tmp_path):
    code, _, err = parse_only(
        capsys, "fit", "--config", "configs/synthetic.yaml", "--model.learning_rate", "0.1"
    )
    assert code != 0 and "learning_rate" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone:\n    varient: structvit_xs\n")
    code, _, err = parse_only(capsys, "fit", "--config", "configs/synthetic.yaml", "--config", str(bad))
    assert code != 0 and "varient" in err


@pytest.mark.parametrize("name", ["structvit_s", "structvit_s_4_2", "uniformer_b", "x3d_m"])
def test_model_configs_compose_after_a_dataset_config(capsys, name):
    _, out, _ = parse_only(
        capsys,
        "fit",
        "--config",
        "configs/ssv2.yaml",
        "--config",
        f"configs/model/{name}.yaml",
        "--print_config",
    )
    config = yaml.safe_load(out)
    expected = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["model"]["backbone"]
    assert {k: config["model"]["backbone"][k] for k in expected} == expected
    assert (
        config["data"]["init_args"]["sampling"] == "segment" and config["model"]["lr"] == 2e-4
    )  # the dataset recipe is kept


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_config_holds_its_recipe_and_builds_its_model(name):
    config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    from src.models import build_model
    from src.task import BackboneConfig

    backbone = BackboneConfig(**config["model"]["backbone"])
    with torch.device("meta"):  # the real variant, without spending seconds on weight init
        model = build_model(backbone.variant, num_classes=10, **backbone.overrides())
    assert sum(p.numel() for p in model.parameters()) > 1e6
    assert config["trainer"]["logger"]["init_args"]["name"] == name  # each recipe has its own run folder
    if name != "synthetic":
        assert config["trainer"]["precision"] == "bf16-mixed"
        assert (
            config["model"]["lr"] == 2e-4
            and config["data"]["batch_size"] * config["trainer"]["devices"] == 64
        )
        assert config["data"]["num_frames"] == 16
        expected = (110, 10, "dense", "on") if name == "k400" else (60, 5, "segment", "off")
        got = (
            config["trainer"]["max_epochs"],
            config["model"]["warmup_epochs"],
            config["data"]["sampling"],
            config["data"]["flip"],
        )
        assert got == expected


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_dataset_config_trains_and_validates_one_step_on_cpu(name, index, tmp_path):
    """The whole config parses and instantiates (DataModule on the tiny index); structvit_xs stands in for
    the full-size backbone so the step takes a second (the real backbone is built in the test above)."""
    from src.cli import cli_main

    with OneThread():
        cli = cli_main(
            [
                "fit",
                "--config",
                f"configs/{name}.yaml",
                "--config",
                "configs/model/structvit_xs.yaml",
                *TINY,
                *CPU,
                "--data.root",
                str(index),
                "--trainer.fast_dev_run",
                "1",
                "--trainer.default_root_dir",
                str(tmp_path),
            ]
        )
    assert cli.trainer.global_step == 1
    assert math.isfinite(cli.trainer.callback_metrics["train/loss_epoch"].item())
    assert "val/top1" in cli.trainer.callback_metrics
    assert (
        cli.model.hparams.num_classes == 14 and cli.model.class_names[0] == "move_right"
    )  # linked from the data


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def fitted(tiny_run) -> Path:
    """The session's run (tests/conftest.py): one fit of 2 epochs (4 steps each) through the CLI in bf16 mixed
    precision. Read-only: tests that write beside its checkpoint copy it first."""
    return tiny_run


@pytest.fixture(scope="module")
def tested(tiny_tested) -> Path:
    """`test` of the fitted checkpoint in one process; its run folder (confusion matrix etc.)."""
    return tiny_tested


@pytest.mark.slow
def test_fit_saves_config_checkpoints_and_tensorboard_scalars(fitted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (fitted / "config.yaml").is_file()
    assert (
        yaml.safe_load((fitted / "config.yaml").read_text())["model"]["backbone"]["variant"] == "structvit_xs"
    )
    ckpts = sorted(p.name for p in (fitted / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    last = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == 8
    assert "model:" in last["cli_config"]  # the resolved config travels with the checkpoint
    assert any(k.startswith("backbone.") for k in last["state_dict"])
    assert last["hyper_parameters"]["backbone"]["variant"] == "structvit_xs"
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )  # bf16 run

    events = EventAccumulator(str(fitted), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "train/loss_step",
        "lr/decay",
        "lr/no_decay",
        "val/top1",
        "val/top5",
        "val/mean_class",
        "val/single_view/top1",
        "train/top1",
        "perf/clips_per_s",
        "perf/data_wait_frac",
        "train/decode_failures",
        "train/nonfinite_skips",
    ):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    losses = [e.value for e in events.Scalars("train/loss_step")]
    assert len(losses) == 8 and all(0 < v < 10 for v in losses)  # ln(14) = 2.64 at chance
    lrs = [e.value for e in events.Scalars("lr/decay")]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and max(lrs) <= 1e-3 + 1e-9  # linear warmup, then cosine decay
    assert lrs == sorted(lrs[: peak + 1]) + sorted(lrs[peak + 1 :], reverse=True)
    assert all(0 <= e.value <= 1 for e in events.Scalars("val/top1"))
    assert all(e.value > 0 for e in events.Scalars("perf/clips_per_s"))
    assert all(0 <= e.value <= 1 for e in events.Scalars("perf/data_wait_frac"))
    assert [e.value for e in events.Scalars("train/nonfinite_skips")][-1] == 0
    assert len(events.Images("train/first_batch")) == 1
    hparams = yaml.safe_load((fitted / "hparams.yaml").read_text())
    assert re.fullmatch(r"[0-9a-f]{16}", hparams["data_fingerprint"])


@pytest.mark.slow
def test_test_validate_and_predict_from_the_checkpoint(fitted, tested, index, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    run = shutil.copytree(
        fitted, runs / "e2e" / "fit"
    )  # the prediction is written beside the checkpoint's run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = tested
    rows = list(csv.reader(open(out / "confusion_matrix.csv")))
    assert len(rows) == 15 and sum(int(v) for r in rows[1:] for v in r[1:]) == 4  # 4 test videos, once each
    assert (out / "per_class_accuracy.csv").is_file() and (out / "confusion_matrix.png").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    assert {"test/top1", "test/single_view/top1", "test/mean_class"} <= set(events.Tags()["scalars"])
    assert "test/confusion_matrix" in events.Tags()["images"]

    video = next(index.glob("val/**/*.mp4")) if (index / "val").is_dir() else next(index.rglob("*.mp4"))
    validated, predicted = run_cli_together(
        ["validate", *run_args(index, runs, "e2e", "validate"), "--ckpt_path", ckpt],
        [
            "predict",
            *run_args(index, runs, "e2e", "predict"),
            "--ckpt_path",
            ckpt,
            "--data.predict_path",
            str(video),
        ],
    )
    assert "val/top1" in ok(validated).stdout
    ok(predicted)
    assert not (
        runs / "e2e" / "predict"
    ).exists()  # a prediction makes no run folder: it goes beside the checkpoint's
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    classes = (index / "classes.txt").read_text().split()
    assert len(records) == 1 and records[0]["path"].endswith(video.name)
    top5 = records[0]["top5"]
    assert len(top5) == 5 and all(t["class"] in classes for t in top5)
    assert (
        all(a["prob"] >= b["prob"] for a, b in zip(top5, top5[1:]))
        and sum(t["prob"] for t in top5) <= 1 + 1e-5
    )


@pytest.mark.slow
def test_predict_records_every_file_of_a_folder_even_when_some_fail(fitted, index, tmp_path):
    """A bad file alone in its batch crashed predict and lost the rest of the folder; now every file gets a line."""
    import shutil

    folder = tmp_path / "my clips"
    folder.mkdir()
    videos = sorted(index.rglob("*.mp4"))[:2]
    shutil.copy(videos[0], folder / "a clip ü 1.mp4")  # spaces and non-ASCII in the name
    (folder / "b broken.mp4").write_bytes(b"not a video at all")
    shutil.copy(videos[1], folder / "c.mp4")
    ckpt = str(fitted / "checkpoints" / "last.ckpt")
    out = tmp_path / "predictions.jsonl"
    single = tmp_path / "single.jsonl"
    result, single_result = run_cli_together(
        ["predict", *run_args(index, tmp_path, "pred"), "--ckpt_path", ckpt, "--data.batch_size", "1",
         "--data.predict_path", str(folder), "--predict_writer.output", str(out)],
        ["predict", *run_args(index, tmp_path, "pred1"), "--ckpt_path", ckpt,
         "--data.predict_path", str(folder / "b broken.mp4"), "--predict_writer.output", str(single)],
    )  # fmt: skip
    ok(result)
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert sorted(records) == ["a clip ü 1.mp4", "b broken.mp4", "c.mp4"]
    assert len(records["a clip ü 1.mp4"]["top5"]) == 5 and len(records["c.mp4"]["top5"]) == 5
    assert "top5" not in records["b broken.mp4"] and records["b broken.mp4"]["error"]
    assert "predicted 2 of 3 videos; 1 failed" in result.stdout + result.stderr

    result = ok(single_result)
    (record,) = map(json.loads, single.read_text(encoding="utf-8").splitlines())
    assert record["path"].endswith("b broken.mp4") and record["error"]
    assert "predicted 0 of 1 videos; 1 failed" in result.stdout + result.stderr


@pytest.mark.slow
def test_predict_needs_only_the_checkpoint_and_writes_features_beside_it(fitted, index, tmp_path):
    """A downloaded checkpoint (no run folder, no dataset, no config) predicts a folder and a list of clips with its
    own classes and protocol, and writes the embeddings; nothing else is created and no warning is printed."""
    import shutil

    import numpy as np

    from src.trained import load_trained

    download = tmp_path / "download"
    download.mkdir()
    ckpt = download / "model.ckpt"
    shutil.copy(fitted / "checkpoints" / "last.ckpt", ckpt)
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, video in enumerate(sorted(index.rglob("*.mp4"))[:3]):
        shutil.copy(video, clips / f"{i}.mp4")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    result = ok(
        run_cli(
            "predict",
            "--ckpt_path",
            str(ckpt),
            "--data.predict_path",
            str(clips),
            "--predict_writer.features",
            "true",
            "--data.num_workers",
            "1",
            cwd=workdir,
            DATA_ROOT=str(tmp_path / "no data here"),
            PYTHONPATH=str(ROOT),
        )
    )
    output = result.stdout + result.stderr
    for noise in ("litlogger", "dirpath has changed", "LeafSpec", "Warning", "was evaluated with"):
        assert noise not in output, output[-3000:]
    assert "predicted 3 of 3 videos; 0 failed" in output
    assert sorted(p.name for p in download.iterdir()) == [
        "model.ckpt",
        "predictions.features.npy",
        "predictions.features.txt",
        "predictions.jsonl",
    ]
    assert list(workdir.iterdir()) == []
    records = [json.loads(line) for line in (download / "predictions.jsonl").read_text().splitlines()]
    classes = (index / "classes.txt").read_text().split()
    assert [Path(r["path"]).name for r in records] == ["0.mp4", "1.mp4", "2.mp4"]
    assert all(t["class"] in classes for r in records for t in r["top5"])
    features = np.load(download / "predictions.features.npy")
    paths = (download / "predictions.features.txt").read_text().splitlines()
    assert (
        features.shape == (3, 192) and features.dtype == np.float32 and paths == [r["path"] for r in records]
    )
    # the row of a video is its pre-logit embedding (the backbone's features pooled over time and space, what
    # the classifier head reads), averaged over the test views; computed here without the predict code path
    trained = load_trained(ckpt)
    backbone = trained.module.backbone
    views = trained.read_views(clips / "1.mp4")  # the predict loader's views (tests/test_trained.py)
    with torch.no_grad():
        pooled = backbone.forward_features(views).mean(dim=(2, 3, 4))  # (V, C)
        logits = backbone(views)
        torch.testing.assert_close(backbone.head(pooled), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features[1], pooled.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    top = logits.softmax(-1).mean(0).argmax().item()
    assert records[1]["top5"][0]["index"] == top

    # a text file listing clips (relative to the list's folder); a listed file that is gone is reported, not fatal
    listing = clips / "list.txt"
    listing.write_text("# my clips\n2.mp4\n\nmissing.mp4\n0.mp4\n")
    out = tmp_path / "listed.jsonl"
    result = ok(
        run_cli(
            "predict",
            "--ckpt_path",
            str(ckpt),
            "--data.predict_path",
            str(listing),
            "--predict_writer.output",
            str(out),
            cwd=workdir,
            PYTHONPATH=str(ROOT),
        )
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == ["0.mp4", "2.mp4", "missing.mp4"]
    assert [r for r in records if "error" in r][0]["path"].endswith("missing.mp4")
    assert "predicted 2 of 3 videos; 1 failed" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_checkpoint_tested_on_an_index_with_other_class_order_is_refused(fitted, index, tmp_path):
    import shutil

    other = tmp_path / "reordered"
    shutil.copytree(index, other)
    names = (other / "classes.txt").read_text().split("\n")
    names[:2] = names[1::-1]  # the same names, the first two swapped
    (other / "classes.txt").write_text("\n".join(names))
    ckpt = str(fitted / "checkpoints" / "last.ckpt")
    result, ignored = run_cli_together(
        ["test", *run_args(other, tmp_path, "swap"), "--ckpt_path", ckpt],
        [
            "test",
            *run_args(other, tmp_path, "swap2"),
            "--ckpt_path",
            ckpt,
            "--model.ignore_class_mismatch",
            "true",
        ],
    )
    assert result.returncode != 0
    assert "first difference at label 0: checkpoint 'move_right', index 'move_left'" in result.stderr, (
        result.stderr[-3000:]
    )
    ok(ignored)


# ------------------------------------------------------------------------------------- resume
def hold_at_step(step: int, markers: Path) -> str:
    """The `--trainer.callbacks+=` value that holds the run after `step` until it has received SIGTERM."""
    return json.dumps(
        {
            "class_path": "tests.helpers.signal_sync.WaitForSigtermAt",
            "init_args": {"step": step, "marker_dir": str(markers)},
        }
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_mid_epoch_then_ckpt_path_last_ends_at_the_uninterrupted_step(index, tmp_path):
    """SIGTERM after step 6, in the middle of epoch 1 (4 steps per epoch): last.ckpt holds step 6 and
    `--ckpt_path last` ends at step 12, as without the interruption. The run waits at step 6 for the signal
    (tests/helpers/signal_sync.py), so the step is exact."""
    markers = tmp_path / "markers"
    args = [
        "fit",
        *run_args(index, tmp_path, "resume"),
        "--trainer.max_epochs",
        "3",
        "--trainer.num_sanity_val_steps",
        "0",
        f"--trainer.callbacks+={hold_at_step(6, markers)}",
    ]
    log = tmp_path / "interrupted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.cli", *args],
            cwd=ROOT,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            reached = wait_for_markers(markers, 1, proc)
            if reached:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    output = log.read_text()
    assert reached, f"the run never reached step 6\n{output[-3000:]}"
    assert "SIGTERM: saved" in output and "at global step 6" in output, output[-3000:]
    last = tmp_path / "resume" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 6

    ok(
        run_cli(
            "fit", *run_args(index, tmp_path, "resume"), "--trainer.max_epochs", "3", "--ckpt_path", "last"
        )
    )
    resumed = torch.load(
        tmp_path / "resume" / "version_1" / "checkpoints" / "last.ckpt",
        weights_only=False,
        map_location="cpu",
    )
    assert resumed["global_step"] == 12  # 3 epochs x 4 steps, as without the interruption
    assert resumed["epoch"] == 2


def test_ckpt_path_last_without_a_previous_run_names_where_it_looked(index, tmp_path, capsys):
    code, _, err = parse_only(capsys, "fit", *run_args(index, tmp_path, "fresh"), "--ckpt_path", "last")
    assert code != 0 and re.search(r"no last.ckpt under .*fresh", err)


@pytest.mark.slow
def test_a_refused_or_truncated_ckpt_path_is_named_with_the_fix(fitted, index, tmp_path):
    good = fitted / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hook": Path("/")}, hostile)  # a pickled object: loading it would run code
    result, hostile_result = run_cli_together(
        ["test", *run_args(index, tmp_path, "bad"), "--ckpt_path", str(truncated)],
        ["test", *run_args(index, tmp_path, "bad2"), "--ckpt_path", str(hostile)],
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{truncated}: truncated or corrupt" in result.stderr

    result = hostile_result
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        f"{hostile}: refused by the safe checkpoint loader" in result.stderr and "PosixPath" in result.stderr
    )
    assert "weights_only=False" not in result.stderr  # never suggest turning the protection off


@pytest.mark.slow
def test_ckpt_path_last_skips_a_corrupt_newest_last_ckpt(fitted, index, tmp_path):
    import shutil

    older = tmp_path / "resume" / "version_0" / "checkpoints"
    newer = tmp_path / "resume" / "version_1" / "checkpoints"
    older.mkdir(parents=True)
    newer.mkdir(parents=True)
    shutil.copy(fitted / "checkpoints" / "last.ckpt", older / "last.ckpt")
    (newer / "last.ckpt").write_bytes(
        (older / "last.ckpt").read_bytes()[:4096]
    )  # a save cut short by a full disk
    written = (older / "last.ckpt").stat().st_mtime
    os.utime(newer / "last.ckpt", (written + 60, written + 60))  # written a minute after the intact one
    result = ok(
        run_cli(
            "fit",
            *run_args(index, tmp_path, "resume", "version_2"),
            "--ckpt_path",
            "last",
            "--trainer.max_epochs",
            "3",
        )
    )
    assert (
        f"{newer / 'last.ckpt'} is corrupt; resuming from the newest intact checkpoint {older / 'last.ckpt'}"
        in (result.stdout + result.stderr)
    )
    resumed = torch.load(
        tmp_path / "resume" / "version_2" / "checkpoints" / "last.ckpt",
        weights_only=False,
        map_location="cpu",
    )
    assert resumed["global_step"] == 12  # the 8 steps of the intact checkpoint + one more epoch of 4


# ------------------------------------------------------------------------------------- DDP on CPU
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def confusion(path: Path) -> list[list[str]]:
    return list(csv.reader(open(path / "confusion_matrix.csv")))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_processes_and_torchrun_nodes_test_like_a_single_process(fitted, tested, index, tmp_path):
    """`test` with two processes of one node and with two torchrun "nodes", launched together (both are
    small; together they take little more wall time than one): each gives the single process's confusion
    matrix. `fit` under DDP (progress bars, workers, faults) is tested in tests/test_ddp.py."""
    runs = tmp_path
    ckpt = str(fitted / "checkpoints" / "last.ckpt")
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--ckpt_path", ckpt]
    launch = dict(cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "src.cli", "test", *run_args(index, runs, "ddp", "test")]
            + ["--trainer.devices", "2", *ddp],
            **launch,
        )
    ]
    port = str(free_port())
    for rank in (0, 1):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        torchrun += ["--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port]
        node_args = ["--trainer.num_nodes", "2", "--trainer.devices", "1", *ddp]
        processes.append(
            subprocess.Popen(
                [*torchrun, "-m", "src.cli", "test", *run_args(index, runs, "nodes", "test"), *node_args],
                **launch,
            )
        )
    deadline = time.time() + 400
    try:
        outputs = [p.communicate(timeout=max(deadline - time.time(), 1))[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    assert confusion(runs / "ddp" / "test") == confusion(tested)
    assert confusion(runs / "nodes" / "test") == confusion(tested)


def test_a_prediction_takes_the_checkpoints_protocol_unless_the_config_sets_another(caplog):
    """Values left at the DataModule's defaults take the checkpoint's; one a config sets is kept and reported."""
    from jsonargparse import Namespace

    from src.cli import adopt_checkpoint_protocol
    from src.data.protocol import EvalProtocol
    from src.trained import CheckpointCard

    card = CheckpointCard(Path("model.ckpt"), {"class_names": ["a", "b"], "num_classes": 2},
                          EvalProtocol(8, "segment", 1, 32, (2, 1), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))  # fmt: skip
    data = Namespace(num_frames=16, sampling="dense", sampling_rate=4, crop_size=64, test_views=[4, 1],
                     mean=[0.45] * 3, std=[0.225] * 3, classes=None)  # fmt: skip
    with caplog.at_level("WARNING"):
        adopt_checkpoint_protocol(data, card)
    assert (data.num_frames, data.sampling, data.sampling_rate, data.test_views) == (8, "segment", 1, [2, 1])
    assert (
        data.crop_size == 64
        and "data.crop_size=64 is set; the checkpoint model.ckpt was evaluated with 32" in caplog.text
    )
    assert data.classes == ["a", "b"] and data.mean == [0.5] * 3 and data.std == [0.2] * 3
