"""The prediction writer (src/callbacks.py `JsonLinesPredictionWriter`) guarding its inputs and earlier results,
and writing every path so that a reader gets one line per video: under the real Trainer, and through `src.cli
predict` on the session's checkpoint. Its basic output is tested in tests/test_callbacks.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from task_fixtures import NUM_CLASSES, OneThread, TinyClips, loader

from src.callbacks import JsonLinesPredictionWriter, OutputTakenError
from src.task import BackboneConfig, VideoClassifier
from tests.helpers.cli_runs import ok, run_cli_together
from tests.helpers.videos import write_test_video

# a line feed, a carriage return, a Unicode line separator, a NEL, a leading quote: each split or misread a line
ODD_NAMES = [
    "two\nlines.mp4",
    "cr\rname.mp4",
    "sep\u2028arator.mp4",
    "nel\x85.mp4",
    '"quoted".mp4',
    "plain ü.mp4",
]


@pytest.fixture(autouse=True)
def one_thread():
    with OneThread():
        yield


def make_task() -> VideoClassifier:
    return VideoClassifier(backbone=BackboneConfig(variant="structvit_xs"), num_classes=NUM_CLASSES).eval()


def make_trainer(tmp_path: Path, writer: JsonLinesPredictionWriter) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer],
    )


def predict(trainer: pl.Trainer, task: VideoClassifier, data: TinyClips | None = None, **kwargs) -> None:
    data = data or TinyClips(3, views=2)
    trainer.predict(task, loader(data, batch_size=2, predict=True), return_predictions=False, **kwargs)


def state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A model's weights saved by torch, as a file the prediction reads."""
    path = tmp_path / "run" / "checkpoints" / "model.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": make_task().state_dict()}, path)
    return path


@pytest.mark.parametrize("link", ["same path", "hard link", "symbolic link"])
def test_an_output_that_is_the_checkpoint_is_refused_even_with_overwrite(tmp_path, checkpoint, link):
    """`--predict_writer.output X.ckpt` replaced a checkpoint with 300 bytes of JSON."""
    out = {
        "same path": checkpoint,
        "hard link": tmp_path / "hard.ckpt",
        "symbolic link": tmp_path / "sym.ckpt",
    }[link]
    if link == "hard link":
        os.link(checkpoint, out)
    elif link == "symbolic link":
        out.symlink_to(checkpoint)
    before = state(checkpoint)
    task = make_task()
    task.source_checkpoint = checkpoint  # what src.trained.load_trained sets
    writer = JsonLinesPredictionWriter(str(out), overwrite=True)
    with pytest.raises(
        OutputTakenError, match=r"is the checkpoint .*model\.ckpt, an input of this prediction"
    ):
        predict(make_trainer(tmp_path, writer), task)
    assert state(checkpoint) == before


def test_an_output_that_is_the_checkpoint_given_to_trainer_predict_is_refused_before_it_is_written(tmp_path):
    """`Trainer.predict(ckpt_path=...)` names the checkpoint only after setup: checked again before writing."""
    fitted = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    task = make_task()
    fitted.fit(task, loader(TinyClips(2), batch_size=2))
    ckpt = tmp_path / "fitted.ckpt"
    fitted.save_checkpoint(ckpt)
    before = state(ckpt)
    with pytest.raises(OutputTakenError, match="is the checkpoint"):
        predict(
            make_trainer(tmp_path, JsonLinesPredictionWriter(str(ckpt), overwrite=True)), task, ckpt_path=ckpt
        )
    assert state(ckpt) == before


def test_an_output_that_is_the_predict_list_or_one_of_its_videos_is_refused_before_loading(tmp_path):
    """The list of videos (and a listed video) as the output: refused at setup, before a video is read."""
    from src.data.datamodule import VideoDataModule

    clips = tmp_path / "clips"
    for name in ("a.mp4", "b.mp4"):
        write_test_video(clips / name, 8, size=32)
    listing = clips / "list.txt"
    listing.write_text("a.mp4\nb.mp4\n")
    cases = {
        str(listing): f"data.predict_path {listing}",
        str(clips / "b.mp4"): f"the video {clips / 'b.mp4'} of data.predict_path",
    }
    for out, what in cases.items():
        before = {p.name: state(p) for p in clips.iterdir()}
        data = VideoDataModule(predict_path=str(listing), num_frames=8, crop_size=32, num_workers=0)
        writer = JsonLinesPredictionWriter(out, overwrite=True)
        with pytest.raises(OutputTakenError, match=f"is {what}, an input"):
            make_trainer(tmp_path, writer).predict(make_task(), datamodule=data, return_predictions=False)
        assert {p.name: state(p) for p in clips.iterdir()} == before


def test_an_earlier_prediction_is_kept_unless_overwrite_is_asked_for(tmp_path):
    """A second predict silently replaced the previous predictions.jsonl; its features files count too."""
    out = tmp_path / "predictions.jsonl"
    predict(make_trainer(tmp_path, JsonLinesPredictionWriter(str(out), features=True)), make_task())
    earlier = {p.name: state(p) for p in tmp_path.glob("predictions*")}
    assert sorted(earlier) == ["predictions.features.npy", "predictions.features.txt", "predictions.jsonl"]

    with pytest.raises(
        OutputTakenError, match=r"predictions\.jsonl already exists; pass --predict_writer\.overwrite true"
    ):
        predict(make_trainer(tmp_path, JsonLinesPredictionWriter(str(out))), make_task())
    out.unlink()  # the features alone are an earlier result as well
    with pytest.raises(OutputTakenError, match=r"predictions\.features\.npy already exists"):
        predict(make_trainer(tmp_path, JsonLinesPredictionWriter(str(out), features=True)), make_task())
    assert {p.name: state(p) for p in tmp_path.glob("predictions.features*")} == {
        k: v for k, v in earlier.items() if "features" in k
    }

    predict(
        make_trainer(tmp_path, JsonLinesPredictionWriter(str(out), True, overwrite=True)),
        make_task(),
        TinyClips(2, views=2),
    )
    assert len(out.read_text().splitlines()) == 2
    assert len(JsonLinesPredictionWriter.read_feature_paths(tmp_path / "predictions.features.txt")) == 2


