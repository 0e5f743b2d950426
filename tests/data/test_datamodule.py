"""VideoDataModule over a real index: recipes, batch contract, determinism, failure policy, quarantine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from src.data.catalog import PREPARE_TARGETS, config_data
from src.data.datamodule import VideoDataModule
from src.data.failures import DecodeFailureRateError
from src.data.index import IndexContractError, IndexRow, write_index
from tests.data.conftest import build_index, release_fifos
from tests.helpers.videos import frame_index_of, write_test_video

# the synthetic recipe (segment sampling, one view, no flip or augmentation), smaller
TINY = dict(
    dataset="synthetic",
    num_frames=4,
    sampling="segment",
    crop_size=32,
    test_views=(1, 1),
    flip="off",
    crop_scale=(0.7, 1.0),
    rand_augment=None,
    erase_prob=0.0,
    batch_size=3,
    eval_batch_size=3,
    num_workers=0,
)


class TinyClassifier(LightningModule):
    """A real (tiny) LightningModule: linear head on the clip's mean colour; records what it was fed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        self.seen: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        self.failed: dict[str, list[int]] = {"val": [], "test": []}
        self.decode_failures = 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.decode_failures += int(batch["decode_failures"])
        self.seen["train"] += batch["index"].tolist()
        return F.cross_entropy(self.head(batch["video"].mean(dim=(2, 3, 4))), batch["label"])

    def _eval(self, batch: dict, split: str) -> None:
        self.seen[split] += batch["index"].tolist()
        self.failed[split] += batch["failed_index"].tolist()
        if len(batch["index"]):
            scores = self.head(batch["video"].mean(dim=(3, 4, 5))).softmax(-1).mean(1)  # average over views
            self.log(
                f"{split}_acc", (scores.argmax(-1) == batch["label"]).float().mean(), batch_size=len(scores)
            )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_trainer(tmp_path: Path, **kwargs) -> Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return Trainer(**{**options, **kwargs})


def test_absent_index_names_the_folder_and_the_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "nowhere"))
    dm = VideoDataModule(dataset="ssv2")
    assert dm.root == tmp_path / "nowhere" / "ssv2"
    with pytest.raises(IndexContractError, match=r"nowhere/ssv2.*make prepare-ssv2"):
        _ = dm.num_classes
    monkeypatch.delenv("DATA_ROOT")
    assert VideoDataModule(dataset="gym99").root == Path("data") / "gym99"


def test_the_recipe_is_the_arguments_nothing_is_filled_in_behind_them(tmp_path: Path) -> None:
    """Every argument has one concrete default (the Kinetics-style recipe) and a dataset's recipe is the data
    section of its config, applied as written: the DataModule reproduces exactly what config.yaml records."""
    default = VideoDataModule()
    assert (
        default.sampling,
        default.num_frames,
        default.sampling_rate,
        default.crop_size,
        default.test_views,
        default.flip,
        default.rand_augment,
        default.erase_prob,
    ) == ("dense", 16, 4, 224, (4, 1), "on", "m7-n4", 0.25)
    synthetic = config_data("synthetic")
    dm = VideoDataModule(**synthetic)
    assert (
        dm.dataset,
        dm.sampling,
        dm.num_frames,
        dm.crop_size,
        dm.flip,
        dm.rand_augment,
        dm.erase_prob,
        dm.crop_scale,
    ) == ("synthetic", "segment", 8, 32, "off", None, 0.0, (0.7, 1.0))
    assert dm.eval_protocol.test_views == (1, 1)
    assert set(PREPARE_TARGETS) >= {
        "k400",
        "ssv1",
        "ssv2",
        "diving48",
        "gym99",
        "gym288",
        "synthetic",
        "custom",
    }
    with pytest.raises(IndexContractError, match=r"make prepare-<dataset>"):
        _ = VideoDataModule(root=str(tmp_path / "none"), dataset="ucf101").class_names
    with pytest.raises(ValueError, match="unknown flip policy 'mirror'"):
        VideoDataModule(flip="mirror")
    with pytest.raises(ValueError, match="data.erase_prob must be in"):
        VideoDataModule(erase_prob=1.5)


