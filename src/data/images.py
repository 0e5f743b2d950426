"""`ImageDataModule`: train/val/test loaders of a prepared ImageNet-layout folder, for the ImageNet stage.

An image is a one-frame clip, so batches fit `src.task.VideoClassifier` unchanged: train `video` (B, 3, 1, H, W),
val/test `video` (B, 1, 3, 1, H, W) (one view). Every argument has one concrete value (the constructor's
signature is the `data:` schema of the CLI). Images are read from the class folders (map-style, with the
DDP samplers of src/data/distributed.py) or from tar shards (`read_from: shards`, streamed, see
src/data/image_datasets.py). Decode failures go through `failures` (`DecodeFailureLog`) as for videos.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import torch.distributed as dist
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from src.data.catalog import default_root
from src.data.datamodule import make_loader
from src.data.datasets import EvalCollate, collate_train
from src.data.distributed import EvalSampler, TrainSampler
from src.data.failures import DecodeFailureLog
from src.data.image_datasets import (
    SPLITS,
    ImageEntry,
    ImageFolderDataset,
    ImageShardDataset,
    folder_fingerprint,
    list_split,
    missing_root_error,
    read_shards_meta,
    select,
    shard_set,
)
from src.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageEvalTransform,
    ImageTrainTransform,
    rand_augment_op,
)
from src.data.index import IndexContractError, read_classes, read_quarantine

log = logging.getLogger("lightning.pytorch").getChild("data")

# ImageShardDataset's __len__ is exact (whole batches per worker by construction): Lightning's caution about
# the length of an IterableDataset under several workers does not apply
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

# (0, 1]: the share of the resized image the centre crop keeps
CropFraction = restricted_number_type("CropFraction", float, [(">", 0), ("<=", 1)])

ImageDataset = ImageFolderDataset | ImageShardDataset


class EpochLoader:
    """A shard loader whose `sampler.set_epoch` (what Lightning calls at every epoch) reaches the dataset:
    a DataLoader over an IterableDataset has no sampler of its own to receive it."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size
        self.num_workers = loader.num_workers
        self.sampler = self  # Lightning looks for `dataloader.sampler.set_epoch`

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _check_values(arguments: dict) -> None:
    """Ranges, for calls from Python (the CLI refuses these at parse time from the type hints)."""
    for name in ("crop_size", "batch_size", "eval_batch_size", "limit", "prefetch_factor", "shuffle_buffer"):
        value = arguments.get(name)
        if value is not None and not value > 0:
            raise ValueError(f"data.{name} must be > 0, got {value}")
    if arguments["num_workers"] < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {arguments['num_workers']}")
    for name in ("max_failure_rate", "erase_prob"):
        if not 0 <= arguments[name] <= 1:
            raise ValueError(f"data.{name} must be in [0, 1], got {arguments[name]}")
    low, high = arguments["crop_scale"]
    if not 0 < low <= high <= 1:
        raise ValueError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {[low, high]}")
    if arguments["read_from"] not in ("folder", "shards"):
        raise ValueError(f"data.read_from must be 'folder' or 'shards', got {arguments['read_from']!r}")
    rand_augment_op(arguments["rand_augment"])  # a malformed spec fails now, not in a worker
    if not 0 < arguments["crop_pct"] <= 1:
        raise ValueError(f"data.crop_pct must be in (0, 1], got {arguments['crop_pct']}")


