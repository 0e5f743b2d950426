"""ImageDataModule (src/data/images.py) on tiny real JPEG folders: the batch contract with real DataLoader
workers, decoding of CMYK / grey / PNG-named-JPEG files, the failure policy, both val layouts, exact evaluation
shards, determinism and the errors of a bad root."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.distributed import EvalSampler
from src.data.failures import DecodeFailureRateError
from src.data.image_datasets import VAL_LABELS, list_split, read_image
from src.data.images import ImageDataModule
from src.data.index import IndexContractError, quarantine_line

CLASSES = ("n01440764", "n01443537", "n01484850")
SIZES = ((40, 30), (30, 50))  # (width, height), PIL's order
CROP = 24


def _picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 80, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(ramp * rng.uniform(0.3, 1.0, 3) + noise, 0, 255).astype(np.uint8))


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_image_folder(root: Path) -> Path:
    """3 classes; train: 5 images each (+1 quarantined garbage file), val: 3 each, class-folder layout.

    Special files: train/<c0>/cmyk.JPEG (CMYK JPEG), train/<c1>/png_named.JPEG (PNG bytes), train/<c2>/
    truncated.JPEG (half a JPEG), train/<c0>/quarantined.JPEG (garbage, listed in quarantine.txt), and in val:
    val/<c0>/v_cmyk.JPEG, val/<c1>/v_grey.JPEG (greyscale), val/<c2>/v_truncated.JPEG.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    (root / "synset_words.txt").write_text("".join(f"{c} fish {i}\n" for i, c in enumerate(CLASSES)))
    seed = 0
    for split, per_class in (("train", 4), ("val", 2)):
        prefix = "" if split == "train" else "v_"
        for label, wnid in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(per_class):
                seed += 1
                picture = _picture(*SIZES[(k + label) % 2], seed)
                (folder / f"{prefix}{wnid}_{k}.JPEG").write_bytes(_jpeg_bytes(picture))
            special = _picture(*SIZES[label % 2], 1000 + label + len(prefix))
            if label == 0:
                special.convert("CMYK").save(folder / f"{prefix}cmyk.JPEG", format="JPEG", quality=90)
            elif label == 1 and split == "train":
                special.save(folder / "png_named.JPEG", format="PNG")
            elif label == 1:
                special.convert("L").save(folder / "v_grey.JPEG", format="JPEG", quality=90)
            else:
                data = _jpeg_bytes(special)
                (folder / f"{prefix}truncated.JPEG").write_bytes(data[: len(data) // 2])
    (root / "train" / CLASSES[0] / "quarantined.JPEG").write_bytes(b"not an image at all" * 10)
    (root / "quarantine.txt").write_text(
        quarantine_line(f"train/{CLASSES[0]}/quarantined.JPEG", "doctor: cannot decode")
    )
    return root


def make_flat_val(source: Path, target: Path) -> Path:
    """A copy of `source` whose val is flat, labelled by val_labels.txt."""
    shutil.copytree(source, target)
    lines = []
    for folder in sorted((target / "val").iterdir()):
        for image in sorted(folder.iterdir()):
            image.rename(target / "val" / image.name)
            separator = " " if len(lines) % 2 else "\t"  # either whitespace separates name and wnid
            lines.append(f"{image.name}{separator}{folder.name}\n")
        folder.rmdir()
    (target / VAL_LABELS).write_text("".join(lines))
    return target


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "imagenet")


def module(root: Path, **options) -> ImageDataModule:
    settings = dict(crop_size=CROP, batch_size=4, eval_batch_size=4, num_workers=0, rand_augment="m9-n2")
    return ImageDataModule(root=str(root), **{**settings, **options})


def _row(dm: ImageDataModule, split: str, name: str) -> int:
    entries = dm.split_dataset(split).entries
    return next(i for i, e in enumerate(entries) if e.path.name == name)


@pytest.mark.timeout(120)
def test_train_batches_follow_the_contract_with_real_workers_and_count_the_corrupt_file(image_root, caplog):
    dm = module(image_root, num_workers=2, batch_size=5)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.data"):
        dm.setup("fit")
    assert "skipped 1 quarantined images" in caplog.text
    assert len(dm.split_dataset("train")) == 16 - 1
    truncated = _row(dm, "train", "truncated.JPEG")
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 15 images, batches of 5: every image drawn once
    for batch in batches:
        assert batch["video"].shape == (5, 3, 1, CROP, CROP) and batch["video"].dtype == torch.float32
        assert batch["label"].dtype == torch.long and batch["label"].shape == (5,)
        assert batch["index"].dtype == torch.long and batch["index"].shape == (5,)
        assert batch["decode_failures"].dtype == torch.long and batch["decode_failures"].ndim == 0
        assert torch.isfinite(batch["video"]).all()
    # the truncated file was drawn once and replaced by another image (never returned itself)
    assert sum(int(b["decode_failures"]) for b in batches) >= 1
    assert truncated not in torch.cat([b["index"] for b in batches]).tolist()
    assert dm.num_classes == 3 and dm.class_names == list(CLASSES) and dm.batch_size == 5


@pytest.mark.timeout(120)
def test_eval_batches_skip_and_list_the_corrupt_file(image_root):
    dm = module(image_root, num_workers=2)
    truncated = _row(dm, "val", "v_truncated.JPEG")
    batches = list(dm.val_dataloader())
    assert len(batches) == 3  # 9 val images (3 per class, one of them truncated), batches of 4
    for batch in batches:
        assert batch["video"].shape[1:] == (1, 3, 1, CROP, CROP)
        assert batch["video"].shape[0] == batch["label"].shape[0] == batch["index"].shape[0]
    failed = torch.cat([b["failed_index"] for b in batches]).tolist()
    reasons = [r for b in batches for r in b["failed_reason"]]
    assert failed == [truncated] and "truncated" in reasons[0]
    scored = torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(scored + failed) == list(range(9))
    # the test split is val
    assert dm.split_dataset("test").entries == dm.split_dataset("val").entries


def test_cmyk_grey_and_png_named_jpeg_decode_to_rgb(image_root):
    cases = {
        image_root / "train" / CLASSES[0] / "cmyk.JPEG": SIZES[0],
        image_root / "train" / CLASSES[1] / "png_named.JPEG": SIZES[1],
        image_root / "val" / CLASSES[1] / "v_grey.JPEG": SIZES[1],
    }
    for path, (width, height) in cases.items():
        image = read_image(path)
        assert image.shape == (3, height, width) and image.dtype == torch.uint8
        expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        # the same picture as PIL's RGB conversion (JPEG decoders may differ by a few levels)
        assert np.abs(image.permute(1, 2, 0).numpy().astype(np.int16) - expected).mean() < 4


def test_flat_val_with_labels_file_equals_class_folder_val(image_root, tmp_path):
    flat_root = make_flat_val(image_root, tmp_path / "flat")
    folder, flat = module(image_root), module(flat_root)
    by_folder = [(e.label, e.path.name) for e in folder.split_dataset("val").entries]
    by_flat = [(e.label, e.path.name) for e in flat.split_dataset("val").entries]
    assert by_flat == by_folder and len(by_flat) == 9
    assert flat.fingerprint == folder.fingerprint
    a, b = next(iter(folder.val_dataloader())), next(iter(flat.val_dataloader()))
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["label"], b["label"])