def test_batches_follow_the_contract(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=4, val=3)
    dm = VideoDataModule(**{**TINY, **dict(root=str(root), num_repeats=2, test_views=(2, 3))})
    assert dm.num_classes == 3 and dm.class_names[1] == "moving right" and len(dm.fingerprint) == 16
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["video"].shape == (6, 3, 4, 32, 32) and train["video"].dtype == torch.float32
    assert train["label"].shape == (6,) and train["index"].tolist()[0::2] == train["index"].tolist()[1::2]
    assert not torch.equal(train["video"][0], train["video"][1]), "repeats are independent augmentations"
    assert train["decode_failures"].shape == () and int(train["decode_failures"]) == 0
    val = next(iter(dm.val_dataloader()))
    assert val["video"].shape == (3, 6, 3, 4, 32, 32)  # all 2 clips x 3 crops of each video together
    assert val["index"].tolist() == [0, 1, 2] and val["label"].tolist() == [0, 1, 2]
    assert val["failed_index"].tolist() == []


def test_two_workers_produce_the_same_clips_as_zero_workers(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=5, val=1)
    batches = {}
    # decord in both: the 0-worker run decodes with decord in this process first, after which forked
    # workers would deadlock; the DataModule must then start its workers from a forkserver.
    for workers in (0, 2):
        options = {**TINY, "num_workers": workers, "rand_augment": "m7-n4", "backend": "decord"}
        dm = VideoDataModule(root=str(root), **options, seed=3)
        loader = dm.train_dataloader()
        if workers:
            assert loader.multiprocessing_context.get_start_method() == "forkserver"
        loader.sampler.set_epoch(1)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 1
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])


def test_training_survives_broken_videos_and_counts_every_failure(tmp_path: Path) -> None:
    kinds = ["zero", "garbage", "truncated", "missing"]
    root = build_index(tmp_path / "idx", train=6, val=2, broken={"train": kinds})
    dm = VideoDataModule(**{**TINY, **dict(root=str(root), max_failure_rate=1.0)})
    model = TinyClassifier(dm.num_classes)
    tiny_trainer(tmp_path, max_epochs=2).fit(model, datamodule=dm)
    bad_rows = set(range(6, 10))
    assert not bad_rows & set(model.seen["train"]), "broken videos are replaced by good ones"
    # every bad row is visited once per epoch and fails at least once; substitutes can fail again
    assert model.decode_failures >= 2 * len(bad_rows)
    assert dm.failures.train_total == model.decode_failures
    dataset = dm.datasets["train"]
    for row in bad_rows:
        item = dataset[(row, 123)]
        assert item["decode_failures"] >= 1 and item["index"] < 6


def test_training_stops_with_a_clear_error_above_the_failure_rate(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=3, val=1, broken={"train": ["zero"]})
    dm = VideoDataModule(root=str(root), max_failure_rate=0.01, **{**TINY, "batch_size": 2})
    with pytest.raises(DecodeFailureRateError, match=r"max_failure_rate=0.01 of 4 videos.*make doctor"):
        tiny_trainer(tmp_path).fit(TinyClassifier(dm.num_classes), datamodule=dm)


