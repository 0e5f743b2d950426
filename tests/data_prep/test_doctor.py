"""The doctor decodes every indexed video in worker subprocesses and quarantines exactly the broken ones."""

from __future__ import annotations

import json

import pytest

from data_prep import doctor
from src.data.index import IndexRow, read_quarantine, write_index
from tests.helpers.videos import write_test_frames, write_test_video


@pytest.fixture(scope="module")
def sick_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("sick")
    write_test_video(root / "v" / "good.mp4", 20, (48, 64))
    write_test_video(root / "v" / "good.webm", 20, (48, 64), codec="vp9")
    write_test_frames(root / "v" / "frames", 8, (48, 64))
    whole = write_test_video(root / "v" / "whole.mp4", 60, (96, 128)).read_bytes()
    (root / "v" / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    (root / "v" / "empty.mp4").write_bytes(b"")
    (root / "v" / "text.mp4").write_text("<html>404 Not Found</html>\n" * 20)
    train = [IndexRow(f"v/{n}", 0) for n in ("good.mp4", "good.webm", "frames", "truncated.mp4", "empty.mp4")]
    val = [IndexRow("v/text.mp4", 1), IndexRow("v/good.mp4", 1), IndexRow("v/absent.mp4", 0)]
    write_index(root, dataset="sick", classes=["a", "b"], splits={"train": train, "val": val})
    return root


@pytest.fixture(scope="module")
def report(sick_index):
    return doctor.main([str(sick_index), "--workers", "2", "--timeout", "120", "--quiet"]), sick_index


def test_broken_files_are_quarantined_and_good_ones_pass(report):
    status, root = report
    assert status == 0
    quarantined = read_quarantine(root)  # read back the way the data pipeline reads it
    assert sorted(quarantined) == ["v/absent.mp4", "v/empty.mp4", "v/text.mp4", "v/truncated.mp4"]
    assert "empty" in quarantined["v/empty.mp4"] and "does not exist" in quarantined["v/absent.mp4"]


def test_the_summary_counts_codecs_sizes_and_failures(report):
    _, root = report
    summary = json.loads((root / "doctor.json").read_text())
    assert (summary["checked"], summary["ok"], summary["failed"]) == (7, 3, 4)
    assert summary["codecs"] == {"h264": 1, "vp9": 1, "jpeg": 1}
    assert summary["resolutions"] == {"64x48": 3}


def test_strict_mode_fails_when_something_is_quarantined(sick_index, tmp_path):
    index = tmp_path / "one"
    write_test_video(index / "ok.mp4", 8, (48, 64))
    (index / "bad.mp4").write_bytes(b"")
    write_index(
        index, dataset="x", classes=["a"], splits={"train": [IndexRow("ok.mp4", 0), IndexRow("bad.mp4", 0)]}
    )
    assert doctor.main([str(index), "--workers", "1", "--strict", "--quiet", "--backend", "pyav"]) == 1
    write_index(index, dataset="x", classes=["a"], splits={"train": [IndexRow("ok.mp4", 0)]})
    assert doctor.main([str(index), "--workers", "1", "--strict", "--quiet"]) == 0
    assert read_quarantine(index) == {}


@pytest.mark.slow
def test_a_video_that_exceeds_the_timeout_is_quarantined_and_the_worker_replaced(tmp_path):
    index = tmp_path / "slow"
    for i in range(2):
        write_test_video(index / f"{i}.mp4", 8, (48, 64))
    write_index(
        index, dataset="x", classes=["a"], splits={"train": [IndexRow(f"{i}.mp4", 0) for i in range(2)]}
    )
    summary = doctor.doctor(index, workers=1, timeout=0.01, progress=False)  # no real decode is this fast
    assert summary["failed"] == 2
    assert all("timed out" in f["reason"] for f in summary["failures"])


def test_an_empty_folder_is_not_an_index():
    with pytest.raises(FileNotFoundError, match="no train.csv"):
        doctor.read_checks(__import__("pathlib").Path("/nonexistent-index"))
