"""`VideoDataModule`: train/val/test/predict loaders for every dataset prepared to the index contract.

Every argument has one concrete value: a dataset's recipe is the `data:` section of `configs/<dataset>.yaml`
(nothing is filled in behind the config's back), so the saved config.yaml shows each value that ran. The
module builds its own distributed samplers (run the Trainer with `use_distributed_sampler=False`), counts
decode failures through its `failures` (`DecodeFailureLog`, src/data/failures.py: raising only above
`max_failure_rate` of an epoch; per evaluation "evaluated N of M videos", the failed ones written to a file).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from src.data.catalog import default_root, prepare_hint
from src.data.datasets import EvalCollate, VideoClipDataset, collate_train, predict_entries
from src.data.decoding import decord_used_in_this_process
from src.data.decoding.torchcodec_reader import INSTALL_HINT, torchcodec_available
from src.data.distributed import EvalSampler, TrainSampler
from src.data.failures import DecodeFailureLog
from src.data.index import IndexContractError, read_classes, read_fingerprint, read_split
from src.data.protocol import EvalProtocol
from src.data.sampling import ClipSampler
from src.data.transforms import MEAN, STD, FlipPolicy, TrainTransform, normalize_views, seeded
from src.hang_guard import forget_wakeup_fd

log = logging.getLogger("lightning.pytorch").getChild("data")


POSITIVE = (
    "num_frames",
    "sampling_rate",
    "crop_size",
    "batch_size",
    "num_repeats",
    "decode_timeout",
    "limit",
    "prefetch_factor",
    "eval_batch_size",
)


def _check_ranges(arguments: dict) -> None:
    """A value outside its range is an error naming the key (the CLI checks the types at parse time)."""
    for name in POSITIVE:
        value = arguments.get(name)
        if value is not None and not value > 0:
            raise ValueError(f"data.{name} must be > 0, got {value}")
    if arguments["num_workers"] < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {arguments['num_workers']}")
    for name in ("max_failure_rate", "erase_prob"):
        if not 0 <= arguments[name] <= 1:
            raise ValueError(f"data.{name} must be in [0, 1], got {arguments[name]}")


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding and augmentation per worker; do not oversubscribe the cores
    forget_wakeup_fd()  # a forked worker must not report its own signals to the parent's hang guard
    # SIGTERM reaches every process of a job (scancel, torchrun, `kill -- -PGID`). A worker that died of it
    # made torch raise "DataLoader worker killed" inside the trainer, before Lightning could stop cleanly and
    # save last.ckpt. Workers ignore it: their parent shuts them down, and they exit when it dies.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# what loader workers unpickle (datasets, collates, `worker_init`), imported once by the forkserver before it
# starts (`make_loader`; decord is imported only when used, so its threads are not there): each worker then forks
# with them loaded instead of importing Lightning and the data code again (~2 s per loader on 2 cores). "__main__"
# first, as in Python's own default: a worker does not import the main module (e.g. src.cli) again either.
FORKSERVER_PRELOAD = ["__main__", "torch", "torchvision", "src.data.datamodule", "src.data.images"]


def make_loader(
    module: LightningDataModule, dataset, *, sampler=None, batch_size: int, collate, drop_last: bool = False
) -> DataLoader:
    """The DataLoader of both DataModules, with `module`'s `num_workers`, `pin_memory`, `persistent_workers` and
    `prefetch_factor`: `worker_init` in each worker, pinned memory only where CUDA is, and workers forked from this
    process unless it has decoded with decord (e.g. a 0-worker loader ran first): decord's threads then deadlock
    forked children, so workers start from a clean forkserver."""
    num_workers = module.num_workers
    context = None
    if num_workers > 0 and decord_used_in_this_process():
        context = multiprocessing.get_context("forkserver")
        # modules the forkserver imports once (before it starts; decord is imported only when used): each worker
        # then forks with them loaded instead of importing torch and the data code again
        context.set_forkserver_preload(FORKSERVER_PRELOAD)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=module.pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        worker_init_fn=worker_init if num_workers > 0 else None,
        persistent_workers=module.persistent_workers and num_workers > 0,
        multiprocessing_context=context,
        prefetch_factor=module.prefetch_factor if num_workers > 0 else None,
    )


class VideoDataModule(LightningDataModule):
    """Video clips for training and multi-view evaluation of one prepared dataset.

    Train batches: `video` float (B*num_repeats, 3, T, H, W), `label`, `index`, `decode_failures` (scalar);
    with device augmentation the loader gives uint8 crops and `aug_seed`, and `on_after_batch_transfer`
    turns them into the same float clips on the device.
    Val/test batches: `video` (B, V, 3, T, H, W) with V = clips x crops of each video, `label`, `index` (row in
    the split), `failed_index` (rows that failed to decode and were skipped), `failed_reason`.
    Predict batches: `video` (B, V, 3, T, H, W), `path`. `eval_protocol` is what checkpoints store so that a
    model can be used without this module. The defaults are the Kinetics-style recipe of configs/custom.yaml.

    Args:
        root: the index folder (classes.txt, split CSVs); null: $DATA_ROOT/<dataset>, else ./data/<dataset>.
        dataset: the dataset's name: the default index folder and the `make prepare-*` hint of errors.
        num_frames: frames per clip.
        sampling: "dense": num_frames frames sampling_rate apart (random start in training, clips spread
            over the video in test); "segment": one frame from each of num_frames equal segments (TSN).
        sampling_rate: frame stride of dense sampling; segment sampling does not use it.
        crop_size: side of the square clips the model sees.
        test_views: [temporal clips, spatial crops (1 centre or 3 along the long side)] per evaluated video.
        flip: horizontal flip in training: "on" (p = 0.5), "off", or "swap" (flip and exchange the labels of
            classes whose names mirror each other, "left" <-> "right").
        batch_size: training clips per step and device.
        num_workers: DataLoader worker processes per device.
        backend: video decoder tried first: "decord" (default), "pyav" (the same frames; faster on H.264,
            see BENCHMARKS.md "Decoders"), or "torchcodec" (the [torchcodec] extra and FFmpeg's libraries);
            after two failures the other of decord / pyav is tried (pyav after torchcodec).
        num_repeats: augmented copies of each decoded training video in a batch (repeated augmentation).
        max_failure_rate: training stops when more than this fraction of an epoch's videos fail to decode.
        decode_timeout: seconds after which a probe or decode is abandoned as failed; null waits for ever.
        limit: use only the first N rows of each split (quick runs); null uses all.
        predict_path: a video, a JPEG-frame folder, a folder of videos, or a .txt/.lst/.list file of paths.
        train_crop: "random_resized" (RandomResizedCrop with crop_scale) or "jitter" (short side to a random
            size in short_side_jitter, then a random crop).
        crop_scale: area range of the random-resized crop, as fractions of the frame.
        short_side_jitter: short-side range of the "jitter" crop, in pixels.
        rand_augment: RandAugment as "m<magnitude>-n<ops>" (magnitude out of 10), or null for none.
        erase_prob: probability of random erasing of each training clip.
        seed: seed of the sampling, augmentation and shuffling streams (a pure function of seed, epoch, index).
        pin_memory: pin loader batches in page-locked memory (GPU training; ignored where CUDA is absent).
        persistent_workers: keep loader workers alive between epochs.
        prefetch_factor: batches each worker loads ahead; null: torch's default (2).
        eval_batch_size: videos per evaluation step (each with all its views).
        mean: per-channel mean subtracted from [0, 1] RGB values.
        std: per-channel standard deviation the values are divided by.
        classes: class names used instead of classes.txt where there is no index (predicting from a checkpoint
            sets them from it); where there is an index they must equal its classes.txt.
        augment_on: where RandAugment, flip, normalisation and erasing run. "cpu": in the loader workers;
            "device": on the batch once it is on the accelerator (workers only decode and crop, uint8 travels;
            the same clips for the same seed); "auto": "device" when the trainer runs on CUDA, else "cpu".
    """

    def __init__(
        self,
        root: str | None = None,
        dataset: str = "custom",
        num_frames: PositiveInt = 16,
        sampling: Literal["dense", "segment"] = "dense",
        sampling_rate: PositiveInt = 4,
        crop_size: PositiveInt = 224,
        test_views: tuple[PositiveInt, Literal[1, 3]] = (4, 1),
        flip: Literal["on", "off", "swap"] = "on",
        batch_size: PositiveInt = 8,
        num_workers: NonNegativeInt = 2,
        backend: Literal["pyav", "decord", "torchcodec"] = "decord",
        num_repeats: PositiveInt = 1,
        max_failure_rate: ClosedUnitInterval = 0.01,
        decode_timeout: PositiveFloat | None = 30.0,
        limit: PositiveInt | None = None,
        predict_path: str | None = None,
        train_crop: Literal["random_resized", "jitter"] = "random_resized",
        crop_scale: tuple[ClosedUnitInterval, ClosedUnitInterval] = (0.08, 1.0),
        short_side_jitter: tuple[PositiveInt, PositiveInt] = (256, 320),
        rand_augment: str | None = "m7-n4",
        erase_prob: ClosedUnitInterval = 0.25,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: PositiveInt | None = None,
        eval_batch_size: PositiveInt = 8,
        mean: tuple[float, float, float] = MEAN,
        std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = STD,
        classes: list[str] | None = None,
        augment_on: Literal["auto", "cpu", "device"] = "auto",
    ) -> None:
        super().__init__()
        _check_ranges(locals())  # the CLI refuses these at parse time; this covers calls from Python
        self.dataset = dataset
        self.root = Path(root) if root else default_root(dataset)
        self.num_frames = num_frames
        self.sampling = sampling
        self.sampling_rate = sampling_rate
        self.crop_size = crop_size
        self.test_views = tuple(test_views)
        self.flip = flip
        self.train_crop = train_crop
        self.crop_scale = tuple(crop_scale)
        self.short_side_jitter = tuple(short_side_jitter)
        self.rand_augment = rand_augment
        self.erase_prob = erase_prob
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.backend = backend
        self.num_repeats = num_repeats
        self.max_failure_rate = max_failure_rate
        self.decode_timeout = decode_timeout
        self.limit = limit
        self.predict_path = predict_path
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment_on = augment_on
        self._warned_empty_val = False
        self.clip_sampler = ClipSampler(self.sampling, self.num_frames, self.sampling_rate)  # validates
        if len(self.test_views) != 2 or self.test_views[1] not in (1, 3) or self.test_views[0] < 1:
            raise ValueError(
                f"test_views must be [clips, crops] with crops 1 or 3, got {list(self.test_views)}"
            )
        FlipPolicy(self.flip)  # validates the policy name early
        if backend == "torchcodec":  # refused now, not as a failure of every video hours into a run
            reason = torchcodec_available()
            if reason:
                raise ValueError(f"data.backend=torchcodec cannot run here: {reason}. {INSTALL_HINT}")
        self.datasets: dict[str, VideoClipDataset] = {}
        self._classes: list[str] | None = list(classes) if classes is not None else None
        self._classes_given = classes is not None
        # decode failures: the counts, the rate limit and the failed_<split>.txt lists (src/data/failures.py)
        self.failures = DecodeFailureLog(max_failure_rate, self.root)
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------- index access
    def _require_index(self) -> None:
        if not (self.root / "classes.txt").is_file():
            raise IndexContractError(
                f"no prepared {self.dataset!r} index at {self.root.resolve()} (classes.txt missing). Run `make "
                f"{prepare_hint(self.dataset)} DATA_ROOT={self.root.parent}` or point data.root at a prepared index folder."
            )

    @property
    def class_names(self) -> list[str]:
        """Class names (label = position): `data.classes` when given, else the index's classes.txt."""
        if self._classes is None:
            self._require_index()
            self._classes = read_classes(self.root)
        return self._classes

    def _check_given_classes(self) -> None:
        """Labels in the CSVs index classes.txt: given class names that disagree with it would rename them."""
        if self._classes_given and read_classes(self.root) != self._classes:
            raise IndexContractError(
                f"data.classes ({len(self._classes)} names) differ from {self.root / 'classes.txt'}; "
                "the CSV labels index classes.txt: drop data.classes or fix the index"
            )

    @property
    def eval_protocol(self) -> EvalProtocol:
        """How this module makes evaluation clips, as stored in checkpoints for prediction and export."""
        return EvalProtocol(
            self.num_frames,
            self.sampling,
            self.sampling_rate,
            self.crop_size,
            self.test_views,
            self.mean,
            self.std,
        )

    @property
    def num_classes(self) -> int:
        """Number of classes in the index."""
        return len(self.class_names)

    @property
    def fingerprint(self) -> str:
        """The index fingerprint (hash of classes.txt and the CSVs): manifest.json's, or computed the same way
        for a hand-made index without one; "" when there is no index (predicting with given class names)."""
        if self._classes_given and not (self.root / "classes.txt").is_file():
            return ""
        self._require_index()
        return read_fingerprint(self.root)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    # ------------------------------------------------------------------------------------ datasets
    def _eval_split_name(self, stage_split: str) -> str:
        if stage_split == "test" and not (self.root / "test.csv").is_file():
            log.info("%s has no test.csv: testing on the val split", self.root)
            return "val"
        return stage_split

    def _build(self, split: str) -> VideoClipDataset:
        clips = self.test_views[0]
        common = dict(
            sampler=self.clip_sampler,
            backend=self.backend,
            decode_timeout=self.decode_timeout,
            seed=self.seed,
        )
        if split == "predict":
            if not self.predict_path:
                raise ValueError(
                    "set data.predict_path (a video, a frame folder or a folder of videos) to predict"
                )
            entries = predict_entries(Path(self.predict_path))
            return VideoClipDataset(
                entries,
                mode="predict",
                eval_transform=self.eval_protocol.transform(normalize=not self.augments_on_device),
                num_clips=clips,
                **common,
            )
        self._require_index()
        self._check_given_classes()
        file_split = self._eval_split_name(split) if split != "train" else "train"
        entries, _ = read_split(self.root, file_split, self.num_classes, limit=self.limit)
        if split == "train":
            transform = TrainTransform(
                self.crop_size,
                crop=self.train_crop,
                scale=self.crop_scale,
                jitter=self.short_side_jitter,
                rand_augment=self.rand_augment,
                erase_prob=self.erase_prob,
                flip=FlipPolicy(self.flip, self.class_names),
                mean=self.mean,
                std=self.std,
            )
            return VideoClipDataset(
                entries,
                mode="train",
                train_transform=transform,
                num_repeats=self.num_repeats,
                augment_on_device=self.augments_on_device,
                **common,
            )
        return VideoClipDataset(
            entries,
            mode="eval",
            eval_transform=self.eval_protocol.transform(normalize=not self.augments_on_device),
            num_clips=clips,
            **common,
        )

    def setup(self, stage: str | None = None) -> None:
        """Read the index and build the datasets the stage needs (fit: train + val; validate; test; predict)."""
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        for split in wanted.get(stage, ["train", "val", "test"]) if stage else ["train", "val", "test"]:
            if split not in self.datasets:
                self.datasets[split] = self._build(split)

    def split_dataset(self, split: str) -> VideoClipDataset:
        """The dataset of `split` ("train", "val", "test" or "predict"), built on first use."""
        if split not in self.datasets:
            self.datasets[split] = self._build(split)
        return self.datasets[split]

    # ------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled, rank-sharded clips; each sample seeded from (seed, epoch, position)."""
        dataset = self.split_dataset("train")
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

    def _eval_loader(self, split: str, predict: bool = False) -> DataLoader | list:
        dataset = self.split_dataset(split)
        if len(dataset) == 0 and not predict:
            csv_file = self.root / f"{self._eval_split_name(split)}.csv"
            fitting = self.trainer is not None and self.trainer.state.fn == "fit"
            if not (split == "val" and fitting):
                raise IndexContractError(
                    f"{csv_file} holds no videos (after data.limit and quarantine.txt): nothing to evaluate. "
                    "Prepare the split again, or check the quarantine list"
                )
            if not self._warned_empty_val:
                self._warned_empty_val = True
                log.warning(
                    "%s holds no videos: training runs without validation (no val metrics, no best "
                    "checkpoint; last.ckpt is still saved after every epoch)",
                    csv_file,
                )
            return []
        rank, world = self._rank_world()
        clips, crops = self.test_views
        view_shape = (clips * crops, 3, self.num_frames, self.crop_size, self.crop_size)
        sampler = EvalSampler(len(dataset), rank=rank, world_size=world)
        collate = EvalCollate(view_shape, predict=predict)
        return make_loader(self, dataset, sampler=sampler, batch_size=self.eval_batch_size, collate=collate)

    def val_dataloader(self) -> DataLoader:
        """All views of each val video together; a contiguous shard per rank, no padding."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """All views of each test video together (val split when the index has no test.csv)."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """All views of each video under `predict_path`, with its path."""
        return self._eval_loader("predict", predict=True)

    # ------------------------------------------------------------------------------ device augmentation
    @property
    def augments_on_device(self) -> bool:
        """Whether the loaders hand over uint8 clips that `on_after_batch_transfer` finishes on the device:
        `augment_on` "device", or "auto" with a trainer on CUDA (fixed when the datasets are built)."""
        if self.augment_on == "auto":
            trainer = self.trainer
            return trainer is not None and trainer.strategy.root_device.type == "cuda"
        return self.augment_on == "device"

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Finish the uint8 batches of device augmentation where they now are (see `finish_batch`)."""
        return self.finish_batch(batch) if isinstance(batch, dict) else batch

    def finish_batch(self, batch: dict) -> dict:
        """uint8 train crops -> RandAugment, flip (labels swapped), normalise, erase, one seeded draw per clip,
        exactly the CPU path's ops and draws; uint8 eval views -> normalised. Float batches pass unchanged."""
        video = batch.get("video")
        if not isinstance(video, torch.Tensor) or video.dtype != torch.uint8:
            return batch
        if "aug_seed" not in batch:
            return {**batch, "video": normalize_views(video, self.mean, self.std)}
        transform = self.split_dataset("train").train_transform
        clips, labels = [], []
        for clip, label, seed in zip(video, batch["label"].tolist(), batch["aug_seed"].tolist()):
            with seeded(seed):
                clip, label = transform.appearance(clip, label)
            clips.append(clip)
            labels.append(label)
        finished = {key: value for key, value in batch.items() if key != "aug_seed"}
        finished["video"] = torch.stack(clips)
        finished["label"] = torch.tensor(labels, dtype=batch["label"].dtype, device=batch["label"].device)
        return finished

    # ------------------------------------------------------------------------------ failure report
    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Hand each train/val/test batch's decode failures to `self.failures` (src/data/failures.py)."""
        trainer = self.trainer
        if trainer is None or not isinstance(batch, dict):
            return batch
        rank, world = self._rank_world()
        if trainer.training and "decode_failures" in batch:
            shard = DecodeFailureLog.shard_size(len(self.split_dataset("train")), world)
            self.failures.count_train(int(batch["decode_failures"]), trainer.current_epoch, rank, shard)
        elif (trainer.validating or trainer.testing) and "failed_index" in batch:
            split = "val" if trainer.validating else "test"
            dataset = self.split_dataset(split)
            self.failures.track_eval(
                split,
                batch,
                path_of=lambda row: dataset.entries[row].path,
                shard_total=lambda: EvalSampler(len(dataset), rank=rank, world_size=world).num_videos,
                rank_world=(rank, world),
                key=(
                    trainer.sanity_checking,
                    trainer.current_epoch,
                    trainer.global_step,
                    id(trainer.state.fn),
                ),
            )
        return batch
