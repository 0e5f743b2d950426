"""Something-Something V1: the labels file is read by lines (names hold commas), splits are `id;class name`,
and index rows point at JPEG frame folders with their frame counts."""

from __future__ import annotations

import csv
import json
import tarfile

from data_prep import ssv1
from tests.helpers.videos import write_test_frames


def test_real_labels_have_174_classes_and_commas_stay_inside_names(real_annotations):
    classes = ssv1.parse_classes(ssv1.read_lines(real_annotations / "ssv1_labels.txt"))
    assert len(classes) == 174
    assert classes[:2] == ["Holding something", "Turning something upside down"]
    assert "Putting something, something and something on the table" in classes


def test_real_split_rows_agree_with_the_tsm_lists(real_annotations):
    classes = ssv1.parse_classes(ssv1.read_lines(real_annotations / "ssv1_labels.txt"))
    label_of = {c: i for i, c in enumerate(classes)}
    rows = ssv1.parse_split(
        ssv1.read_lines(real_annotations / "ssv1_train_sample_reconstructed.csv"), label_of, "t"
    )
    assert rows[0] == ("100218", label_of["Something falling like a feather or paper"])
    # TSM-style lists number classes in sorted order; the same videos must name the same classes
    tsm = {
        line.split()[0]: int(line.split()[2])
        for line in (real_annotations / "ssv1_tsm_train_list_sample.txt").read_text().splitlines()
    }
    by_sorted = sorted(classes)
    assert len(rows) == 30
    assert all(by_sorted[tsm[vid]] == classes[label] for vid, label in rows)


def test_prepare_indexes_frame_folders_from_the_parts(tmp_path):
    work, src = tmp_path / "work", tmp_path / "src"
    src.mkdir()
    for vid, n in (("1", 6), ("2", 9), ("3", 5)):
        write_test_frames(work / "20bn-something-something-v1" / vid, n, (32, 40))
    with tarfile.open(tmp_path / "all.tgz", "w:gz") as tar:
        for vid in ("1", "2", "3"):
            tar.add(work / "20bn-something-something-v1" / vid, arcname=f"20bn-something-something-v1/{vid}")
    data = (tmp_path / "all.tgz").read_bytes()
    half = len(data) // 2
    (src / "20bn-something-something-v1-00").write_bytes(data[:half])
    (src / "20bn-something-something-v1-01").write_bytes(data[half:])
    (src / "something-something-v1-labels.csv").write_text(
        "Holding something\nPutting something, something and something on the table\n"
    )
    (src / "something-something-v1-train.csv").write_text(
        "1;Putting something, something and something on the table\n2;Holding something\n9;Holding something\n"
    )
    (src / "something-something-v1-validation.csv").write_text("3;Holding something\n")
    (src / "something-something-v1-test.csv").write_text("2\n")
    out = tmp_path / "ssv1"
    ssv1.main(["--source", str(src), "--out", str(out), "--workers", "2", "--quiet"])
    rows = [(r["path"], r["label"], r["num_frames"]) for r in csv.DictReader((out / "train.csv").open())]
    assert rows == [
        ("frames/20bn-something-something-v1/1", "1", "6"),
        ("frames/20bn-something-something-v1/2", "0", "9"),
    ]
    assert [r["label"] for r in csv.DictReader((out / "test.csv").open())] == ["-1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing"]["train"][0]["id"] == "9" and manifest["counts"] == {
        "train": 2,
        "val": 1,
        "test": 1,
    }


def test_an_extracted_frame_folder_in_the_source_is_linked_not_copied(tmp_path):
    src = tmp_path / "src"
    write_test_frames(src / "20bn-something-something-v1" / "5", 4, (32, 40))
    (src / "something-something-v1-labels.csv").write_text("Holding something\n")
    (src / "something-something-v1-train.csv").write_text("5;Holding something\n")
    (src / "something-something-v1-validation.csv").write_text("5;Holding something\n")
    out = tmp_path / "ssv1"
    ssv1.prepare(src, out, workers=1, progress=False)
    assert (out / "frames" / "20bn-something-something-v1").is_symlink()
    assert (out / "frames/20bn-something-something-v1/5/00004.jpg").is_file()
