"""VideoClassifier with the real backbone (structvit_xs) and the real Lightning Trainer on tiny clips."""

import csv
import math

import lightning.pytorch as pl
import pytest
import torch
from task_fixtures import NUM_CLASSES, OneThread, TinyClips, loader

from src.task import BackboneConfig, ConfigError, NonFiniteLossError, VideoClassifier

CLASSES = ["push", "pull", "lift", "drop"]


@pytest.fixture(autouse=True)
def one_thread():
    with OneThread():
        yield


def make_task(**kwargs) -> VideoClassifier:
    options = dict(
        backbone=BackboneConfig(variant="structvit_xs"),
        num_classes=NUM_CLASSES,
        class_names=CLASSES,
        lr=1e-3,
        warmup_epochs=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    )
    options.update(kwargs)
    return VideoClassifier(**options)


def make_trainer(tmp_path, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def test_backbone_options_reach_the_model_and_unknown_variants_fail():
    task = make_task(backbone=BackboneConfig(variant="structvit_xs", structure_dim=0, drop_path_rate=0.1))
    assert task.backbone.structsa_modules()[0].structure_dim == 0
    assert task.hparams.backbone["structure_dim"] == 0  # saved as a plain dict
    with pytest.raises(ValueError, match="unknown model"):
        make_task(backbone=BackboneConfig(variant="structvit_xxl"))


def test_class_names_must_match_the_class_count():
    with pytest.raises(ValueError, match="3 class names"):
        make_task(class_names=["a", "b", "c"])


def test_training_with_mixup_and_cutmix_logs_finite_loss_and_accuracy(tmp_path):
    torch.manual_seed(0)
    task = make_task(mixup_alpha=0.8, cutmix_alpha=1.0, lr=3e-3)
    trainer = make_trainer(tmp_path, max_epochs=2, log_every_n_steps=1)
    trainer.fit(task, loader(TinyClips(8), batch_size=4, shuffle=True))
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["train/loss_epoch"].item())
    assert 0 <= metrics["train/top1"].item() <= 1
    assert task.nonfinite_skips == 0
    assert trainer.global_step == 4


def test_non_finite_loss_skips_the_step_and_leaves_weights_unchanged(tmp_path):
    task = make_task(max_nonfinite_steps=5)
    before = {k: v.clone() for k, v in task.state_dict().items() if v.is_floating_point()}
    trainer = make_trainer(tmp_path, limit_train_batches=1)
    trainer.fit(task, loader(TinyClips(4, nan_rows=(0, 1, 2, 3)), batch_size=4))
    assert task.nonfinite_skips == 1
    assert trainer.callback_metrics["train/nonfinite_skips"].item() == 1
    after = task.state_dict()
    changed = [
        k
        for k in before
        if "running" not in k and "num_batches" not in k and not torch.equal(before[k], after[k])
    ]
    assert changed == []  # no optimiser step was taken


def test_too_many_consecutive_non_finite_losses_stop_the_run(tmp_path):
    task = make_task(max_nonfinite_steps=2)
    trainer = make_trainer(tmp_path)
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        trainer.fit(task, loader(TinyClips(8, nan_rows=tuple(range(8))), batch_size=4))


def test_validation_reports_single_view_and_all_view_metrics(tmp_path):
    """The logged metrics equal those computed here from the model's logits: softmax averaged over the views,
    top-5 among 8 classes (so it can miss), the loss of the averaged probabilities, which is near ln(8) for an
    untrained model."""
    torch.manual_seed(0)
    task = make_task(num_classes=8, class_names=[f"c{k}" for k in range(8)])  # the clips' labels are 0..3
    data = TinyClips(8, views=3)
    trainer = make_trainer(tmp_path)
    (metrics,) = trainer.validate(task, loader(data, batch_size=4), verbose=False)

    task.eval()
    with torch.no_grad():
        logits = task(torch.cat([data[i]["video"] for i in range(len(data))]))  # (8 videos x 3 views, 8)
    view_probs = logits.softmax(-1).view(8, 3, 8)
    video_probs = view_probs.mean(1)
    labels = data.labels

    def top(probs: torch.Tensor, k: int) -> float:
        return (
            (probs.topk(k, dim=-1).indices == labels.view(-1, *[1] * (probs.dim() - 1)))
            .any(-1)
            .float()
            .mean()
        )

    per_class = [(video_probs.argmax(-1) == labels)[labels == c].float().mean() for c in labels.unique()]
    expected = {
        "val/top1": top(video_probs, 1),
        "val/top5": top(video_probs, 5),
        "val/single_view/top1": top(view_probs, 1),
        "val/single_view/top5": top(view_probs, 5),
        "val/mean_class": torch.stack(per_class).mean(),
        "val/loss": torch.nn.functional.nll_loss(video_probs.log(), labels),
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(float(value), abs=1e-5), name
    assert abs(metrics["val/loss"] - math.log(8)) < 0.5  # near chance: the head starts near zero
    assert metrics["val/top5"] < 1.0 or metrics["val/top1"] > 0  # 5 of 8 classes: top-5 is not a certainty


def test_test_writes_confusion_matrix_and_per_class_files(tmp_path):
    task = make_task()
    trainer = make_trainer(tmp_path)
    trainer.test(task, loader(TinyClips(8, views=2), batch_size=4), verbose=False)
    rows = list(csv.reader(open(tmp_path / "confusion_matrix.csv")))
    assert rows[0] == ["true\\pred", *CLASSES]
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 8  # every test video counted once
    per_class = list(csv.DictReader(open(tmp_path / "per_class_accuracy.csv")))
    assert [r["class"] for r in per_class] == CLASSES and all(r["support"] == "2" for r in per_class)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_predict_returns_top5_class_names_with_probabilities(tmp_path):
    task = make_task()
    task.eval()
    batch = next(iter(loader(TinyClips(2, views=2), batch_size=2, predict=True)))
    with torch.no_grad():
        records = task.predict_step(batch, 0)
    assert [r["path"] for r in records] == ["clip0.mp4", "clip1.mp4"]
    top = records[0]["top5"]
    assert len(top) == NUM_CLASSES and {t["class"] for t in top} == set(CLASSES)
    probs = [t["prob"] for t in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)


def _loss_on(task: VideoClassifier, data: TinyClips) -> float:
    task.eval()
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(task(data.videos), data.labels).item()


def test_training_learns_and_optimiser_groups_and_schedule_follow_the_recipe(tmp_path):
    torch.manual_seed(0)
    task = make_task(lr=1e-3, warmup_epochs=1.0, weight_decay=0.05, min_lr=1e-5, warmup_start_lr=0.0)
    data = TinyClips(8)
    before = _loss_on(task, data)
    trainer = make_trainer(tmp_path, max_epochs=4)
    trainer.fit(task, loader(data, batch_size=4))  # 2 steps per epoch, 8 in all, 2 of warmup
    assert _loss_on(task, data) < before
    optimizer = trainer.optimizers[0]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert any(p is task.backbone.head.bias for p in no_decay["params"])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5, rel=1e-3)  # cosine has reached the floor


