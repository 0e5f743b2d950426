"""Throughput / data-wait logging, the first-batch frame grid, the SIGTERM checkpoint and the JSON-lines
prediction writer, each under the real Lightning Trainer."""

import json
import os
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from task_fixtures import NUM_CLASSES, OneThread, TinyClips, loader

from src.callbacks import (
    FirstBatchFrames,
    JsonLinesPredictionWriter,
    SigtermCheckpoint,
    ThroughputMonitor,
    frame_grid,
)
from src.task import BackboneConfig, VideoClassifier


@pytest.fixture(autouse=True)
def one_thread():
    with OneThread():
        yield


def make_task() -> VideoClassifier:
    return VideoClassifier(
        backbone=BackboneConfig(variant="structvit_xs"),
        num_classes=NUM_CLASSES,
        lr=1e-3,
        warmup_epochs=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    )


def trainer_with(tmp_path, callbacks, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        max_epochs=1,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def test_throughput_and_data_wait_are_logged_and_a_slow_loader_shows_up_as_waiting(tmp_path):
    trainer = trainer_with(tmp_path, [ThroughputMonitor(window=2)])
    trainer.fit(make_task(), loader(TinyClips(12, delay=0.15), batch_size=2))  # 0.3 s of loading per batch
    metrics = trainer.callback_metrics
    assert metrics["perf/clips_per_s"].item() > 0
    assert 0.2 < metrics["perf/data_wait_frac"].item() <= 1.0


def test_throughput_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        ThroughputMonitor(window=0)


def test_frame_grid_undoes_normalisation_and_lays_out_one_row_per_clip():
    video = torch.full((3, 3, 8, 16, 16), (0.5 - 0.45) / 0.225)  # grey 0.5 after normalisation
    grid = frame_grid(video, (0.45,) * 3, (0.225,) * 3, max_clips=2, max_frames=4)
    assert grid.shape == (3, 2 * 17 + 1, 4 * 17 + 1)  # 2 rows x 4 frames, 1 px padding
    assert torch.allclose(grid[:, 1:17, 1:17], torch.full((3, 16, 16), 0.5), atol=1e-6)


class SigtermAt(Callback):
    """Sends SIGTERM to this process after training batch `at` (as a cluster scheduler would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_epoch_saves_last_and_resuming_ends_at_the_uninterrupted_step(tmp_path):
    data = TinyClips(8)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)  # saves at epoch ends only
    trainer = trainer_with(
        tmp_path, [checkpoint, SigtermCheckpoint(), SigtermAt(3)], max_epochs=2, enable_checkpointing=True
    )
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        trainer.fit(make_task(), loader(data, batch_size=2))
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3  # mid-epoch 1 of 2 (4 steps per epoch)

    resumed = trainer_with(tmp_path, [], max_epochs=2)
    resumed.fit(make_task(), loader(data, batch_size=2), ckpt_path=last)
    uninterrupted = trainer_with(tmp_path, [], max_epochs=2)
    uninterrupted.fit(make_task(), loader(data, batch_size=2))
    assert resumed.global_step == uninterrupted.global_step == 8


class SigtermInValidation(Callback):
    """Sends SIGTERM to this process after the first batch of the first validation (or of the sanity check)."""

    def __init__(self, sanity: bool) -> None:
        self.sanity = sanity
        self.sent = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking == self.sanity and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


class Validations(Callback):
    """Records (sanity check?, global step, batches) of every validation that reaches its end."""

    def __init__(self) -> None:
        self.runs: list[tuple[bool, int, int]] = []
        self._batches = 0

    def on_validation_epoch_start(self, trainer, pl_module):
        self._batches = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batches += 1

    def on_validation_epoch_end(self, trainer, pl_module):
        self.runs.append((trainer.sanity_checking, trainer.global_step, self._batches))


@pytest.mark.parametrize("sanity", [False, True], ids=["validation", "sanity-check"])
def test_sigterm_inside_a_validation_saves_the_training_state_and_the_resume_runs_that_validation(
    tmp_path, sanity
):
    """Stopped after the first of 4 validation batches of epoch 0 (Lightning's own stop there), last.ckpt holds
    the 4 training steps of epoch 0 and marks the validation as not run: the resumed run validates step 4 in
    full, then trains epoch 1. Stopped in the sanity check, it holds step 0 and the resume trains from there."""
    train, val = loader(TinyClips(8), batch_size=2), loader(TinyClips(4, views=1), batch_size=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = trainer_with(
        tmp_path, [SigtermInValidation(sanity), checkpoint, SigtermCheckpoint()], max_epochs=2,
        enable_checkpointing=True, num_sanity_val_steps=2,
    )  # fmt: skip
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        trainer.fit(make_task(), train, val)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == (0 if sanity else 4)

    seen = Validations()
    resumed = trainer_with(tmp_path, [seen], max_epochs=2, num_sanity_val_steps=2)
    resumed.fit(make_task(), train, val, ckpt_path=last)
    assert resumed.global_step == 8
    full = [(False, 4, 4), (False, 8, 4)]  # validation of epoch 0 (all 4 batches), then of epoch 1
    assert seen.runs == ([(True, 0, 2)] if sanity else []) + full


PREDICT_PATHS = [f"clip{i}.mp4" for i in range(3)]


def predict_three_clips(trainer: pl.Trainer, task: VideoClassifier) -> TinyClips:
    """Predict 3 tiny clips of 2 views each, named PREDICT_PATHS; returns the dataset."""
    data = TinyClips(3, views=2)
    trainer.predict(task, loader(data, batch_size=2, predict=True), return_predictions=False)
    return data


def test_prediction_writer_writes_one_json_line_per_video(tmp_path):
    out = tmp_path / "pred" / "out.jsonl"
    task = make_task()
    task.class_names = ["a", "b", "c", "d"]
    predict_three_clips(trainer_with(tmp_path, [JsonLinesPredictionWriter(str(out))]), task)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == PREDICT_PATHS
    assert all(len(r["top5"]) == 4 and r["top5"][0]["class"] in "abcd" for r in records)


def test_prediction_writer_puts_predictions_and_features_beside_the_checkpoints_run(tmp_path):
    """With no output named, a model loaded from `<run>/checkpoints/x.ckpt` predicts into `<run>/`; features are the
    view-averaged pre-logit embeddings, one row per predicted video, in the order of the JSON lines."""
    import numpy as np

    task = make_task().eval()
    task.source_checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    data = predict_three_clips(trainer_with(tmp_path, [JsonLinesPredictionWriter(features=True)]), task)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == PREDICT_PATHS and all("embedding" not in r for r in records)
    features = np.load(run / "predictions.features.npy")
    assert (run / "predictions.features.txt").read_text().splitlines() == PREDICT_PATHS
    with torch.no_grad():  # the backbone's features pooled over time and space (the head's input), per view
        pooled = task.backbone.forward_features(data[1]["video"]).mean(dim=(2, 3, 4))
        torch.testing.assert_close(task.backbone.head(pooled), task(data[1]["video"]), rtol=1e-5, atol=1e-6)
    assert features.shape == (3, pooled.shape[1])
    np.testing.assert_allclose(features[1], pooled.mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_first_batch_grid_goes_to_tensorboard_once(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = trainer_with(
        tmp_path, [FirstBatchFrames(max_clips=2, max_frames=4)], logger=logger, max_epochs=1
    )
    trainer.fit(make_task(), loader(TinyClips(4), batch_size=2))
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    images = events.Images("train/first_batch")
    assert len(images) == 1 and images[0].width == 4 * 33 + 1
