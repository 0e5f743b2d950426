"""The index contract: the writer produces exactly the layout of docs/design.md and the reader reads it back."""

import csv
import json

import pytest

from src.data.index import (
    Entry,
    IndexContractError,
    IndexRow,
    read_classes,
    read_fingerprint,
    read_split,
    write_index,
)


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


def test_the_reader_reads_back_what_the_writer_wrote(tmp_path):
    rows = {
        "train": [IndexRow("v/a.mp4", 1, num_frames=16, fps=25.0), IndexRow("v/b.mp4", 0)],
        "val": [IndexRow("v/c.mp4", 1, start=1.5, end=3.0)],
        "test": [IndexRow("v/d.mp4", -1)],
    }
    manifest = write_index(tmp_path, dataset="toy", classes=["x", "y"], splits=rows)
    assert read_classes(tmp_path) == ["x", "y"]
    for split, written in rows.items():
        entries, quarantined = read_split(tmp_path, split, num_classes=2)
        assert quarantined == 0
        assert entries == [
            Entry(tmp_path / r.path, r.label, r.start, r.end, r.num_frames, r.fps) for r in written
        ]
    assert read_split(tmp_path, "val", 2)[0][0].segment == (1.5, 3.0)
    # a hand-made index (no manifest.json) gets the fingerprint the writer would have given it
    assert read_fingerprint(tmp_path) == manifest["fingerprint"]
    (tmp_path / "manifest.json").unlink()
    assert read_fingerprint(tmp_path) == manifest["fingerprint"]
    (tmp_path / "test.csv").unlink()
    assert read_fingerprint(tmp_path) != manifest["fingerprint"]


def test_the_reader_names_the_file_of_a_broken_index(tmp_path):
    write_index(tmp_path, dataset="toy", classes=["x"], splits={"train": [IndexRow("a.mp4", 0)]})
    with pytest.raises(IndexContractError, match=r"val\.csv not found"):
        read_split(tmp_path, "val", 1)
    (tmp_path / "train.csv").write_text("path,label\na.mp4,1\n")
    with pytest.raises(IndexContractError, match=r"train\.csv:2: label 1 outside -1\.\.0"):
        read_split(tmp_path, "train", 1)
    (tmp_path / "quarantine.txt").write_text("# doctor\na.mp4\tempty file\n")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,0\n")
    assert read_split(tmp_path, "train", 1) == ([], 1)