def test_flat_val_without_labels_file_names_it(image_root, tmp_path):
    flat_root = make_flat_val(image_root, tmp_path / "flat")
    (flat_root / VAL_LABELS).unlink()
    with pytest.raises(IndexContractError, match=VAL_LABELS):
        list_split(flat_root, "val", CLASSES)


@pytest.mark.parametrize("world_size", [2, 3])
def test_folder_eval_shards_cover_every_image_exactly_once(image_root, world_size):
    seen = []
    for rank in range(world_size):
        dm = module(image_root)
        dataset = dm.split_dataset("val")
        sampler = EvalSampler(len(dataset), rank=rank, world_size=world_size)
        for key in sampler:
            item = dataset[key]
            if not item.get("placeholder"):
                seen.append(item["index"])
    assert sorted(seen) == list(range(9))


def test_same_seed_gives_the_same_batch_and_another_seed_another(image_root):
    first = [next(iter(module(image_root, seed=seed).train_dataloader())) for seed in (3, 3, 4)]
    assert torch.equal(first[0]["index"], first[1]["index"])
    assert torch.equal(first[0]["video"], first[1]["video"])
    assert not torch.equal(first[0]["video"], first[2]["video"])


def test_fingerprint_is_stable_and_follows_the_file_lists(image_root, tmp_path):
    assert module(image_root).fingerprint == module(image_root).fingerprint
    changed = shutil.copytree(image_root, tmp_path / "changed")
    (changed / "val" / CLASSES[0] / "v_cmyk.JPEG").unlink()
    assert module(changed).fingerprint != module(image_root).fingerprint


