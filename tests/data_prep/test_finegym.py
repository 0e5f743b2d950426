"""FineGym: element clips are cut at event start + element time (never the rounded seconds in the ids), a vault's
three stages stay one clip, null-segment events are skipped and counted, Gym99 and Gym288 are keyed by Clabel."""

from __future__ import annotations

import csv
import json

import av
import pytest

from data_prep import finegym
from tests.helpers.videos import frame_index_of, write_test_video

VIDEO = "Ab_dEfGh-Ij"  # 11 characters, with '_' and '-' like real YouTube ids


def test_real_category_files_give_99_and_288_classes(real_annotations):
    gym99 = finegym.parse_categories((real_annotations / "gym99_categories.txt").read_text())
    gym288 = finegym.parse_categories((real_annotations / "gym288_categories.txt").read_text())
    assert (len(gym99), len(gym288)) == (99, 288)
    assert gym99[0] == "(VT) round-off, flic-flac with 0.5 turn on, stretched salto forward with 0.5 turn off"
    assert all(name == name.strip() for name in gym99 + gym288)


def test_real_annotation_gives_two_level_absolute_timestamps(real_annotations):
    tree = json.loads((real_annotations / "finegym_annotation_sample.json").read_text())
    elements, skipped = finegym.parse_annotations(tree)
    single = elements["0LtLS9wROrk_E_002407_002435_A_0003_0005"]
    assert (single.start, single.end, single.stages) == pytest.approx((2407.32 + 3.45, 2407.32 + 5.64, 1))
    vault = elements["0LtLS9wROrk_E_002681_002688_A_0000_0006"]  # three stages, one clip
    assert (vault.start, vault.end, vault.stages) == pytest.approx((2681.88 + 0.04, 2681.88 + 6.57, 3))
    assert skipped == []


def test_real_split_files_parse_and_agree_with_the_annotation(real_annotations):
    for name, n in (("gym99", 99), ("gym288", 288)):
        for split in ("train", "val"):
            rows = finegym.parse_split((real_annotations / f"{name}_{split}_sample.txt").read_text(), n)
            assert len(rows) == 40 and all(0 <= label < n for _, label in rows)
    val = dict(finegym.parse_split((real_annotations / "gym99_val_sample.txt").read_text(), 99))
    assert val["0LtLS9wROrk_E_002407_002435_A_0003_0005"] == 78


def test_a_malformed_split_line_is_refused_with_its_line_number():
    with pytest.raises(ValueError, match="split.txt:2"):
        finegym.parse_split("abcdefghijk_E_000001_000002_A_0000_0001 3\nnot-an-element 4\n", 99, "split.txt")


def _categories(n: int) -> str:
    return "".join(f"Clabel: {i:3d}; set: 1; Glabel: {i:3d}; (VT) element {i} \n" for i in range(n))


@pytest.fixture
def gym_sources(tmp_path):
    videos, ann = tmp_path / "videos", tmp_path / "annotations"
    write_test_video(videos / f"{VIDEO}.mp4", 250, (48, 64), fps=25)  # 10 s; frame i shows i, at time i/25
    ann.mkdir()
    tree = {
        VIDEO: {
            "E_000002_000006": {  # the id says 2..6 s; the true event starts at 2.0 s
                "event": 1,
                "timestamps": [[2.0, 6.4]],
                "segments": {
                    "A_0000_0001": {"stages": 1, "timestamps": [[0.4, 1.2]]},
                    "A_0001_0003": {"stages": 3, "timestamps": [[1.0, 1.4], [1.4, 2.0], [2.0, 2.8]]},
                },
            },
            "E_000007_000008": {"event": 2, "timestamps": [[7.1, 8.2]], "segments": None},
        },
        "zzzzzzzzzzz": {  # annotated, but its source video was never downloaded
            "E_000001_000002": {
                "event": 1,
                "timestamps": [[1.0, 2.0]],
                "segments": {"A_0000_0001": {"stages": 1, "timestamps": [[0.1, 0.5]]}},
            },
        },
    }
    (ann / "finegym_annotation_info_v1.1.json").write_text(json.dumps(tree))
    (ann / "gym99_categories.txt").write_text(_categories(3))
    (ann / "gym288_categories.txt").write_text(_categories(5))
    e1, vault, null = (
        f"{VIDEO}_E_000002_000006_A_0000_0001",
        f"{VIDEO}_E_000002_000006_A_0001_0003",
        f"{VIDEO}_E_000007_000008_A_0000_0001",
    )
    (ann / "gym99_train_element_v1.1.txt").write_text(f"{e1} 0\n{vault} 2\n")
    (ann / "gym99_val_element.txt").write_text(f"{null} 1\n")
    (ann / "gym288_train_element_v1.1.txt").write_text(f"{e1} 4\n{vault} 3\n")
    (ann / "gym288_val_element.txt").write_text("zzzzzzzzzzz_E_000001_000002_A_0000_0001 0\n")
    return videos, ann, e1, vault


def _frame_numbers(path):
    with av.open(str(path)) as c:
        return [frame_index_of(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_prepare_cuts_elements_at_their_true_times_for_both_class_sets(gym_sources, tmp_path):
    videos, ann, e1, vault = gym_sources
    out = tmp_path / "data"
    finegym.main(
        [
            "--videos",
            str(videos),
            "--annotations",
            str(ann),
            "--out",
            str(out),
            "--short-side",
            "48",
            "--workers",
            "2",
            "--quiet",
        ]
    )
    assert _frame_numbers(out / "gym99" / "clips" / f"{e1}.mp4") == list(range(60, 80))  # [2.4, 3.2) s
    assert _frame_numbers(out / "gym99" / "clips" / f"{vault}.mp4") == list(range(75, 120))  # [3.0, 4.8) s
    rows99 = [
        (r["path"], r["label"], r["num_frames"]) for r in csv.DictReader((out / "gym99" / "train.csv").open())
    ]
    assert rows99 == [(f"clips/{e1}.mp4", "0", "20"), (f"clips/{vault}.mp4", "2", "45")]
    rows288 = [(r["path"], r["label"]) for r in csv.DictReader((out / "gym288" / "train.csv").open())]
    assert rows288 == [(f"clips/{e1}.mp4", "4"), (f"clips/{vault}.mp4", "3")]
    # one encode, linked into both index folders
    assert (out / "gym288" / "clips" / f"{e1}.mp4").stat().st_ino == (
        out / "finegym" / "clips" / f"{e1}.mp4"
    ).stat().st_ino
    m99 = json.loads((out / "gym99" / "manifest.json").read_text())
    assert m99["skipped_events_null_segments"] == 1
    assert "segments: null" in m99["missing"]["val"][0]["reason"]
    m288 = json.loads((out / "gym288" / "manifest.json").read_text())
    assert "source video zzzzzzzzzzz not in" in m288["missing"]["val"][0]["reason"]
    assert (m99["num_classes"], m288["num_classes"]) == (3, 5)
