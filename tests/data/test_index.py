"""The index contract: the writer produces exactly the layout of docs/design.md and the reader reads it back."""

import csv
import json

import pytest

from src.data.index import (
    Entry,
    IndexContractError,
    IndexRow,
    quarantine_line,
    read_classes,
    read_fingerprint,
    read_quarantine,
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


# Names a class folder may carry: each must come back from classes.txt exactly, at its own line (= label).
AWKWARD_NAMES = [
    "$_$ price",
    "snake_case_name",
    "100% sure",
    'it\'s "quoted"',
    "non\u00a0breaking",
    "\u00a0",  # a non-breaking space alone: it used to be dropped as a blank trailing line
    " leading and trailing ",
    "line\u2028separator\x85next\x0cform",  # str.splitlines splits at these; classes.txt does not
    "comma, inside",
]


def test_every_class_name_the_writer_accepts_is_read_back_at_its_label(tmp_path):
    classes = sorted(AWKWARD_NAMES)
    rows = {"train": [IndexRow(f"v/{i}.mp4", i) for i in range(len(classes))]}
    write_index(tmp_path, dataset="toy", classes=classes, splits=rows)
    assert read_classes(tmp_path) == classes
    # the last label is in range: with a dropped name the reader said "label 8 outside -1..7"
    entries, _ = read_split(tmp_path, "train", num_classes=len(read_classes(tmp_path)))
    assert [e.label for e in entries] == list(range(len(classes)))


def test_a_class_named_by_a_non_breaking_space_keeps_its_label(tmp_path):
    rows = {"train": [IndexRow("v/a.mp4", 0), IndexRow("v/b.mp4", 2)]}
    write_index(tmp_path, dataset="toy", classes=["cat", "dog", "\u00a0"], splits=rows)
    # before: classes.txt read back as 2 names, then "train.csv:3: label 2 outside -1..1 (classes.txt)"
    entries, _ = read_split(tmp_path, "train", num_classes=len(read_classes(tmp_path)))
    assert [e.label for e in entries] == [0, 2]


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "windows\r\n", ""])
def test_the_writer_refuses_a_class_name_that_is_not_one_line(tmp_path, name):
    with pytest.raises(ValueError, match=r"toy: class 1 .* classes\.txt holds one name per line; rename it"):
        write_index(tmp_path, dataset="toy", classes=["ok", name], splits={"train": [IndexRow("a.mp4", 0)]})
    assert not (tmp_path / "classes.txt").exists()


def test_a_hand_made_classes_file_with_windows_line_ends_and_a_bom_reads_clean(tmp_path):
    (tmp_path / "classes.txt").write_bytes("\ufeffcat\r\ndog \r\n\r\n".encode())
    assert read_classes(tmp_path) == ["cat", "dog "]


def test_a_video_file_name_with_a_line_break_or_quotes_round_trips_through_the_csv(tmp_path):
    paths = ["v/two\nlines.mp4", 'v/"quoted", comma.mp4', " v/leading space.mp4 ", "v/nbsp\u00a0.mp4"]
    rows = {"train": [IndexRow(p, 0, num_frames=8) for p in paths] + [IndexRow("v/last.mp4", 5)]}
    write_index(tmp_path, dataset="toy", classes=[str(i) for i in range(6)], splits=rows)
    entries, _ = read_split(tmp_path, "train", num_classes=6)
    assert [e.path for e in entries] == [tmp_path / p for p in paths] + [tmp_path / "v/last.mp4"]
    # an error names the physical line a quoted, multi-line row ends on
    (tmp_path / "train.csv").write_text('path,label\n"a\nb.mp4",0\nc.mp4,9\n')
    with pytest.raises(IndexContractError, match=r"train\.csv:4: label 9 outside -1\.\.5"):
        read_split(tmp_path, "train", num_classes=6)


def test_the_writer_refuses_a_file_name_with_a_carriage_return(tmp_path):
    # csv.writer quotes only for "\n" (its line end): a bare "\r" would split the row when read back
    with pytest.raises(ValueError, match=r"toy/train: path 'v/cr\\rinside.mp4' holds a carriage return"):
        write_index(
            tmp_path, dataset="toy", classes=["x"], splits={"train": [IndexRow("v/cr\rinside.mp4", 0)]}
        )


def test_quarantined_names_come_back_exactly_whatever_they_hold(tmp_path):
    """The doctor's quarantine.txt must name the same rows the index holds: spaces, tabs, line breaks, quotes."""
    names = [
        "v/plain.mp4",
        " v/lead.mp4",
        "v/trail.mp4 ",
        "v/tab\tin.mp4",
        "v/new\nline.mp4",
        '"v/quoted".mp4',
    ]
    lines = ["# written by a test\n"] + [
        quarantine_line(n, f"reason\tof {i}\n  wrapped") for i, n in enumerate(names)
    ]
    (tmp_path / "quarantine.txt").write_text("".join(lines), encoding="utf-8")
    quarantined = read_quarantine(tmp_path)
    assert list(quarantined) == names
    assert quarantined[" v/lead.mp4"] == "reason of 1 wrapped"  # the reason on one line