def test_evaluation_skips_broken_videos_and_writes_their_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = build_index(
        tmp_path / "idx", train=1, val=1, test=5, broken={"test": ["zero", "missing", "garbage"]}
    )
    dm = VideoDataModule(**{**TINY, **dict(root=str(root))})
    dm.failures.folder = tmp_path / "failures"
    model = TinyClassifier(dm.num_classes)
    with caplog.at_level("INFO"):
        tiny_trainer(tmp_path).test(model, datamodule=dm)
    assert sorted(model.seen["test"]) == [0, 1, 2, 3, 4]
    assert sorted(model.failed["test"]) == [5, 6, 7]
    report = dm.failures.report("test")
    assert report.message().startswith("test: evaluated 5 of 8 videos; 3 failed to decode")
    assert "evaluated 5 of 8 videos" in caplog.text
    lines = (tmp_path / "failures" / "failed_test.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["5", "6", "7"]
    assert lines[0].split("\t")[1].endswith("test_bad_0_zero.mp4") and "empty" in lines[0]


def _segment_on_frames_index(root: Path) -> Path:
    """4 train / 3 val clips plus, in each split, a JPEG-frame folder row with start/end: frames have no fps,
    and the row raised TypeError inside the DataLoader worker (before any DecodeError), killing the run."""
    from tests.helpers.videos import write_test_frames

    root.mkdir(parents=True)
    write_test_frames(root / "frames_row", 12, (40, 48))
    splits = {}
    for split, count in (("train", 4), ("val", 3)):
        rows = []
        for i in range(count):
            write_test_video(root / f"{split}_{i}.mp4", 12, (40, 48), fps=25)
            rows.append(IndexRow(f"{split}_{i}.mp4", i % 3))
        splits[split] = [*rows, IndexRow("frames_row", 1, start=0.5, end=1.5)]
    write_index(root, dataset="tiny", classes=["a", "b", "c"], splits=splits, version="test")
    return root


@pytest.mark.timeout(300)
def test_any_per_row_error_goes_through_the_failure_policy_in_real_workers(tmp_path: Path) -> None:
    root = _segment_on_frames_index(tmp_path / "idx")
    dm = VideoDataModule(root=str(root), max_failure_rate=1.0, **{**TINY, "num_workers": 2})
    dm.failures.folder = tmp_path / "failures"
    model = TinyClassifier(dm.num_classes)
    tiny_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, datamodule=dm)
    assert 4 not in set(model.seen["train"]) and model.decode_failures >= 1  # substituted and counted
    assert model.failed["val"] == [3]  # skipped and listed
    (line,) = (tmp_path / "failures" / "failed_val.txt").read_text().splitlines()
    assert line.startswith("3\t") and "row 3" in line and "no frame rate" in line


def test_an_unexpected_error_in_a_transform_names_the_row(tmp_path: Path) -> None:
    from src.data.datasets import VideoClipDataset

    root = build_index(tmp_path / "idx", train=2, val=1)
    dm = VideoDataModule(**{**TINY, **dict(root=str(root))})
    dm.setup("validate")
    dataset: VideoClipDataset = dm.datasets["val"]

    def broken(frames):
        raise ValueError("a transform bug")

    dataset.eval_transform = broken
    item = dataset[0]
    assert item["failed"] and item["reason"] == "row 0: ValueError: a transform bug"


def test_a_hung_decoder_is_abandoned_after_the_timeout(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=1, val=2, broken={"val": ["hang"]})
    try:
        dm = VideoDataModule(**{**TINY, **dict(root=str(root), decode_timeout=1.0)})
        dm.setup("validate")
        started = time.monotonic()
        batch = next(iter(dm.val_dataloader()))
        assert time.monotonic() - started < 10
        assert batch["index"].tolist() == [0, 1] and batch["failed_index"].tolist() == [2]
        assert "decode_timeout=1" in batch["failed_reason"][0]
    finally:
        release_fifos(root)


def test_quarantined_videos_are_never_loaded(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=4, val=3)
    (root / "quarantine.txt").write_text("videos/val_001.mp4\tdoctor: broken\n")
    dm = VideoDataModule(**{**TINY, **dict(root=str(root))})
    dm.setup("validate")
    paths = [e.path.name for e in dm.datasets["val"].entries]
    assert paths == ["val_000.mp4", "val_002.mp4"]


