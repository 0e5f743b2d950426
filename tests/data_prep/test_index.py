"""The index writer produces exactly the contract of docs/design.md."""

import csv
import json

import pytest

from data_prep.index import IndexRow, write_index


def test_index_files_follow_the_contract(tmp_path):
    rows = {
        "train": [
            IndexRow("videos/a.mp4", 0, num_frames=16, fps=25.0),
            IndexRow("videos/b.mp4", 1, num_frames=8, fps=30.0),
        ],
        "val": [IndexRow("videos/c.mp4", 1, start=1.5, end=3.0)],
        "test": [IndexRow("videos/d.mp4", -1)],
    }
    manifest = write_index(
        tmp_path,
        dataset="toy",
        classes=["left, to right", "up"],
        splits=rows,
        missing={"train": [{"id": "zz", "reason": "not in archive"}]},
    )
    assert (tmp_path / "classes.txt").read_text().splitlines() == ["left, to right", "up"]
    with open(tmp_path / "train.csv") as f:
        train = list(csv.DictReader(f))
    assert list(train[0]) == ["path", "label", "num_frames", "fps"]
    assert train[1] == {"path": "videos/b.mp4", "label": "1", "num_frames": "8", "fps": "30"}
    with open(tmp_path / "val.csv") as f:
        assert list(csv.DictReader(f))[0] == {
            "path": "videos/c.mp4",
            "label": "1",
            "start": "1.5",
            "end": "3",
        }
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["counts"] == {"train": 2, "val": 1, "test": 1}
    assert manifest["missing_counts"] == {"train": 1}
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_fingerprint_changes_with_the_lists_and_only_with_them(tmp_path):
    rows = {"train": [IndexRow("a.mp4", 0)]}
    first = write_index(tmp_path / "a", dataset="toy", classes=["x"], splits=rows)["fingerprint"]
    again = write_index(tmp_path / "b", dataset="toy", classes=["x"], splits=rows)["fingerprint"]
    other = write_index(
        tmp_path / "c", dataset="toy", classes=["x"], splits={"train": [IndexRow("b.mp4", 0)]}
    )
    assert first == again != other["fingerprint"]


def test_out_of_range_label_is_refused_with_the_path(tmp_path):
    with pytest.raises(ValueError, match="b.mp4"):
        write_index(tmp_path, dataset="toy", classes=["x"], splits={"train": [IndexRow("b.mp4", 3)]})
