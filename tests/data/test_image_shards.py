"""Tar shards of an image folder: `python -m data_prep.image_shards` writes them, ImageShardDataset streams them
(same images and labels as the folder, every eval row exactly once over DDP ranks and workers, the same number
of train batches on every rank, failures counted), and hostile or broken tars are refused or reported."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data_prep.image_shards import main as shards_main
from data_prep.image_shards import write_shards
from src.data.datasets import EvalCollate, collate_train
from src.data.image_datasets import ImageShardDataset, ShardError, iter_shard, read_shards_meta, shard_set
from src.data.image_transforms import ImageEvalTransform, ImageTrainTransform
from src.data.images import EpochLoader
from tests.data.test_image_datamodule import CLASSES, CROP, module, write_image_folder

VIEW = (1, 3, 1, CROP, CROP)


@pytest.fixture(scope="module")
def sharded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_image_folder(tmp_path_factory.mktemp("sharded") / "imagenet")
    write_shards(root, shard_size=4)
    return root


def shard_dataset(root: Path, split: str, mode: str, **options) -> ImageShardDataset:
    shards = shard_set(root, split, read_shards_meta(root), options.pop("limit", None))
    transform = ImageTrainTransform(CROP) if mode == "train" else ImageEvalTransform(CROP)
    settings = dict(mode=mode, transform=transform, num_classes=3, batch_size=2, shuffle_buffer=4)
    return ImageShardDataset(shards, **{**settings, **options})


def eval_rows(dataset: ImageShardDataset, workers: int) -> tuple[list[dict], list[int], list[int]]:
    loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=EvalCollate(VIEW))
    batches = list(loader)
    scored = [i for b in batches for i in b["index"].tolist()]
    failed = [i for b in batches for i in b["failed_index"].tolist()]
    return batches, scored, failed


def test_writer_lists_every_image_once_and_refuses_to_overwrite(sharded_root, capsys):
    meta = json.loads((sharded_root / "shards" / "shards.json").read_text())
    assert meta["splits"]["train"]["count"] == 15 and meta["splits"]["train"]["quarantined"] == 1
    assert meta["splits"]["val"]["count"] == 9
    assert [s["count"] for s in meta["splits"]["val"]["shards"]] == [4, 4, 1]
    assert meta["fingerprint"] == module(sharded_root).fingerprint  # the folder's, whichever is read
    with tarfile.open(sharded_root / "shards" / "train-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 8 and all(n.endswith((".jpg", ".png", ".cls")) for n in names)
    assert shards_main([str(sharded_root)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    before = (sharded_root / "shards" / "val-000000.tar").read_bytes()
    assert shards_main([str(sharded_root), "--shard-size", "4", "--overwrite", "--quiet"]) == 0
    assert (sharded_root / "shards" / "val-000000.tar").read_bytes() == before  # deterministic bytes
    assert not list(sharded_root.glob(".shards-*"))


def test_writer_on_a_missing_folder_names_the_fix(tmp_path, capsys):
    assert shards_main([str(tmp_path / "nothing")]) == 2
    assert "prepare-imagenet" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_shards_give_the_same_labelled_images_as_the_folder(sharded_root):
    def contents(dm) -> tuple[set, int]:
        batches = list(dm.val_dataloader())
        pairs = {
            (int(label), hashlib.sha1(video.numpy().tobytes()).hexdigest())
            for b in batches
            for label, video in zip(b["label"], b["video"])
        }
        return pairs, sum(len(b["failed_index"]) for b in batches)

    folder = contents(module(sharded_root))
    shards = contents(module(sharded_root, read_from="shards", num_workers=2))
    assert folder == shards and len(folder[0]) == 8 and folder[1] == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_shards_cover_every_row_exactly_once_over_ranks_and_workers(sharded_root, world_size):
    rows = []
    for rank in range(world_size):
        dataset = shard_dataset(sharded_root, "val", "eval", rank=rank, world_size=world_size)
        _, scored, failed = eval_rows(dataset, workers=2)
        assert len(scored) + len(failed) == dataset.eval_total()
        rows += scored + failed
    assert sorted(rows) == list(range(9))


def test_an_empty_rank_yields_one_placeholder(sharded_root):
    dataset = shard_dataset(sharded_root, "val", "eval", rank=0, world_size=4, limit=3)  # rows [0, 0)
    batches, scored, failed = eval_rows(dataset, workers=0)
    assert len(batches) == 1 and scored == failed == [] and batches[0]["video"].shape == (0, *VIEW)


@pytest.mark.timeout(120)
def test_train_ranks_get_equal_batches_and_failures_are_counted(sharded_root):
    counts, failures, seen = [], 0, []
    for rank in range(3):
        dataset = shard_dataset(sharded_root, "train", "train", rank=rank, world_size=3)
        loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_train)
        batches = list(loader)
        counts.append(len(batches))
        assert len(loader) == len(batches)
        for batch in batches:
            assert batch["video"].shape == (2, 3, 1, CROP, CROP) and batch["label"].dtype == torch.long
        failures += sum(int(b["decode_failures"]) for b in batches)
        seen += [i for b in batches for i in b["index"].tolist()]
    assert counts == [2, 2, 2]  # ceil(15 / 3) = 5 images per rank: 2 whole batches of 2
    truncated = read_rows(sharded_root, "train", "truncated")
    assert truncated not in seen and failures <= 1  # drawn at most once, never returned


def read_rows(root: Path, split: str, key_part: str) -> int:
    for shard in shard_set(root, split, read_shards_meta(root)).shards:
        for position, key, _ in iter_shard(shard.path):
            if key_part in key:
                return shard.offset + position
    raise AssertionError(key_part)


def test_train_stream_is_seeded_and_changes_with_the_epoch(sharded_root):
    def indices(seed: int, epoch: int) -> list[int]:
        dataset = shard_dataset(sharded_root, "train", "train", seed=seed, batch_size=3)
        loader = EpochLoader(DataLoader(dataset, batch_size=3, num_workers=0, collate_fn=collate_train))
        loader.sampler.set_epoch(epoch)  # what Lightning calls at every epoch
        return [i for b in loader for i in b["index"].tolist()]

    assert indices(0, 0) == indices(0, 0)
    assert indices(0, 0) != indices(0, 1) and indices(0, 0) != indices(1, 0)
    assert len(indices(0, 0)) == 15  # 15 images, 5 batches of 3


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def test_hostile_members_are_refused(tmp_path):
    link = tarfile.TarInfo("x.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ShardError, match="link"):
        list(iter_shard(_tar_with(tmp_path / "link.tar", link)))
    absolute = tarfile.TarInfo("/abs/x.jpg")
    absolute.size = 3
    with pytest.raises(ShardError, match="absolute"):
        list(iter_shard(_tar_with(tmp_path / "abs.tar", absolute, b"abc")))


def test_a_truncated_shard_reports_its_lost_rows_as_failed(sharded_root, tmp_path):
    import shutil

    root = shutil.copytree(sharded_root, tmp_path / "cut")
    shard = root / "shards" / "val-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # inside the first sample of the second shard
    _, scored, failed = eval_rows(shard_dataset(root, "val", "eval"), workers=0)
    assert sorted(scored + failed) == list(range(9))
    assert {4, 5, 6, 7} <= set(failed)


def test_missing_shards_name_the_command(tmp_path):
    root = write_image_folder(tmp_path / "plain")
    with pytest.raises(ShardError, match="data_prep.image_shards"):
        module(root, read_from="shards").setup("fit")
    write_shards(root, shard_size=8)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in reversed(CLASSES)))
    with pytest.raises(ShardError, match="another .*classes.txt"):
        module(root, read_from="shards").setup("fit")
