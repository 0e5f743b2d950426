"""Diving-48: V2 labels only (V1 refused with the reason), `+`-joined vocabulary classes, frame counts
end_frame + 1, and the files fetched from a base URL when they are not on disk."""

from __future__ import annotations

import csv
import json
import tarfile

import pytest

from data_prep import diving48
from tests.helpers.videos import write_test_video


def test_real_vocabulary_gives_48_classes_equal_to_the_mmaction2_map(real_annotations):
    classes = diving48.parse_vocab(json.loads((real_annotations / "diving48_vocab.json").read_text()))
    assert len(classes) == 48 and classes[0] == "Back+15som+05Twis+FREE"
    assert classes == (real_annotations / "diving48_label_map_mmaction2.txt").read_text().split()


def test_real_records_give_frame_counts_end_frame_plus_one(real_annotations):
    records = json.loads((real_annotations / "diving48_train_sample.json").read_text())
    rows = diving48.parse_records(records, 48, "train")
    assert rows[0] == ("-mmq0PT-u8k_00155", 0, 49)
    assert rows[-1] == ("2x00lRzlTVQ_00038", 47, 129)
    test = diving48.parse_records(
        json.loads((real_annotations / "diving48_test_sample.json").read_text()), 48, "t"
    )
    assert len(test) == 23 and all(label % 2 == 0 for _, label, _ in test)


def test_a_label_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="x_1 has label 48"):
        diving48.parse_records(
            [{"vid_name": "x_1", "label": 48, "start_frame": 0, "end_frame": 9}], 48, "train.json"
        )


VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Forward", "35som", "NoTwis", "PIKE"]]


def _mirror(www, work):
    for name, n in (("a_00001", 10), ("b_00002", 14), ("c_00003", 12)):
        write_test_video(work / f"{name}.mp4", n, (48, 64))
    with tarfile.open(www / "Diving48_rgb.tar.gz", "w:gz") as tar:
        for name in ("a_00001", "b_00002", "c_00003"):
            tar.add(work / f"{name}.mp4", arcname=f"rgb/{name}.mp4")
    (www / "Diving48_vocab.json").write_text(json.dumps(VOCAB, indent=2))
    rec = lambda name, label, end: {"vid_name": name, "label": label, "start_frame": 0, "end_frame": end}  # noqa: E731
    (www / "Diving48_V2_train.json").write_text(
        json.dumps([rec("a_00001", 0, 9), rec("b_00002", 1, 13), rec("zz_9", 1, 5)])
    )
    (www / "Diving48_V2_test.json").write_text(json.dumps([rec("c_00003", 1, 11)]))


def test_prepare_downloads_extracts_and_indexes_with_v2_labels(file_server, tmp_path):
    _mirror(tmp_path / "www", tmp_path / "work")
    out = tmp_path / "diving48"
    diving48.main(
        [
            "--source",
            str(tmp_path / "dl"),
            "--base-url",
            file_server.url,
            "--out",
            str(out),
            "--workers",
            "2",
            "--quiet",
        ]
    )
    rows = [(r["path"], r["label"], r["num_frames"]) for r in csv.DictReader((out / "train.csv").open())]
    assert rows == [("videos/rgb/a_00001.mp4", "0", "10"), ("videos/rgb/b_00002.mp4", "1", "14")]
    assert (out / "val.csv").read_text() == (out / "test.csv").read_text()  # the official test list
    assert (out / "classes.txt").read_text().splitlines() == [
        "Back+15som+05Twis+FREE",
        "Forward+35som+NoTwis+PIKE",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing"]["train"] == [{"id": "zz_9", "reason": "video file not found"}]
    assert manifest["label_version"] == "v2"


def test_v1_label_files_are_refused_unless_asked_for(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _mirror(src, tmp_path / "work")
    for split in ("train", "test"):
        (src / f"Diving48_V2_{split}.json").rename(src / f"Diving48_{split}.json")
    with pytest.raises(FileNotFoundError, match="V1 labels are noisy"):
        diving48.prepare(src, tmp_path / "out", progress=False)
    manifest = diving48.prepare(src, tmp_path / "out", label_version="v1", workers=1, progress=False)
    assert manifest["label_version"] == "v1" and manifest["counts"]["train"] == 2
