"""Your own videos: `make prepare-folder` on a folder per class (and on train/val/test folders), the seeded split,
what is skipped or fails, the error messages, a hand-made index, and fine-tuning with configs/custom.yaml from a
checkpoint, then predicting a folder with the checkpoint alone."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from data_prep import folder
from data_prep.folder import FolderError, Video, draw_splits, prepare, split_counts
from tests.helpers.videos import write_test_frames, write_test_video

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["cat", "dog", "fish"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


def make_prepare(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """The real target; `-o install` because the venv stamp may lag pyproject.toml in a shared checkout."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            "install",
            "prepare-folder",
            f"PY={sys.executable}",
            "JOBS=2",
            *args,
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(index: Path, split: str) -> list[dict]:
    with open(index / f"{split}.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_classes(src: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        for i in range(n):
            write_test_video(src / cls / f"clip {i}.mp4", 8, 32)
    return src


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """3 classes x 4 mp4 (8 frames, 32x32), a JPEG-frame folder in fish, a corrupt mp4 in cat, a text file and a
    hidden file in dog, an empty class folder and a video outside any class folder."""
    src = write_classes(tmp_path_factory.mktemp("mine") / "my videos", {c: 4 for c in CLASSES})
    write_test_frames(src / "fish" / "frames 4", 8, 32)
    (src / "cat" / "broken.mp4").write_bytes(b"not a video at all")
    (src / "dog" / "notes.txt").write_text("shot in May\n")
    (src / "dog" / ".DS_Store").write_bytes(b"\0")
    (src / "empty").mkdir()
    write_test_video(src / "loose.mp4", 8, 32)
    return src


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`make prepare-folder SRC=... DATA_ROOT=...`: the index at DATA_ROOT/custom and the command's output."""
    data_root = tmp_path_factory.mktemp("data")
    result = ok(make_prepare(f"SRC={videos}", f"DATA_ROOT={data_root}"))
    return data_root / "custom", result


# ------------------------------------------------------------------------------------------- make target
@pytest.mark.slow
def test_make_prepare_folder_indexes_every_class_with_a_seeded_split(prepared, videos):
    index, result = prepared
    assert (
        index / "classes.txt"
    ).read_text().splitlines() == CLASSES  # sorted folder names; empty/ is no class
    assert (index / "videos").is_symlink() and (index / "videos").resolve() == videos.resolve()
    manifest = json.loads((index / "manifest.json").read_text())
    per_class = {c: {s: 0 for s in ("train", "val", "test")} for c in CLASSES}
    for split in ("train", "val", "test"):
        for row in rows(index, split):
            path = index / row["path"]
            assert (
                row["path"].startswith("videos/") and path.exists()
            )  # relative to the index, through the link
            assert int(row["num_frames"]) == 8  # probed and cached
            assert (row["fps"] == "") == path.is_dir()  # a JPEG-frame folder has no frame rate
            per_class[CLASSES[int(row["label"])]][split] += 1
    # 4 readable videos (cat: the corrupt one is left out) -> 2/1/1; fish has 5 (4 mp4 + a frame folder) -> 3/1/1
    assert per_class == {
        "cat": {"train": 2, "val": 1, "test": 1},
        "dog": {"train": 2, "val": 1, "test": 1},
        "fish": {"train": 3, "val": 1, "test": 1},
    }
    assert manifest["class_counts"] == per_class and manifest["counts"] == {"train": 7, "val": 3, "test": 3}
    assert manifest["dataset"] == "custom" and manifest["layout"] == "classes"
    (failure,) = manifest["failed"]["unsplit"]
    assert failure["id"] == "cat/broken.mp4" and failure["reason"].startswith("unreadable")
    assert manifest["failed_counts"]["unsplit"] == 1
    skipped = {s["id"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"dog/notes.txt", "dog/.DS_Store", "empty/", "loose.mp4"}
    assert skipped["empty/"].startswith("empty class folder") and skipped["loose.mp4"].startswith(
        "not in a class"
    )
    out = result.stdout
    assert "1 video(s) failed to probe" in out and "cat/broken.mp4" in out and "skipped 4 entries" in out
    assert "train: 7 indexed" in out

    # the same seed gives the same index (listing order and SRC's location do not matter); another seed differs
    again = prepare(videos, index.parent / "again", seed=0, workers=1, progress=False)
    assert again["fingerprint"] == manifest["fingerprint"]
    other = prepare(videos, index.parent / "other", seed=1, workers=1, progress=False)
    assert other["fingerprint"] != manifest["fingerprint"] and other["counts"] == manifest["counts"]


def test_make_prepare_folder_without_src_stops_before_running_anything(tmp_path):
    result = make_prepare(f"DATA_ROOT={tmp_path}", timeout=60)
    assert result.returncode != 0 and "set SRC to the folder of your videos" in result.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ split
@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, (0, 0)),
        (1, (0, 0)),
        (2, (1, 0)),
        (3, (1, 1)),
        (4, (1, 1)),
        (10, (1, 1)),
        (25, (3, 3)),
        (100, (10, 10)),
    ],
)
def test_split_counts_keep_a_train_video_and_give_val_and_test_one_when_they_can(n, expected):
    assert split_counts(n, 0.1, 0.1) == expected
    assert split_counts(n, 0.0, 0.0) == (0, 0)
    assert sum(split_counts(n, 0.45, 0.45)) <= max(n - 1, 0)


