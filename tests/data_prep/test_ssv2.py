"""Something-Something V2: classes come from the template with its brackets removed, never the filled-in label;
the downloaded parts are joined and extracted; either label-file naming works; VP9 can be re-encoded."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import av
import pytest

from data_prep import ssv2
from tests.helpers.videos import write_test_video

CLASSES = [
    "Holding something next to something",
    "Putting something on a surface",
    "Something falling like a rock",
]


def test_real_labels_have_174_classes_in_index_order(real_annotations):
    labels = ssv2.load_json(real_annotations / "ssv2_labels.json")
    classes = ssv2.parse_classes(labels)
    assert len(classes) == 174
    assert classes[0] == "Approaching something with your camera"
    assert all(int(labels[name]) == i for i, name in enumerate(classes))


def test_real_records_map_by_template_not_by_filled_in_label(real_annotations):
    classes = ssv2.parse_classes(ssv2.load_json(real_annotations / "ssv2_labels.json"))
    label_of = {c: i for i, c in enumerate(classes)}
    train = ssv2.parse_split(ssv2.load_json(real_annotations / "ssv2_train_sample.json"), label_of, "train")
    assert train[0] == (
        "78687",
        label_of["Holding something next to something"],
    )  # label: "holding potato next to ..."
    val = ssv2.parse_split(ssv2.load_json(real_annotations / "ssv2_validation_sample.json"), label_of, "val")
    assert len(val) == 30 and dict(val)["74225"] == label_of["Spinning something that quickly stops spinning"]
    test = ssv2.parse_split(ssv2.load_json(real_annotations / "ssv2_test_sample.json"), label_of, "test")
    assert len(test) == 30 and {label for _, label in test} == {-1}
    answers = ssv2.parse_test_answers(
        (real_annotations / "ssv2_test_answers_sample.csv").read_text(), label_of, "a"
    )
    assert answers["1420"] == label_of["Throwing something"]


def test_an_unknown_template_is_an_error_naming_the_video():
    with pytest.raises(ValueError, match=r"video 7 has template 'Juggling \[something\]'"):
        ssv2.parse_split([{"id": "7", "template": "Juggling [something]"}], {"x": 0}, "train.json")


def _source(root: Path, naming: str) -> Path:
    """A miniature SSv2 download: the tar.gz split in pieces, and label files under the given naming."""
    videos = root / "work"
    for vid in ("11", "12", "13", "21"):
        write_test_video(videos / f"{vid}.webm", 12, (48, 64), codec="vp9")
    whole = root / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        for vid in ("11", "12", "21"):  # video 13 is listed but was never in the download
            tar.add(videos / f"{vid}.webm", arcname=f"20bn-something-something-v2/{vid}.webm")
    data, src = whole.read_bytes(), root / "src"
    src.mkdir()
    step = len(data) // 3 + 1
    for i in range(3):
        (src / f"20bn-something-something-v2-{i:02d}").write_bytes(data[i * step : (i + 1) * step])
    files = {
        "labels": {c: str(i) for i, c in enumerate(CLASSES)},
        "train": [
            {
                "id": "11",
                "label": "holding a cup next to a pen",
                "template": "Holding [something] next to [something]",
                "placeholders": ["a cup", "a pen"],
            },
            {
                "id": "12",
                "label": "putting a pen on a surface",
                "template": "Putting [something] on a surface",
                "placeholders": ["a pen"],
            },
            {
                "id": "13",
                "label": "a rock falling like a rock",
                "template": "[Something] falling like a rock",
                "placeholders": ["a rock"],
            },
        ],
        "validation": [
            {
                "id": "21",
                "label": "a key falling like a rock",
                "template": "[Something] falling like a rock",
                "placeholders": ["a key"],
            }
        ],
    }
    for key, content in files.items():
        path = (
            src / "labels" / f"{key}.json"
            if naming == "labels/"
            else src / f"something-something-v2-{key}.json"
        )
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(content).replace("},", "},\r\n"))  # CRLF like the official files
    return src


def _extracted_files(out: Path) -> dict[Path, tuple[int, int, int]]:
    """Every file extracted under `out/videos` (and the done marker) with its inode, mtime and ctime (the
    ctime changes when a file is written or renamed into place, even where the extraction restores the
    archive's mtime and the file system reuses the inode number)."""
    stats = {p: p.stat() for p in sorted((out / "videos").rglob("*")) if p.is_file()}
    return {p: (s.st_ino, s.st_mtime_ns, s.st_ctime_ns) for p, s in stats.items()}


@pytest.mark.parametrize("naming", ["labels/", "something-something-v2-*"])
def test_prepare_joins_the_parts_and_indexes_by_template(tmp_path, naming, monkeypatch):
    src = _source(tmp_path, naming)
    out = tmp_path / "ssv2"
    ssv2.main(["--source", str(src), "--out", str(out), "--workers", "2", "--quiet"])
    rows = list(csv.DictReader((out / "train.csv").open()))
    assert [(r["path"], r["label"], r["num_frames"]) for r in rows] == [
        ("videos/20bn-something-something-v2/11.webm", "0", "12"),
        ("videos/20bn-something-something-v2/12.webm", "1", "12"),
    ]
    assert list(csv.DictReader((out / "val.csv").open()))[0]["label"] == "2"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing"]["train"] == [{"id": "13", "reason": "video file not found"}]
    assert (out / "classes.txt").read_text().splitlines() == CLASSES
    extracted = _extracted_files(out)
    assert {p.name for p in extracted} >= {"11.webm", "12.webm", "21.webm"}
    # a re-run finds the earlier extraction: the archive is not extracted again, no file is rewritten
    calls = []
    monkeypatch.setattr(ssv2, "safe_extract", lambda *a, **k: calls.append(a))
    ssv2.main(["--source", str(src), "--out", str(out), "--workers", "2", "--quiet"])
    assert calls == [] and _extracted_files(out) == extracted
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]


def test_transcode_option_writes_h264_mp4(tmp_path):
    src = _source(tmp_path, "labels/")
    out = tmp_path / "ssv2"
    ssv2.main(["--source", str(src), "--out", str(out), "--workers", "1", "--transcode", "--quiet"])
    rows = list(csv.DictReader((out / "train.csv").open()))
    assert [r["path"] for r in rows] == ["mp4/11.mp4", "mp4/12.mp4"]
    with av.open(str(out / "mp4" / "11.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_missing_label_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels/labels.json or something-something-v2-labels.json"):
        ssv2.prepare(tmp_path, tmp_path / "out")
