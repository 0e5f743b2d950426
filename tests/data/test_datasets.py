"""Prediction inputs (`predict_entries`): a folder of videos is predicted video by video whatever else it holds,
a folder is one frame video only when it holds frames and nothing that is a video, and a list file's lines are
read exactly as written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from src.data.datamodule import VideoDataModule
from src.data.datasets import predict_entries
from src.data.index import Entry, IndexContractError
from tests.helpers.videos import write_test_frames, write_test_video

TINY = dict(
    dataset="synthetic",
    num_frames=4,
    sampling="segment",
    crop_size=32,
    test_views=(1, 1),
    flip="off",
    batch_size=4,
    eval_batch_size=4,
    num_workers=0,
)


def write_image(path: Path) -> Path:
    """One real JPEG at `path` (a cover picture, say)."""
    write_test_frames(path.parent / ".one", 1, 32)
    return (path.parent / ".one" / "00001.jpg").rename(path)


def test_a_folder_of_videos_with_an_image_predicts_every_video_and_names_what_it_skips(tmp_path, caplog):
    p2 = tmp_path / "p2"
    for i in range(4):
        write_test_video(p2 / f"v{i}.mp4", 8, 32)
    write_image(p2 / "cover.jpg")
    (p2 / "notes.txt").write_text("shot in May\n")
    with caplog.at_level(logging.WARNING, logger="src.data.datasets"):
        entries = predict_entries(p2)
    # before: one entry, the folder p2 itself, read as a 1-frame video; the 4 videos never predicted
    assert entries == [Entry(p2 / f"v{i}.mp4", -1) for i in range(4)]
    assert (
        f"predict_path {p2}: skipped 2 file(s) that are not videos: 'cover.jpg', 'notes.txt' (a folder holding "
        "videos is predicted video by video; a JPEG-frame video is a folder holding only its frames)"
    ) in caplog.text


def test_a_folder_of_frames_alone_is_one_video_and_its_sub_folders_are_videos(tmp_path):
    frames = write_test_frames(tmp_path / "frames", 4, 32)
    (frames / ".DS_Store").write_bytes(b"\0")
    assert predict_entries(frames) == [Entry(frames, -1)]
    write_test_frames(tmp_path / "frames" / "second", 4, 32)  # frames beside a sub-folder: not one video
    assert predict_entries(frames) == [Entry(frames / "second", -1)]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no videos here\n")
    with pytest.raises(IndexContractError, match=r"predict_path .*notes holds no videos \(\.mp4, "):
        predict_entries(tmp_path / "notes")


def test_a_folder_holding_videos_is_never_read_as_one_frame_video(tmp_path):
    """Listed for prediction (or as an index row), a mixed folder fails with its reason; the others are predicted."""
    mixed = tmp_path / "mixed"
    write_test_video(mixed / "s1.mp4", 8, 32)
    write_image(mixed / "cover.jpg")
    good = write_test_video(tmp_path / "good.mp4", 8, 32)
    listing = tmp_path / "inbox.txt"
    listing.write_text("mixed\ngood.mp4\n")
    dm = VideoDataModule(**{**TINY, **dict(root=str(tmp_path / "unused"), predict_path=str(listing))})
    batch = next(iter(dm.predict_dataloader()))
    assert batch["path"] == [str(good)] and batch["failed_path"] == [str(mixed)]
    (reason,) = batch["failed_reason"]
    assert reason.startswith("a folder holding videos or sub-folders (s1.mp4) is not a frame folder")


def test_list_lines_are_read_exactly_less_their_line_end(tmp_path, caplog):
    for name in (" lead.mp4", "trail.mp4 ", "b.mp4", "\u00a0nbsp.mp4", "#hash.mp4"):
        write_test_video(tmp_path / "clip.mp4", 8, 32).rename(tmp_path / name)  # the suffix picks the muxer
    listing = tmp_path / "inbox.txt"
    listing.write_bytes(
        b"# a comment\r\n lead.mp4\r\ntrail.mp4 \n\n   \n\xc2\xa0nbsp.mp4\n./#hash.mp4\nb.mp4 \n"
    )
    with caplog.at_level(logging.WARNING, logger="src.data.datasets"):
        entries = predict_entries(listing)
    # before: every line was stripped, so " lead.mp4" became "lead.mp4", a file that does not exist
    assert [e.path for e in entries] == [
        tmp_path / " lead.mp4",
        tmp_path / "trail.mp4 ",
        tmp_path / "\u00a0nbsp.mp4",
        tmp_path / "#hash.mp4",
        tmp_path / "b.mp4 ",
    ]
    assert all(e.path.is_file() for e in entries[:4]) and not entries[4].path.exists()
    assert (
        f"{listing}:8: 'b.mp4 ' does not exist but 'b.mp4' does: list lines are read exactly, spaces included"
        in caplog.text
    )