def test_drawn_split_ignores_listing_order_and_adding_a_video_moves_few():
    def videos(n: int, cls: str = "a") -> list[Video]:
        return [Video(f"{cls}/v{i}.mp4", Path(f"{cls}/v{i}.mp4"), cls, f"v{i}.mp4") for i in range(n)]

    def assignment(parts: dict) -> dict[str, str]:
        return {v.id: split for split, vs in parts.items() for v in vs}

    fractions = {"val": 0.1, "test": 0.1}
    base = videos(20) + videos(7, "b")
    first = assignment(draw_splits(base, fractions, seed=0))
    shuffled = base[:]
    random.Random(0).shuffle(shuffled)
    assert assignment(draw_splits(shuffled, fractions, seed=0)) == first
    assert assignment(draw_splits(base, fractions, seed=3)) != first
    for n in range(1, 30):
        before = assignment(draw_splits(videos(n) + videos(7, "b"), fractions, seed=0))
        after = assignment(draw_splits(videos(n + 1) + videos(7, "b"), fractions, seed=0))
        moved = [k for k in before if before[k] != after[k]]
        assert len(moved) <= 3 and not any(k.startswith("b/") for k in moved), (n, moved)  # the boundary ones


# ------------------------------------------------------------------------------------- layouts, errors
def test_split_folders_give_the_split_and_a_missing_test_folder_is_drawn_from_train(tmp_path, capsys):
    src = tmp_path / "src"
    write_classes(src / "train", {"a": 5, "b": 5})
    write_classes(src / "val", {"a": 1, "b": 1})
    out = tmp_path / "index"
    manifest = prepare(src, out, workers=1, progress=False)
    assert manifest["layout"] == "splits" and manifest["split_rule"]["from_folders"] == ["train", "val"]
    assert manifest["class_counts"] == {
        "a": {"train": 4, "val": 1, "test": 1},
        "b": {"train": 4, "val": 1, "test": 1},
    }
    assert all(r["path"].startswith("videos/val/") for r in rows(out, "val"))
    assert all(r["path"].startswith("videos/train/") for r in rows(out, "test"))

    # with --test-fraction 0 the run writes no test.csv (test evaluates val) and removes the earlier one
    manifest = prepare(src, out, test_fraction=0.0, workers=1, progress=False)
    assert not (out / "test.csv").exists() and manifest["counts"] == {"train": 10, "val": 2}
    assert "no test split" in capsys.readouterr().out

    write_classes(src / "val", {"c": 1})
    with pytest.raises(FolderError, match=r"class folder\(s\) c have no videos in .*train"):
        prepare(src, out, workers=1, progress=False)