def test_init_from_loads_a_checkpoint_into_the_backbone_and_writes_the_report(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from src.models import build_model

    source = build_model("structvit_xs", num_classes=7)  # other classes: the head must be left out
    torch.save({"model": source.state_dict()}, tmp_path / "pretrained.pth")
    task = make_task(init_from=str(tmp_path / "pretrained.pth"), lr=0.0, min_lr=0.0, warmup_start_lr=0.0)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = make_trainer(tmp_path, logger=logger, limit_train_batches=1)
    trainer.fit(task, loader(TinyClips(4), batch_size=4))
    assert torch.equal(task.backbone.blocks3[0].attn.qkv.weight, source.blocks3[0].attn.qkv.weight)
    assert task.backbone.head.weight.shape[0] == NUM_CLASSES
    assert "pretrained.pth" in (tmp_path / "run" / "version_0" / "init_report.txt").read_text()


@pytest.mark.parametrize("source_overrides", [dict(kv_stride=2, stem="patch"), dict(structure_dim=2)])
def test_init_from_weights_of_another_architecture_is_an_error_naming_both(tmp_path, source_overrides):
    """S weights under a B config loaded partly and trained on silently; now the run stops before the first step."""
    source = VideoClassifier(
        BackboneConfig("structvit_xs", **source_overrides), num_classes=NUM_CLASSES, class_names=CLASSES
    )
    torch.save(
        {"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, tmp_path / "other.ckpt"
    )
    task = make_task(init_from=str(tmp_path / "other.ckpt"))
    with pytest.raises(
        ValueError,
        match=r"other.ckpt: a structvit_xs checkpoint does not fit this run's structvit_xs"
        r".*of another shape.*same architecture",
    ):
        make_trainer(tmp_path, limit_train_batches=1).fit(task, loader(TinyClips(4), batch_size=4))


def test_init_from_that_is_not_a_file_stops_the_run_naming_it(tmp_path):
    """A directory once read as "no checkpoint at" without saying why; the error is a ConfigError, which
    `python -m src.cli` prints as one line."""
    task = make_task(init_from=str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"model.init_from: no checkpoint at .* \(it is a directory\); give"
    ):
        make_trainer(tmp_path, limit_train_batches=1).fit(task, loader(TinyClips(4), batch_size=4))


def test_values_parsed_as_bounded_types_are_stored_as_plain_python_numbers(tmp_path):
    """The config parser hands in jsonargparse's number classes (the bounds of BackboneConfig and the recipe);
    checkpoints store the hyper-parameters, and the safe loader refuses any class it does not know."""
    from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt

    backbone = BackboneConfig(
        "structvit_xs", structure_dim=NonNegativeInt(4), drop_path_rate=ClosedUnitInterval(0.1)
    )
    task = make_task(backbone=backbone, lr=PositiveFloat(1e-3), max_nonfinite_steps=PositiveInt(3))
    torch.save(dict(task.hparams), tmp_path / "hparams.pt")
    stored = torch.load(tmp_path / "hparams.pt", weights_only=True)
    assert type(stored["lr"]) is float and type(stored["max_nonfinite_steps"]) is int
    assert (
        type(stored["backbone"]["drop_path_rate"]) is float
        and type(stored["backbone"]["structure_dim"]) is int
    )
