"""`src.trained`: a checkpoint written by a real Trainer fit is a model on its own — the same logits, class
names and evaluation protocol, with no dataset or run folder — and files that are not are refused by name."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from task_fixtures import OneThread

from src.data.datamodule import VideoDataModule
from src.data.protocol import CHECKPOINT_KEY, EvalProtocol
from src.models.checkpoints import CheckpointFileError
from src.task import BackboneConfig, VideoClassifier
from src.trained import load_trained, read_card, run_folder_of


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, VideoClassifier, VideoDataModule]:
    """Two training steps of structvit_xs on a tiny generated index, then `trainer.save_checkpoint`."""
    from data_prep.synthetic import generate_dataset

    base = tmp_path_factory.mktemp("trained")
    generate_dataset(base / "index", train=8, val=4, test=4, frames=8, size=32)
    data = VideoDataModule(
        root=str(base / "index"),
        dataset="synthetic",
        num_frames=6,
        sampling="segment",
        sampling_rate=1,
        crop_size=32,
        test_views=(2, 1),
        flip="off",
        rand_augment=None,
        batch_size=4,
        num_workers=1,
        mean=(0.5, 0.4, 0.3),
    )
    model = VideoClassifier(
        BackboneConfig("structvit_xs", kv_stride=2),
        num_classes=data.num_classes,
        class_names=data.class_names,
        mixup_prob=0.0,
    )
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=base,
        limit_val_batches=1,
    )
    with OneThread():
        trainer.fit(model, datamodule=data)
    path = base / "run" / "checkpoints" / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, model.eval(), data


def test_the_checkpoint_alone_gives_the_trained_model_its_classes_and_protocol(fitted):
    path, model, data = fitted
    trained = load_trained(path)
    assert (
        trained.protocol == data.eval_protocol == EvalProtocol(6, "segment", 1, 32, (2, 1), (0.5, 0.4, 0.3))
    )
    assert trained.class_names == data.class_names and trained.variant == "structvit_xs"
    assert trained.module.backbone.blocks3[0].attn.kv_stride == 2 and not trained.module.training
    # the views read_views makes are those the DataModule's predict loader makes for the same file
    video = data.datasets["val"].entries[0].path  # absolute
    views = trained.read_views(video)
    data.predict_path = str(video)
    data.datasets.pop("predict", None)
    data.setup("predict")
    torch.testing.assert_close(views, data.datasets["predict"][0]["video"], rtol=0, atol=0)
    assert views.shape == (2, 3, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(trained.module(views), model(views), rtol=0, atol=0)
    assert run_folder_of(path) == path.parent.parent.resolve()


def test_a_checkpoint_saved_before_the_protocol_was_stored_resolves_it_from_the_data_arguments(
    fitted, tmp_path
):
    path, _, data = fitted
    payload = torch.load(path, map_location="cpu", weights_only=False)
    del payload[CHECKPOINT_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    assert read_card(old).protocol == data.eval_protocol


def _variant(path: Path, tmp_path: Path, name: str, change) -> Path:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    change(payload)
    out = tmp_path / name
    torch.save(payload, out)
    return out


def test_files_that_are_not_complete_checkpoints_are_refused_naming_the_file_and_the_fix(fitted, tmp_path):
    path, model, _ = fitted
    raw = tmp_path / "backbone.pth"
    torch.save(model.backbone.state_dict(), raw)
    with pytest.raises(
        CheckpointFileError, match=r"backbone.pth: not a checkpoint written by .*--model.init_from"
    ):
        load_trained(raw)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(
        CheckpointFileError, match=r"notes.ckpt: truncated or corrupt \(not a file written by torch.save\)"
    ):
        load_trained(text)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointFileError, match=r"cut.ckpt: truncated or corrupt"):
        load_trained(cut)
    newer = _variant(path, tmp_path, "newer.ckpt", lambda p: p["hyper_parameters"].update(future_option=1))
    with pytest.raises(
        CheckpointFileError, match=r"newer.ckpt: hyper-parameters \['future_option'\].*another version"
    ):
        load_trained(newer)
    edited = _variant(path, tmp_path, "edited.ckpt", lambda p: p["state_dict"].pop("backbone.head.weight"))
    with pytest.raises(
        CheckpointFileError, match=r"edited.ckpt: its weights do not fit .*backbone.head.weight"
    ):
        load_trained(edited)

    def strip(p: dict) -> None:
        del p[CHECKPOINT_KEY]
        del p["datamodule_hyper_parameters"]

    bare = _variant(path, tmp_path, "bare.ckpt", strip)
    with pytest.raises(
        CheckpointFileError, match=r"bare.ckpt: holds no evaluation protocol.*ckpt\['eval_protocol'\]"
    ):
        load_trained(bare)


def test_the_card_says_which_weights_the_run_started_from_and_a_reloaded_model_keeps_it(fitted, tmp_path):
    """`init_source` (the init_from value, the file loaded, its SHA-256) is read without building the model,
    printed by `python -m src.trained`, and carried by a model rebuilt from the file into the checkpoints it saves."""
    import subprocess
    import sys

    from src.task import INIT_SOURCE_KEY

    path, _, _ = fitted
    assert read_card(path).init_source is None  # trained from scratch
    assert read_card(path).started_from.startswith("not recorded")
    record = {
        "init_from": "uniformer_s_k400_16x8",
        "file": "/cache/uniformer_small_k400_16x8.pth",
        "sha256": "ab" * 32,
    }
    marked = _variant(path, tmp_path, "started.ckpt", lambda c: c.update({INIT_SOURCE_KEY: record}))
    card = read_card(marked)
    assert card.init_source == record
    assert (
        f"started from: uniformer_s_k400_16x8 (/cache/uniformer_small_k400_16x8.pth), SHA-256 {'ab' * 32}"
        in str(card)
    )
    printed = subprocess.run(
        [sys.executable, "-m", "src.trained", str(marked)], capture_output=True, text=True, timeout=120
    )
    assert printed.returncode == 0 and "started from: uniformer_s_k400_16x8" in printed.stdout, printed.stderr
    module = load_trained(marked).module
    assert module.init_source == record
    saved: dict = {}
    module.on_save_checkpoint(saved)
    assert saved[INIT_SOURCE_KEY] == record