def test_an_index_inside_src_or_src_inside_the_index(tmp_path):
    src = write_classes(tmp_path / "index" / "videos", {"a": 2, "b": 2})  # SRC inside OUT: rows point at it
    manifest = prepare(src, tmp_path / "index", workers=1, progress=False)
    assert not src.is_symlink() and manifest["counts"]["train"] == 2
    assert all(
        r["path"].startswith("videos/") and (tmp_path / "index" / r["path"]).is_file()
        for r in rows(tmp_path / "index", "train")
    )
    with pytest.raises(FolderError, match="lies inside SRC"):
        prepare(tmp_path / "index", tmp_path / "index" / "videos" / "a" / "out", workers=1, progress=False)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda src: None, [], "does not exist: give the folder of your videos"),
        (
            lambda src: write_test_video(src / "x.mp4", 8, 32),
            [],
            r"no class folder with videos in .*\(1 videos lie "
            "directly in it: move them into class folders\\)",
        ),
        (
            lambda src: write_classes(src, {"train": 1, "cats": 1}),
            [],
            r"mixes split folders \(train\) with other "
            r"folders \(cats\).*--layout classes",
        ),
        (lambda src: write_classes(src / "val", {"a": 1}), [], "has no train/ folder"),
        (
            lambda src: write_classes(src, {"a": 2, "b": 2}),
            ["--val-fraction", "0.6", "--test-fraction", "0.5"],
            "leave no training videos",
        ),
    ],
    ids=["missing", "no-classes", "mixed", "no-train", "fractions"],
)
def test_errors_name_the_folder_and_the_fix(tmp_path, capsys, setup, args, message):
    import re

    src = tmp_path / "src"
    setup(src)
    code = folder.main(
        ["--src", str(src), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet", *args]
    )
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err


def test_one_class_is_indexed_with_a_warning(tmp_path, caplog):
    src = write_classes(tmp_path / "src", {"walking": 3})
    manifest = prepare(src, tmp_path / "out", workers=1, progress=False)
    assert manifest["num_classes"] == 1
    assert "single class folder (walking)" in caplog.text and "did you mean" in caplog.text


# ------------------------------------------------------------------------------ links, mixed folders, names
def indexed(index: Path) -> list[tuple[Path, str, str]]:
    """(real path, class, split) of every row of every split CSV of `index`."""
    classes = (index / "classes.txt").read_text(encoding="utf-8").split("\n")
    return [
        ((index / r["path"]).resolve(), classes[int(r["label"])], split)
        for split in ("train", "val", "test")
        if (index / f"{split}.csv").is_file()
        for r in rows(index, split)
    ]


def test_a_link_into_src_never_indexes_a_video_twice_or_under_another_class(tmp_path, capsys):
    src = write_classes(tmp_path / "S", {"cat": 3, "dog": 3})
    (src / "dog" / "up").symlink_to("..")  # the case: dog/up/cat/clip 1.mp4 was labelled dog
    (src / "cat" / "again.mp4").symlink_to("clip 0.mp4")
    (src / "dog" / "kitten").symlink_to("../cat")
    (src / "cat" / "gone.mp4").symlink_to("nowhere.mp4")
    prepare(src, tmp_path / "out", workers=1, progress=False)
    found = indexed(tmp_path / "out")
    real_class = {p: p.parent.name for p, _, _ in found}
    assert sorted(p.name for p, _, _ in found) == sorted(f"clip {i}.mp4" for i in range(3) for _ in "cd")
    assert len({p for p, _, _ in found}) == 6  # each real file once, so in one split
    assert all(cls == real_class[p] for p, cls, _ in found)  # with the label of its own class folder
    out = capsys.readouterr().out
    assert "4 link(s) not followed (each real file is indexed once, in one split):" in out
    assert (
        "  dog/up -> ..: link into SRC not followed: it points at SRC itself, whose videos are each found once "
        "in their own class folder" in out
    )
    assert (
        "  cat/again.mp4 -> clip 0.mp4: link into SRC not followed: its target cat/clip 0.mp4 is indexed at "
        "its own place, with the label of its own class folder" in out
    )
    assert (
        "  dog/kitten -> ../cat: link into SRC not followed: its target cat is indexed at its own place"
        in out
    )
    assert "  cat/gone.mp4 -> nowhere.mp4: link not followed: broken, its target does not exist" in out


def test_a_link_out_of_src_is_followed_once_under_the_class_folder_holding_it(tmp_path, capsys):
    src = write_classes(tmp_path / "S", {"cat": 2, "dog": 2})
    elsewhere = write_classes(tmp_path / "elsewhere", {"pool": 1}) / "pool"
    (elsewhere / "self").symlink_to(".")  # a loop outside SRC
    (elsewhere / "src").symlink_to(src)  # and a way back into SRC
    (src / "dog" / "more").symlink_to(elsewhere)
    (src / "dog" / "zz.mp4").symlink_to(elsewhere / "clip 0.mp4")  # a second path to the same file
    (src / "cat" / "everything").symlink_to(tmp_path)  # a folder holding SRC
    manifest = prepare(src, tmp_path / "out", test_fraction=0.0, workers=1, progress=False)
    found = indexed(tmp_path / "out")
    assert len(found) == 5 and len({p for p, _, _ in found}) == 5
    assert [(cls, split) for p, cls, split in found if p == (elsewhere / "clip 0.mp4").resolve()] == [
        ("dog", "train")
    ]
    assert any(r["path"] == "videos/dog/more/clip 0.mp4" for r in rows(tmp_path / "out", "train"))
    assert manifest["links_followed"] == [{"id": "dog/more", "target": str(elsewhere.resolve())}]
    out = capsys.readouterr().out
    assert "4 link(s) not followed" in out and "followed 1 link(s) out of SRC" in out
    assert (
        f"  cat/everything -> {tmp_path}: link not followed: it points at {tmp_path.resolve()}, a folder"
        in out
    )
    assert (
        f"  dog/more/self -> .: found twice: it is {elsewhere.resolve()}, already found as dog/more/" in out
    )
    assert f"  dog/more/src -> {src}: link into SRC not followed: it points at SRC itself" in out
    assert (
        "  dog/zz.mp4 -> " in out and "already found as dog/more/clip 0.mp4 (each file is indexed once" in out
    )


def test_a_link_between_split_folders_leaves_the_video_in_its_own_split(tmp_path):
    src = tmp_path / "S"
    write_classes(src / "train", {"a": 3, "b": 3})
    write_classes(src / "test", {"a": 1, "b": 1})
    (src / "train" / "a" / "peek.mp4").symlink_to("../../test/b/clip 0.mp4")
    prepare(src, tmp_path / "out", workers=1, progress=False)
    found = indexed(tmp_path / "out")
    test_clip = (src / "test" / "b" / "clip 0.mp4").resolve()
    assert [(cls, split) for p, cls, split in found if p == test_clip] == [("b", "test")]
    assert len({p for p, _, _ in found}) == len(found) == 8


def test_a_folder_holding_videos_and_an_image_is_a_folder_of_videos(tmp_path, capsys, caplog):
    src = write_classes(tmp_path / "S", {"cat": 1, "dog": 2})
    write_test_video(src / "cat" / "session2" / "s1.mp4", 8, 32)
    write_test_video(src / "cat" / "session2" / "s2.mp4", 8, 32)
    write_test_frames(src / "cat" / "session2" / "cover", 1, 32)
    (src / "cat" / "session2" / "cover" / "00001.jpg").rename(src / "cat" / "session2" / "cover.jpg")
    (src / "cat" / "session2" / "cover").rmdir()
    write_test_frames(src / "dog" / "frames", 8, 32)  # frames only: one video
    manifest = prepare(src, tmp_path / "out", test_fraction=0.0, val_fraction=0.0, workers=1, progress=False)
    paths = sorted(r["path"] for r in rows(tmp_path / "out", "train"))
    # before: videos/cat/session2 was indexed as a 1-frame video, s1 and s2 never, and nothing was reported
    assert paths == [
        "videos/cat/clip 0.mp4",
        "videos/cat/session2/s1.mp4",
        "videos/cat/session2/s2.mp4",
        "videos/dog/clip 0.mp4",
        "videos/dog/clip 1.mp4",
        "videos/dog/frames",
    ]
    assert manifest["skipped"] == [
        {
            "id": "cat/session2/cover.jpg",
            "reason": "an image in a folder of videos (a folder holding a video is never a frame video): move "
            "it out, or put each video's frames in a folder of their own",
        }
    ]
    assert (
        "skipped 1 entries: 1 an image in a folder of videos - e.g. cat/session2/cover.jpg"
        in capsys.readouterr().out
    )
    assert (
        "1 folder(s) hold videos and images: indexed as folders of videos, their images skipped: cat/session2/"
        in (caplog.text)
    )


def test_class_folder_and_file_names_come_back_from_the_index_exactly(tmp_path):
    from src.data.index import read_classes, read_split

    names = ["$_$ price", "100% sure", 'it\'s "quoted"', "non\u00a0breaking", " padded ", "\u00a0"]
    src = write_classes(tmp_path / "S", dict.fromkeys(names, 1))
    write_test_video(src / "$_$ price" / "two\nlines.mp4", 8, 32)
    prepare(src, tmp_path / "out", val_fraction=0.0, test_fraction=0.0, workers=1, progress=False)
    classes = read_classes(tmp_path / "out")  # before: "\u00a0" was dropped, then "label 5 outside -1..4"
    assert classes == sorted(names)
    entries, _ = read_split(tmp_path / "out", "train", len(classes))
    assert sorted((e.path.parent.name, e.path.name) for e in entries) == sorted(
        [(n, "clip 0.mp4") for n in names] + [("$_$ price", "two\nlines.mp4")]
    )
    assert all(e.path.is_file() and classes[e.label] == e.path.parent.name for e in entries)

    write_classes(src, {"two\nlines": 1})
    with pytest.raises(
        FolderError, match=r"class folder '.*/S/two\\nlines': its name holds a line break; rename the folder"
    ):
        prepare(src, tmp_path / "out", workers=1, progress=False)


# ------------------------------------------------------------------------------------- recipe, config
def test_custom_recipe():
    from src.data.catalog import prepare_hint
    from src.data.datamodule import VideoDataModule
    from src.data.index import IndexContractError
    from src.models import build_model
    from src.task import BackboneConfig

    assert prepare_hint("custom").startswith("prepare-folder SRC=")
    with pytest.raises(IndexContractError, match="make prepare-folder SRC="):
        _ = VideoDataModule(root="/nonexistent/custom", dataset="custom").class_names

    config = yaml.safe_load((ROOT / "configs" / "custom.yaml").read_text())
    k400 = yaml.safe_load((ROOT / "configs" / "k400.yaml").read_text())
    assert config["data"]["dataset"] == "custom" and config["data"]["root"] is None
    assert config["trainer"]["logger"]["init_args"]["name"] == "custom"
    assert (
        config["model"]["backbone"] == k400["model"]["backbone"]
    )  # StructViT-S, as the K400 recipe trains it
    assert config["model"]["init_from"]  # a fine-tuning recipe: a missing file stops the run
    assert config["model"]["lr"] < k400["model"]["lr"]
    assert config["trainer"]["max_epochs"] < k400["trainer"]["max_epochs"]
    assert config["model"]["warmup_epochs"] < k400["model"]["warmup_epochs"]
    # Kinetics' sampling: 16 frames 4 apart (the frame spacing the K400 checkpoint learned), 4 test clips
    assert {
        k: config["data"][k] for k in ("sampling", "num_frames", "sampling_rate", "crop_size", "test_views")
    } == {k: k400["data"][k] for k in ("sampling", "num_frames", "sampling_rate", "crop_size", "test_views")}
    backbone = BackboneConfig(**config["model"]["backbone"])
    with torch.device("meta"):
        model = build_model(backbone.variant, num_classes=3, **backbone.overrides())
    assert sum(p.numel() for p in model.parameters()) > 1e7


def test_a_hand_made_index_without_manifest_trains(videos, tmp_path):
    """classes.txt and two CSVs written by hand (only path,label), no manifest.json: the DataModule reads it."""
    from src.cli import cli_main

    index = tmp_path / "handmade"
    index.mkdir()
    (index / "classes.txt").write_text("cat\ndog\n")
    train = [f"{videos}/cat/clip {i}.mp4,0" for i in range(2)] + [
        f"{videos}/dog/clip {i}.mp4,1" for i in range(2)
    ]
    (index / "train.csv").write_text("path,label\n" + "\n".join(train) + "\n")
    shutil.copy(videos / "dog" / "clip 3.mp4", index / "d3.mp4")  # a path relative to the index folder
    (index / "val.csv").write_text(f"path,label\n{videos}/cat/clip 3.mp4,0\nd3.mp4,1\n")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli = cli_main(
            [
                "fit",
                "--config",
                "configs/custom.yaml",
                "--config",
                "configs/model/structvit_xs.yaml",
                "--model.init_from",
                "null",
                "--data.root",
                str(index),
                "--data.num_frames",
                "8",
                "--data.crop_size",
                "32",
                "--data.batch_size",
                "2",
                "--data.num_workers",
                "0",
                "--data.backend",
                "pyav",
                "--trainer.accelerator",
                "cpu",
                "--trainer.precision",
                "32-true",
                "--trainer.fast_dev_run",
                "1",
                "--trainer.default_root_dir",
                str(tmp_path / "runs"),
            ]
        )
    finally:
        torch.set_num_threads(before)
    assert cli.trainer.global_step == 1 and "val/top1" in cli.trainer.callback_metrics
    assert cli.model.class_names == ["cat", "dog"] and not (index / "manifest.json").exists()
    assert (
        len(cli.datamodule.fingerprint) == 16
        and cli.model.hparams.data_fingerprint == cli.datamodule.fingerprint
    )


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_fine_tune_custom_yaml_from_a_checkpoint_then_predict_a_folder(prepared, videos, tmp_path):
    from data_prep.synthetic import generate_dataset

    def cli(*args: str) -> subprocess.CompletedProcess:
        return ok(
            subprocess.run(
                [sys.executable, "-m", "src.cli", *args],
                cwd=ROOT,
                env=env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
        )

    index, _ = prepared
    runs = tmp_path / "runs"
    tiny = [
        "--data.num_frames",
        "8",
        "--data.crop_size",
        "32",
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "32-true",
        "--trainer.logger.init_args.save_dir",
        str(runs),
    ]
    # 1. a checkpoint to start from: structvit_xs on the synthetic benchmark (14 classes)
    synthetic = tmp_path / "synthetic"
    generate_dataset(synthetic, train=8, val=4, test=4, frames=8, size=32)
    cli(
        "fit",
        "--config",
        "configs/synthetic.yaml",
        *tiny,
        "--data.root",
        str(synthetic),
        "--data.num_workers",
        "0",
        "--data.test_views",
        "[1, 1]",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.default_root_dir",
        str(runs / "synthetic"),
    )
    source = runs / "synthetic" / "version_0" / "checkpoints" / "last.ckpt"
    assert source.is_file()

    # 2. the recipe of configs/custom.yaml on the prepared folder, the model config set to the checkpoint's
    cli(
        "fit",
        "--config",
        "configs/custom.yaml",
        "--config",
        "configs/model/structvit_xs.yaml",
        "--model.init_from",
        str(source),
        *tiny,
        "--data.root",
        str(index),
        "--trainer.default_root_dir",
        str(runs / "custom"),
    )
    run = runs / "custom" / "version_0"
    report = (run / "init_report.txt").read_text()
    assert str(source) in report and "tensors loaded" in report and "0 tensors loaded" not in report
    assert "head: 0 classes copied by name, the rest freshly initialised" in report  # no class in common
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["init_args"]["dataset"] == "custom" and config["model"]["lr"] == 5e-5

    # 3. predict a folder of videos from the fine-tuned checkpoint alone (no config, no data.root); a cover
    # picture beside the videos used to turn the folder into one 1-frame "video" (one record, exit 0)
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    inbox = Path(shutil.copytree(videos / "dog", tmp_path / "p2"))
    write_test_frames(tmp_path / "cover", 1, 32)
    (tmp_path / "cover" / "00001.jpg").rename(inbox / "cover.jpg")
    result = cli("predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(inbox))
    records = [
        json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(Path(r["path"]).name for r in records) == [f"clip {i}.mp4" for i in range(4)]
    assert all({t["class"] for t in r["top5"]} == set(CLASSES) for r in records)
    assert "predicted 4 of 4 videos" in result.stdout + result.stderr
    assert "skipped 2 file(s) that are not videos: 'cover.jpg', 'notes.txt'" in result.stderr