def test_segment_rows_and_frame_folders_decode_the_right_frames(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    write_test_video(root / "long.mp4", 40, 48, fps=25)
    rows = [IndexRow("long.mp4", 0, start=0.4, end=1.2, num_frames=40, fps=25.0), IndexRow("long.mp4", 1)]
    write_index(root, dataset="seg", classes=["a", "b"], splits={"train": rows, "val": rows})
    dm = VideoDataModule(**{**TINY, **dict(root=str(root), crop_size=48, batch_size=2)})
    batch = next(iter(dm.val_dataloader()))
    frames = (batch["video"][:, 0] * 0.225 + 0.45).mul(255).round().clamp(0, 255).to(torch.uint8)
    decoded = [[frame_index_of(f.permute(1, 2, 0).numpy()) for f in clip.unbind(1)] for clip in frames]
    # segment test view of 4 frames over the 20 frames 10..29; then the whole 40-frame file
    assert decoded == [[12, 17, 22, 27], [5, 15, 25, 35]]


def test_predict_yields_every_video_with_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    for name in ("a.mp4", "b.mp4"):
        write_test_video(folder / name, 8, (40, 48))
    (folder / "c.mp4").touch()
    dm = VideoDataModule(**{**TINY, **dict(root=str(tmp_path / "unused"), predict_path=str(folder))})
    batch = next(iter(dm.predict_dataloader()))
    assert [Path(p).name for p in batch["path"]] == ["a.mp4", "b.mp4"]
    assert batch["video"].shape == (2, 1, 3, 4, 32, 32)
    assert [Path(p).name for p in batch["failed_path"]] == ["c.mp4"]


def _ddp_eval_worker(rank: int, world: int, root: str, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # one thread per rank, as in a DataLoader worker
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = VideoDataModule(**{**TINY, **dict(root=root)})
        dm.setup("test")
        seen = [
            i
            for batch in dm.test_dataloader()
            for i in batch["index"].tolist() + batch["failed_index"].tolist()
        ]
        gathered: list = [None] * world
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_evaluation_scores_every_video_exactly_once(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    root = build_index(tmp_path / "idx", train=1, val=1, test=6, broken={"test": ["zero"]})  # 7 videos
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "seen.pt"
    # forkserver: one clean process imports torch once and forks both ranks; forking the pytest process
    # itself can inherit locks held by threads of earlier tests and deadlock
    mp.start_processes(
        _ddp_eval_worker, args=(2, str(root), port, str(out)), nprocs=2, start_method="forkserver"
    )
    per_rank = torch.load(out)
    assert [len(s) for s in per_rank] == [3, 4]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(7)), "each video once, no padded duplicates"


def _index_with_empty(root: Path, empty: str) -> Path:
    """2 train clips, 2 in the other evaluation split, none in `empty` ("val" or "test")."""
    root.mkdir(parents=True)
    splits = {}
    for split in ("train", "val", "test"):
        rows = []
        for i in range(0 if split == empty else 2):
            write_test_video(root / f"{split}_{i}.mp4", 12, (40, 48), fps=25)
            rows.append(IndexRow(f"{split}_{i}.mp4", i % 3))
        splits[split] = rows
    write_index(root, dataset="tiny", classes=["a", "b", "c"], splits=splits, version="test")
    return root


def test_fit_with_an_empty_validation_split_says_so_once_and_trains(tmp_path: Path, caplog) -> None:
    dm = VideoDataModule(root=str(_index_with_empty(tmp_path / "idx", "val")), **TINY)
    model = TinyClassifier(dm.num_classes)
    with caplog.at_level("WARNING"):
        tiny_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=2).fit(model, datamodule=dm)
    assert caplog.text.count("val.csv holds no videos: training runs without validation") == 1
    assert model.seen["train"] and not model.seen.get("val")


def test_testing_an_empty_split_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = _index_with_empty(tmp_path / "idx", "test")
    dm = VideoDataModule(**{**TINY, **dict(root=str(root))})
    with pytest.raises(IndexContractError, match=r"test\.csv holds no videos"):
        tiny_trainer(tmp_path).test(TinyClassifier(dm.num_classes), datamodule=dm)


@pytest.mark.parametrize("name", ["num_frames", "crop_size", "limit", "decode_timeout", "batch_size"])
def test_out_of_range_values_are_errors(name: str) -> None:
    with pytest.raises(ValueError, match=f"data.{name} must be > 0"):
        VideoDataModule(**{**TINY, name: 0})


# flip with label swap, strong RandAugment, erasing, repeats and real workers: every random part of the recipe
AUGMENTED = {
    **TINY,
    "flip": "swap",
    "rand_augment": "m9-n3",
    "erase_prob": 0.5,
    "num_repeats": 2,
    "num_workers": 2,
    "test_views": (2, 3),
}


@pytest.mark.timeout(300)
def test_device_augmentation_gives_the_cpu_path_clips_for_the_same_seed(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=8, val=3)
    loaded = {}
    for where, workers in (("cpu", 0), ("device", 2)):  # workers give the same clips (tested above)
        dm = VideoDataModule(
            root=str(root), augment_on=where, seed=5, **{**AUGMENTED, "num_workers": workers}
        )
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        loaded[where] = (dm, list(loader), list(dm.val_dataloader()))
    dm, train, val = loaded["device"]
    first = train[0]
    assert first["video"].dtype == torch.uint8 and first["video"].shape == (6, 4, 3, 32, 32)
    assert first["aug_seed"].shape == (6,) and len(set(first["aug_seed"].tolist())) == 6
    assert val[0]["video"].dtype == torch.uint8
    cpu_train, cpu_val = loaded["cpu"][1], loaded["cpu"][2]
    swapped = 0
    for cpu, raw in zip(cpu_train, train, strict=True):
        finished = dm.finish_batch(raw)
        assert "aug_seed" not in finished and finished["video"].dtype == torch.float32
        assert torch.equal(finished["video"], cpu["video"]) and torch.equal(finished["label"], cpu["label"])
        swapped += int((finished["label"] != raw["label"]).sum())
    assert swapped > 0, "some clips were flipped with their left/right label exchanged"
    for cpu, raw in zip(cpu_val, val, strict=True):
        assert torch.equal(dm.finish_batch(raw)["video"], cpu["video"])
    assert dm.finish_batch(cpu_train[0]) is cpu_train[0], "a float batch passes unchanged"


def test_auto_augments_on_the_device_only_for_a_cuda_trainer(tmp_path: Path) -> None:
    root = build_index(tmp_path / "idx", train=4, val=2)
    dm = VideoDataModule(root=str(root), **{**TINY, "rand_augment": "m7-n2"})
    assert dm.augment_on == "auto" and not dm.augments_on_device  # no trainer: the loaders finish the clips
    model = TinyClassifier(dm.num_classes)
    tiny_trainer(tmp_path).fit(model, datamodule=dm)
    assert not dm.augments_on_device and dm.datasets["train"].augment_on_device is False
    device_dm = VideoDataModule(root=str(root), **{**TINY, "rand_augment": "m7-n2", "augment_on": "device"})
    device_model = TinyClassifier(device_dm.num_classes)
    tiny_trainer(tmp_path / "device").fit(device_model, datamodule=device_dm)  # float clips reach the model
    assert device_dm.datasets["train"].augment_on_device and sorted(device_model.seen["train"]) == [0, 1, 2]


def test_an_unusable_torchcodec_backend_is_refused_when_the_datamodule_is_made(tmp_path: Path) -> None:
    """Where torchcodec or FFmpeg's libraries are missing, the refusal names the fix at once (not a decode
    failure per video); where they are there, the backend reads the same frames as the default."""
    from src.data.decoding.torchcodec_reader import torchcodec_available

    root = build_index(tmp_path / "idx", train=3, val=1)
    reason = torchcodec_available()
    if reason:
        with pytest.raises(
            ValueError, match=r"data.backend=torchcodec cannot run here.*apt-get install ffmpeg"
        ):
            VideoDataModule(root=str(root), **{**TINY, "backend": "torchcodec"})
        return
    batches = [
        next(iter(VideoDataModule(root=str(root), **{**TINY, "backend": b}).val_dataloader()))
        for b in ("torchcodec", "pyav")
    ]
    assert torch.equal(batches[0]["video"], batches[1]["video"])


def test_the_forkserver_preloads_every_module_a_loader_worker_unpickles():
    """After decord use the workers start from a forkserver; whatever a worker unpickles (worker_init, the datasets,
    the collates) must already be imported there, or every loader start re-imports Lightning and the data code
    (~2 s per loader on 2 cores, seconds per validation)."""
    import subprocess
    import sys

    from src.data import datamodule, datasets, image_datasets, images
    from src.data.datamodule import FORKSERVER_PRELOAD

    assert (
        FORKSERVER_PRELOAD[0] == "__main__"
    )  # Python's own default kept: the main module is not re-imported
    unpickled = {
        datamodule.worker_init.__module__,
        datasets.VideoClipDataset.__module__,
        datasets.EvalCollate.__module__,
        image_datasets.ImageFolderDataset.__module__,
        image_datasets.ImageShardDataset.__module__,
        images.ImageDataModule.__module__,
    }
    script = f"import sys\nfor m in {FORKSERVER_PRELOAD[1:]!r}: __import__(m)\nprint(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert all(repr(m) in loaded for m in unpickled), sorted(m for m in unpickled if repr(m) not in loaded)
    assert "'decord'" not in loaded  # decord's threads must never reach the forkserver