def test_limit_keeps_the_first_images_of_each_split(image_root):
    dm = module(image_root, limit=5)
    assert len(dm.split_dataset("train")) == 5 and len(dm.split_dataset("val")) == 5
    assert dm.split_dataset("val").entries == module(image_root).split_dataset("val").entries[:5]


def test_bad_root_error_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    dm = ImageDataModule(root=str(missing))
    for action in (lambda: dm.num_classes, lambda: dm.setup("fit")):
        with pytest.raises(IndexContractError) as caught:
            action()
        text = str(caught.value)
        assert str(missing) in text
        assert "make prepare-imagenet" in text and "python -m data_prep.synthetic_images" in text
    (missing).mkdir()
    (missing / "classes.txt").write_text("n1\n")
    with pytest.raises(IndexContractError, match=r"train not found.*prepare-imagenet"):
        ImageDataModule(root=str(missing)).setup("fit")


def test_class_folder_outside_classes_txt_is_an_error(image_root, tmp_path):
    root = shutil.copytree(image_root, tmp_path / "extra")
    (root / "train" / "n99999999").mkdir()
    with pytest.raises(IndexContractError, match="n99999999"):
        module(root).setup("fit")


def test_bad_values_are_refused_at_construction(image_root):
    for options, key in (
        ({"rand_augment": "strong"}, "rand_augment"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"crop_scale": (0.9, 0.1)}, "crop_scale"),
        ({"batch_size": 0}, "batch_size"),
    ):
        with pytest.raises(ValueError, match=key):
            module(image_root, **options)
    with pytest.raises(NotImplementedError, match="video checkpoints"):
        module(image_root).predict_dataloader()


def test_failure_log_counts_images_and_stops_above_the_rate(tmp_path, image_root):
    failures = ImageDataModule(root=str(image_root), num_workers=0).failures
    failures.count_train(1, epoch=0, rank=0, shard=100)  # 1 of 100: allowed
    with pytest.raises(DecodeFailureRateError, match="images failed to decode in epoch 0") as raised:
        failures.count_train(1, epoch=0, rank=0, shard=100)
    assert f"python -m data_prep.image_doctor {image_root}" in str(
        raised.value
    )  # the image doctor, not the video one
    failures = ImageDataModule(root=str(image_root), num_workers=0, max_failure_rate=0.1).failures
    failures.count_train(1, epoch=0, rank=0, shard=10)  # 1 of 10: allowed
    with pytest.raises(DecodeFailureRateError, match="images failed to decode in epoch 0"):
        failures.count_train(1, epoch=0, rank=0, shard=10)
    failures.count_train(1, epoch=1, rank=0, shard=10)  # a new epoch starts from zero
    batch = {"index": torch.tensor([0, 1]), "failed_index": torch.tensor([2]), "failed_reason": ["broken"]}
    failures.folder = tmp_path
    failures.track_eval("val", batch, lambda row: f"file{row}", lambda: 3, (0, 1), key=(False, 0))
    report = failures.report("val")
    assert report.message().startswith("val: evaluated 2 of 3 images; 1 failed to decode")
    assert (tmp_path / "failed_val.txt").read_text() == "2\tfile2\tbroken\n"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fit_and_test_from_shards_with_the_video_classifier(image_root, tmp_path):
    """The shard path through the real Trainer (default progress bar, 2 workers); the folder path runs through
    the CLI in tests/test_imagenet_stage.py and tests/test_ddp.py."""
    import lightning.pytorch as pl

    from data_prep.image_shards import write_shards
    from src.task import BackboneConfig, VideoClassifier

    root = shutil.copytree(image_root, tmp_path / "root")
    write_shards(root, shard_size=4)
    dm = module(root, read_from="shards", num_workers=2, max_failure_rate=0.5, crop_size=32)
    model = VideoClassifier(
        backbone=BackboneConfig(variant="structvit_xs"),
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        data_fingerprint=dm.fingerprint,
        warmup_epochs=0,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path / "run",
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 * 3  # 15 train images, batches of 4, the partial one dropped
    assert dm.failures.train_total >= 1  # the truncated image, substituted
    trainer.test(model, datamodule=dm)
    assert dm.failures.report("test").message().startswith("test: evaluated 8 of 9 images; 1 failed")
    assert (tmp_path / "run" / "failed_test.txt").read_text().count("\n") == 1
    assert int(dm.split_dataset("train")._epoch) == 1  # Lightning's set_epoch reached the dataset