class ImageDataModule(LightningDataModule):
    """Still images for training and single-view evaluation of one prepared ImageNet-layout folder.

    Train batches: `video` float (B, 3, 1, H, W), `label`, `index`, `decode_failures` (scalar). Val/test
    batches: `video` (B, 1, 3, 1, H, W), `label`, `index` (row in the split), `failed_index` (rows that failed to
    decode and were skipped), `failed_reason`. The test split is val (ImageNet has no public test labels).
    Mixup/CutMix and label smoothing are the model's (`VideoClassifier.mixing`), not the loader's. The defaults
    are the DeiT / UniFormer ImageNet recipe.

    Args:
        root: the prepared folder (classes.txt, train/, val/); null: $DATA_ROOT/<dataset>, else ./data/<dataset>.
        dataset: the dataset's name: the default folder.
        read_from: "folder" (the class folders, one file per image) or "shards" (the tar shards in
            <root>/shards written by `python -m data_prep.image_shards`: sequential reads, for network storage).
        crop_size: side of the square images the model sees.
        crop_pct: evaluation keeps this share of the image: short side resized to round(crop_size / crop_pct),
            then a centre crop of crop_size.
        crop_scale: area range of the training RandomResizedCrop, as fractions of the image.
        rand_augment: RandAugment as "m<magnitude>-n<ops>" (magnitude out of 10), or null for none.
        erase_prob: probability of random erasing of each training image.
        batch_size: training images per step and device.
        eval_batch_size: images per evaluation step.
        num_workers: DataLoader worker processes per device.
        pin_memory: pin loader batches in page-locked memory (GPU training; ignored where CUDA is absent).
        persistent_workers: keep loader workers alive between epochs.
        prefetch_factor: batches each worker loads ahead; null: torch's default (2).
        max_failure_rate: training stops when more than this fraction of an epoch's images fail to decode.
        limit: use only the first N images of each split (quick runs); null uses all.
        seed: seed of the shuffling and augmentation streams (a pure function of seed, epoch, position).
        mean: per-channel mean subtracted from [0, 1] RGB values.
        std: per-channel standard deviation the values are divided by.
        shuffle_buffer: samples each loader worker holds to shuffle the shard stream (read_from: shards).
    """

    def __init__(
        self,
        root: str | None = None,
        dataset: str = "imagenet",
        read_from: Literal["folder", "shards"] = "folder",
        crop_size: PositiveInt = 224,
        crop_pct: CropFraction = 0.875,
        crop_scale: tuple[ClosedUnitInterval, ClosedUnitInterval] = (0.08, 1.0),
        rand_augment: str | None = "m9-n2",
        erase_prob: ClosedUnitInterval = 0.25,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 128,
        num_workers: NonNegativeInt = 8,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: PositiveInt | None = None,
        max_failure_rate: ClosedUnitInterval = 0.01,
        limit: PositiveInt | None = None,
        seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = IMAGENET_STD,
        shuffle_buffer: PositiveInt = 1000,
    ) -> None:
        super().__init__()
        _check_values(locals())
        self.dataset = dataset
        self.root = Path(root) if root else default_root(dataset)
        self.read_from = read_from
        self.crop_size = int(crop_size)
        self.crop_pct = float(crop_pct)
        self.crop_scale = tuple(float(v) for v in crop_scale)
        self.rand_augment = rand_augment
        self.erase_prob = float(erase_prob)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.max_failure_rate = float(max_failure_rate)
        self.limit = limit
        self.seed = int(seed)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.shuffle_buffer = int(shuffle_buffer)
        self.datasets: dict[str, ImageDataset] = {}
        self._classes: list[str] | None = None
        self._lists: dict[str, list[ImageEntry]] = {}
        self._fingerprint: str | None = None
        self._warned_empty_val = False
        # decode failures: the counts, the rate limit and the failed_<split>.txt lists (src/data/failures.py)
        self.failures = DecodeFailureLog(
            self.max_failure_rate,
            self.root,
            unit="images",
            doctor=f"python -m data_prep.image_doctor {self.root}",
        )
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------- the folder
    def _require_root(self) -> None:
        if not (self.root / "classes.txt").is_file():
            raise missing_root_error((self.root / "classes.txt").resolve())

    @property
    def class_names(self) -> list[str]:
        """The wnids of classes.txt, label = line number."""
        if self._classes is None:
            self._require_root()
            self._classes = read_classes(self.root)
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of classes in classes.txt."""
        return len(self.class_names)

    @property
    def fingerprint(self) -> str:
        """Hash of classes.txt and the train and val file lists (shards.json keeps the folder's value)."""
        if self._fingerprint is None:
            if self.read_from == "shards":
                self._require_root()
                self._fingerprint = str(read_shards_meta(self.root).get("fingerprint", ""))
            else:
                self._fingerprint = folder_fingerprint(
                    self.root, self.class_names, {s: self._all(s) for s in SPLITS}
                )
        return self._fingerprint

    def _all(self, split: str) -> list[ImageEntry]:
        """Every image of the split on disk (before quarantine and limit), listed once."""
        if split not in self._lists:
            self._lists[split] = list_split(self.root, split, self.class_names)
        return self._lists[split]

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    # ------------------------------------------------------------------------------------ datasets
    def _transform(self, split: str):
        if split == "train":
            return ImageTrainTransform(
                self.crop_size,
                scale=self.crop_scale,
                rand_augment=self.rand_augment,
                erase_prob=self.erase_prob,
                mean=self.mean,
                std=self.std,
            )
        return ImageEvalTransform(self.crop_size, self.crop_pct, mean=self.mean, std=self.std)

    def _build(self, split: str) -> ImageDataset:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; ImageDataModule has train, val and test (= val)")
        self._require_root()
        file_split = "train" if split == "train" else "val"
        mode = "train" if split == "train" else "eval"
        if self.read_from == "shards":
            rank, world = self._rank_world()
            shards = shard_set(self.root, file_split, read_shards_meta(self.root), self.limit)
            return ImageShardDataset(
                shards,
                mode=mode,
                transform=self._transform(split),
                num_classes=self.num_classes,
                batch_size=self.batch_size if mode == "train" else self.eval_batch_size,
                rank=rank,
                world_size=world,
                seed=self.seed,
                shuffle_buffer=self.shuffle_buffer,
            )
        entries = select(
            self._all(file_split), read_quarantine(self.root), self.limit, self.root / file_split
        )
        return ImageFolderDataset(entries, mode=mode, transform=self._transform(split), seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (fit: train + val; validate: val; test: val as test)."""
        if stage == "predict":
            self.predict_dataloader()  # raises the explanation
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}
        for split in wanted.get(stage, ["train", "val", "test"]) if stage else ["train", "val", "test"]:
            self.split_dataset(split)

    def split_dataset(self, split: str) -> ImageDataset:
        """The dataset of `split` ("train", "val" or "test"), built on first use (a shard dataset again when
        the rank or world size changed since, e.g. `setup` called before the trainer was attached)."""
        dataset = self.datasets.get(split)
        stale = (
            isinstance(dataset, ImageShardDataset)
            and (dataset.rank, dataset.world_size) != self._rank_world()
        )
        if dataset is None or stale:
            self.datasets[split] = self._build(split)
        return self.datasets[split]

    # ------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader | EpochLoader:
        """Shuffled, rank-sharded images, each seeded from (seed, epoch, position); the same number of
        batches on every rank."""
        dataset = self.split_dataset("train")
        if isinstance(dataset, ImageShardDataset):
            return EpochLoader(make_loader(self, dataset, batch_size=self.batch_size, collate=collate_train))
        rank, world = self._rank_world()
        sampler = TrainSampler(len(dataset), rank=rank, world_size=world, seed=self.seed)
        drop_last = len(sampler) > self.batch_size
        return make_loader(
            self,
            dataset,
            sampler=sampler,
            batch_size=self.batch_size,
            collate=collate_train,
            drop_last=drop_last,
        )

    def _eval_loader(self, split: str) -> DataLoader | list:
        dataset = self.split_dataset(split)
        size = dataset.shards.total if isinstance(dataset, ImageShardDataset) else len(dataset)
        if size == 0:
            where = self.root / ("shards" if self.read_from == "shards" else "val")
            fitting = self.trainer is not None and self.trainer.state.fn == "fit"
            if not (split == "val" and fitting):
                raise IndexContractError(
                    f"{where} holds no val images (after data.limit and quarantine.txt): nothing to evaluate"
                )
            if not self._warned_empty_val:
                self._warned_empty_val = True
                log.warning("%s holds no val images: training runs without validation", where)
            return []
        collate = EvalCollate((1, 3, 1, self.crop_size, self.crop_size))
        if isinstance(dataset, ImageShardDataset):
            return make_loader(self, dataset, batch_size=self.eval_batch_size, collate=collate)
        rank, world = self._rank_world()
        sampler = EvalSampler(len(dataset), rank=rank, world_size=world)
        return make_loader(self, dataset, sampler=sampler, batch_size=self.eval_batch_size, collate=collate)

    def val_dataloader(self) -> DataLoader | list:
        """One centre view of each val image; a contiguous shard per rank, no padding, no duplicates."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """The val split again (ImageNet's test labels are not public)."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        raise NotImplementedError(
            "ImageDataModule does not predict: prediction is for video checkpoints. Predict with the "
            "VideoDataModule (a video config) or load the model in Python and call it on (B, 3, 1, H, W) images"
        )

    # ------------------------------------------------------------------------------ failure report
    def _eval_total(self, dataset: ImageDataset, rank: int, world: int) -> int:
        if isinstance(dataset, ImageShardDataset):
            return dataset.eval_total()
        return EvalSampler(len(dataset), rank=rank, world_size=world).num_videos

    def train_images_per_rank(self) -> int:
        """Training images one rank sees per epoch: the base of `max_failure_rate`."""
        dataset = self.split_dataset("train")
        if isinstance(dataset, ImageShardDataset):
            return len(dataset)
        return DecodeFailureLog.shard_size(len(dataset), self._rank_world()[1])

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Hand each train/val/test batch's decode failures to `self.failures` (src/data/failures.py)."""
        trainer = self.trainer
        if trainer is None or not isinstance(batch, dict):
            return batch
        rank, world = self._rank_world()
        if trainer.training and "decode_failures" in batch:
            shard = self.train_images_per_rank()
            self.failures.count_train(int(batch["decode_failures"]), trainer.current_epoch, rank, shard)
        elif (trainer.validating or trainer.testing) and "failed_index" in batch:
            split = "val" if trainer.validating else "test"
            dataset = self.split_dataset(split)
            self.failures.track_eval(
                split,
                batch,
                path_of=dataset.path_of,
                shard_total=lambda: self._eval_total(dataset, rank, world),
                rank_world=(rank, world),
                key=(
                    trainer.sanity_checking,
                    trainer.current_epoch,
                    trainer.global_step,
                    id(trainer.state.fn),
                ),
            )
        return batch