def test_an_output_that_is_a_directory_says_so(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(
        OutputTakenError, match=r"out is a directory; give a file name, e.g. --predict_writer\.output"
    ):
        predict(make_trainer(tmp_path, JsonLinesPredictionWriter(str(folder), overwrite=True)), make_task())


def test_the_default_output_beside_the_checkpoints_run_can_be_checked_before_the_model_is_loaded(
    tmp_path, checkpoint
):
    """`check_outputs` with the checkpoint to load (what a caller that loads the model itself runs first) and at
    setup: both find the earlier `<run>/predictions.jsonl` of the default output."""
    from src.data.datamodule import VideoDataModule

    earlier = checkpoint.parent.parent / "predictions.jsonl"
    earlier.write_text("{}\n")
    writer = JsonLinesPredictionWriter()
    data = VideoDataModule(predict_path=str(checkpoint.parent), num_workers=0)
    with pytest.raises(OutputTakenError, match=f"{earlier} already exists"):
        writer.check_outputs(make_trainer(tmp_path, writer), checkpoint=checkpoint, datamodule=data)
    task = make_task()
    task.source_checkpoint = checkpoint
    with pytest.raises(OutputTakenError, match=f"{earlier} already exists"):
        predict(make_trainer(tmp_path, writer), task)
    assert earlier.read_text() == "{}\n"


class OddlyNamedClips(TinyClips):
    """TinyClips whose paths are ODD_NAMES."""

    def path(self, i: int) -> str:
        return ODD_NAMES[i]


def test_every_output_has_one_line_per_video_whatever_its_name_holds(tmp_path):
    """A name with a line feed gave features.txt 3 lines for 2 rows; a NEL or U+2028 split a JSON line."""
    import numpy as np

    out = tmp_path / "predictions.jsonl"
    data = OddlyNamedClips(len(ODD_NAMES), views=2)
    predict(make_trainer(tmp_path, JsonLinesPredictionWriter(str(out), features=True)), make_task(), data)
    lines = out.read_text(encoding="utf-8").splitlines()  # str.splitlines: the strictest common reader
    assert [json.loads(line)["path"] for line in lines] == ODD_NAMES
    features_txt = tmp_path / "predictions.features.txt"
    assert len(features_txt.read_text(encoding="utf-8").splitlines()) == len(ODD_NAMES)
    assert len(np.load(tmp_path / "predictions.features.npy")) == len(ODD_NAMES)
    assert JsonLinesPredictionWriter.read_feature_paths(features_txt) == ODD_NAMES
    assert features_txt.read_text(encoding="utf-8").endswith(
        "\nplain ü.mp4\n"
    )  # ordinary names stay as they are


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_predict_from_the_command_line_guards_its_files_and_names_each_video_on_one_line(
    tiny_checkpoint, tmp_path
):
    """Real videos, one named with a line feed, through `src.cli predict`: predictions and features line up; an
    output that is the checkpoint (by a hard link) or an earlier prediction is refused with the flag to pass, and
    `--predict_writer.overwrite true` replaces it."""
    import numpy as np

    ckpt = tmp_path / "model.ckpt"  # a copy: the session's checkpoint is read-only
    shutil.copy(tiny_checkpoint, ckpt)
    os.link(ckpt, tmp_path / "linked.ckpt")
    clips = tmp_path / "clips"
    names = ["a\nb.mp4", "c.mp4"]
    for name in names:
        write_test_video(clips / name, 8, size=32)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text('{"path": "from an earlier run"}\n')
    replaced = tmp_path / "replaced.jsonl"
    replaced.write_text('{"path": "from an earlier run"}\n')
    before = state(ckpt), state(earlier)

    def run(out: Path, *extra: str) -> list[str]:
        return ["predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(clips), "--data.num_workers", "0",
                "--predict_writer.output", str(out), *extra]  # fmt: skip

    named, on_checkpoint, on_earlier, overwritten = run_cli_together(
        run(tmp_path / "named.jsonl", "--predict_writer.features", "true"),
        run(tmp_path / "linked.ckpt"),
        run(earlier),
        run(replaced, "--predict_writer.overwrite", "true"),
    )
    ok(named)
    records = [
        json.loads(line) for line in (tmp_path / "named.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [Path(r["path"]).name for r in records] == names and all("top5" in r for r in records)
    paths = JsonLinesPredictionWriter.read_feature_paths(tmp_path / "named.features.txt")
    assert paths == [r["path"] for r in records]
    assert len((tmp_path / "named.features.txt").read_text(encoding="utf-8").splitlines()) == 2
    assert np.load(tmp_path / "named.features.npy").shape[0] == 2

    assert (
        on_checkpoint.returncode == 2 and on_earlier.returncode == 2
    )  # one line each, before the model is read
    assert "Traceback" not in on_checkpoint.stderr + on_earlier.stderr
    assert f"is the checkpoint {ckpt}, an input of this prediction" in on_checkpoint.stderr
    assert f"{earlier} already exists; pass --predict_writer.overwrite true" in on_earlier.stderr
    assert (state(ckpt), state(earlier)) == before
    ok(overwritten)
    assert [Path(json.loads(line)["path"]).name for line in replaced.read_text().splitlines()] == names
