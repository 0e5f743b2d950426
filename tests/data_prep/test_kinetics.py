"""Kinetics-400 preparation against a miniature mirror served on 127.0.0.1: the index, the missing-video
report, and a resumed run after a kill mid-download that ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from data_prep import kinetics
from tests.helpers.videos import write_test_video

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["abseiling", "passing American football (in game)", "tying knot (not on a tie)"]
TRAIN = [  # label, youtube_id, start, end; the ids start with '-' or hold '_' like real ones
    (CLASSES[0], "-0wR5jVB-WP", 417, 427),
    (CLASSES[1], "-b6gqj_mZOs", 9, 19),
    (CLASSES[2], "3caPS4FHFF8", 36, 46),
    (CLASSES[0], "gone1234567", 1, 11),  # listed but in no archive: must be reported missing
    (CLASSES[1], "fixedXYZ123", 0, 10),  # corrupt in the part, good in the replacement archive
]
VAL = [(CLASSES[2], "--6bJUbfpnQ", 17, 27), (CLASSES[0], "34KeIezQZ8x", 0, 10)]
TEST = [("-Aw1GOyNtlI", 13, 23)]


def _csv(rows, split: str) -> str:
    lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for label, yid, start, end in rows:
        name = f'"{label}"' if " " in label else label
        lines.append(f"{name},{yid},{start},{end},{split},0")
    return "\n".join(lines) + "\n"


def _tar_gz(path: Path, files: dict[str, Path | bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, src in files.items():
            if isinstance(src, bytes):
                tmp = path.parent / ".member"
                tmp.write_bytes(src)
                tar.add(tmp, arcname=name)
                tmp.unlink()
            else:
                tar.add(src, arcname=name)


def build_mirror(www: Path, work: Path) -> None:
    """The CVDF layout in miniature: URL lists, tar.gz parts of real mp4s, annotations, replacement archive."""

    def video(yid, start, end, frames=24):
        return write_test_video(work / f"{yid}_{start:06d}_{end:06d}.mp4", frames, (48, 64), fps=25)

    t = [video(*r[1:]) for r in TRAIN]
    v = [video(*r[1:]) for r in VAL]
    s = [video(*r) for r in TEST]
    _tar_gz(www / "train" / "part_0.tar.gz", {"part_0/" + t[0].name: t[0], "part_0/" + t[1].name: t[1]})
    _tar_gz(www / "train" / "part_1.tar.gz", {t[2].name: t[2], t[4].name: b"corrupt video bytes"})
    _tar_gz(www / "val" / "part_0.tar.gz", {p.name: p for p in v})
    _tar_gz(www / "test" / "part_0.tar.gz", {p.name: p for p in s})
    _tar_gz(www / kinetics.REPLACEMENT, {"replacement/" + t[4].name: t[4]})
    official = (
        "https://s3.amazonaws.com/kinetics/400"  # the lists name the official host; only names are used
    )
    (www / "train" / "k400_train_path.txt").write_text(
        f"{official}/train/part_0.tar.gz\n{official}/train/part_1.tar.gz\n"
    )
    (www / "val" / "k400_val_path.txt").write_text(f"{official}/val/part_0.tar.gz\n")
    (www / "test" / "k400_test_path.txt").write_text("part_0.tar.gz\n")
    (www / "annotations").mkdir()
    (www / "annotations" / "train.csv").write_text(_csv(TRAIN, "train"))
    (www / "annotations" / "val.csv").write_text(_csv(VAL, "val"))
    (www / "annotations" / "test.csv").write_text(
        "youtube_id,time_start,time_end,split\n" + "".join(f"{y},{a},{b},test\n" for y, a, b in TEST)
    )


def _index(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    files = {n: (out / n).read_text() for n in ("classes.txt", "train.csv", "val.csv", "test.csv")}
    return {
        "files": files,
        "fingerprint": manifest["fingerprint"],
        "missing": manifest["missing"],
        "counts": manifest["counts"],
        "failed": manifest["failed"],
    }


@pytest.fixture
def mirror(file_server, tmp_path):
    build_mirror(tmp_path / "www", tmp_path / "videos_src")
    return file_server


def test_prepare_k400_builds_the_index_and_reports_the_missing_video(mirror, tmp_path, capsys):
    out = tmp_path / "k400"
    assert kinetics.main(["--out", str(out), "--base-url", mirror.url, "--workers", "2", "--quiet"]) == 0
    index = _index(out)
    official = kinetics.canonical_classes()
    assert index["files"]["classes.txt"].splitlines() == official  # always the 400, whatever the mirror holds
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["classes_without_videos"]) == sorted(set(official) - set(CLASSES))
    assert index["counts"] == {"train": 4, "val": 2, "test": 1}
    probe = json.loads((out / "manifest.json").read_text())["probe"]
    assert probe == {"probed": 7, "codecs": {"h264": 7}, "sizes": {"64x48": 7}, "fps": {"25.0": 7}}
    assert index["missing"]["train"][0]["id"] == "gone1234567_000001_000011"
    assert "not in the downloaded archives" in index["missing"]["train"][0]["reason"]
    assert "train: 4 indexed, 1 missing" in capsys.readouterr().out
    train = index["files"]["train.csv"].splitlines()
    assert train[0] == "path,label,num_frames,fps"
    football = official.index("passing American football (in game)")  # the official label id, not 1 of 3
    assert f"videos/train/part_0/-b6gqj_mZOs_000009_000019.mp4,{football},24,25" in train
    assert (
        f"videos/replacement/replacement/fixedXYZ123_000000_000010.mp4,{football},24,25" in train
    )  # the fixed copy
    assert index["files"]["test.csv"].splitlines()[1].endswith(",-1,24,25")  # no label column: -1
    # every indexed path exists relative to the index folder
    for split in ("train", "val", "test"):
        for line in index["files"][f"{split}.csv"].splitlines()[1:]:
            assert (out / line.split(",")[0]).is_file()


@pytest.mark.slow
def test_a_run_killed_mid_download_resumes_and_gives_the_same_index(mirror, tmp_path):
    clean = tmp_path / "clean"
    kinetics.main(["--out", str(clean), "--base-url", mirror.url, "--workers", "1", "--quiet"])
    mirror.requests.clear()
    mirror.throttle(chunk=512, delay=0.05)  # slow enough to be caught mid-file
    out = tmp_path / "k400"
    cmd = [
        sys.executable,
        "-m",
        "data_prep.kinetics",
        "--out",
        str(out),
        "--base-url",
        mirror.url,
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    part = None
    while time.time() < deadline and part is None:
        part = next((p for p in out.rglob("*.tar.gz.part") if p.stat().st_size > 1024), None)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert part is not None, "the first run never started a part download"
    assert not (out / "manifest.json").exists()
    killed_at = part.stat().st_size

    mirror.throttle(chunk=1 << 16, delay=0)
    mirror.requests.clear()
    kinetics.main(["--out", str(out), "--base-url", mirror.url, "--workers", "1", "--quiet"])
    resumed = [r for r in mirror.requests if r[1] is not None]
    assert any(r[0].endswith(part.name[: -len(".part")]) and r[1] == f"bytes={killed_at}-" for r in resumed)
    assert _index(out) == _index(clean)


def test_parser_reads_the_real_csv_formats(real_annotations):
    val = kinetics.parse_annotations((real_annotations / "k400_val_sample.csv").read_text(), "val")
    by_id = {r["youtube_id"]: r for r in val}
    assert by_id["-b6gqj_mZOs"]["label"] == "passing American football (in game)"
    assert by_id["-b6gqj_mZOs"]["name"] == "-b6gqj_mZOs_000009_000019"
    test = kinetics.parse_annotations((real_annotations / "k400_test_sample.csv").read_text(), "test")
    assert len(test) == 15 and all(r["label"] is None for r in test)
    assert test[0]["name"] == "--6bJUbfpnQ_000017_000027"


def test_alphabetical_class_order_is_the_official_400_class_order(real_annotations):
    official = (real_annotations / "k400_classes.txt").read_text().splitlines()
    assert len(official) == 400 and official == sorted(official)
    val = kinetics.parse_annotations((real_annotations / "k400_val_sample.csv").read_text(), "val")
    labels = kinetics.class_list({"val": val})
    assert set(labels) <= set(official)
    assert [official.index(c) for c in labels] == sorted(official.index(c) for c in labels)


def test_a_csv_without_the_needed_columns_is_refused_by_name():
    with pytest.raises(ValueError, match=r"bad\.csv.*youtube_id"):
        kinetics.parse_annotations("label,id\nx,y\n", "bad.csv")


def test_url_lists_give_archive_names_from_urls_or_bare_names():
    text = "https://s3.amazonaws.com/kinetics/400/train/part_0.tar.gz\n\npart_1.tar.gz\n"
    assert kinetics.parse_url_list(text) == ["part_0.tar.gz", "part_1.tar.gz"]


def test_without_the_replacement_archive_the_corrupt_video_is_reported_failed(mirror, tmp_path, caplog):
    (tmp_path / "www" / kinetics.REPLACEMENT).unlink()
    manifest = kinetics.prepare(tmp_path / "k400", mirror.url, splits=["train"], workers=1, progress=False)
    assert "continuing without the replacement videos" in caplog.text
    assert manifest["counts"]["train"] == 3
    assert [f["id"] for f in manifest["failed"]["train"]] == ["fixedXYZ123_000000_000010"]
    assert manifest["failed"]["train"][0]["reason"].startswith("unreadable")


def test_deleted_archives_are_not_fetched_again_on_a_rerun(mirror, tmp_path):
    out = tmp_path / "k400"
    args = ["--out", str(out), "--base-url", mirror.url, "--workers", "1", "--quiet", "--delete-archives"]
    kinetics.main(args)
    assert (
        list((out / "downloads").rglob("*.tar.gz")) == [] and list((out / "downloads").rglob("*.tgz")) == []
    )
    first = _index(out)
    mirror.requests.clear()
    kinetics.main(args)
    assert not [path for path, _ in mirror.requests if path.endswith((".tar.gz", ".tgz"))]
    assert _index(out) == first


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _hostile_parts(www: Path, outside: Path, parts: int) -> None:
    """Parts that each pass a per-archive check but together write outside the target: A holds `l1 -> .`,
    B `l1/.../up -> ../../..` deep enough to reach `/`, C `up/<absolute path of outside>/pwned`. With two
    parts, A and B merge (the deep link written through the first)."""
    depth = len(Path(outside).resolve().parts) + 8  # more levels than the target has: `up` reaches `/`
    chain = "/".join(["l1"] * depth)  # on disk `l1 -> .` folds the chain back to the target itself
    members = [
        [_link("l1", ".")],
        [_link(f"{chain}/up", "/".join([".."] * depth))],
    ]  # inside, in B's own view
    if parts == 2:
        members = [members[0] + members[1]]
    payload = tarfile.TarInfo("up/" + str(Path(outside).resolve()).lstrip("/") + "/pwned")
    payload.size = 5
    for i, part in enumerate(members):
        with tarfile.open(www / "train" / f"part_{i}.tar.gz", "w:gz") as tar:
            for info in part:
                tar.addfile(info)
    with tarfile.open(www / "train" / f"part_{len(members)}.tar.gz", "w:gz") as tar:
        import io

        tar.addfile(payload, io.BytesIO(b"pwned"))
    names = "".join(f"part_{i}.tar.gz\n" for i in range(len(members) + 1))
    (www / "train" / "k400_train_path.txt").write_text(names)


@pytest.mark.parametrize("parts", [3, 2])
def test_archives_that_together_escape_the_target_write_nothing_outside(mirror, tmp_path, parts):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pwned").write_text("original")  # an existing file there must not be overwritten either
    _hostile_parts(tmp_path / "www", outside, parts)
    out = tmp_path / "k400"
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.kinetics",
            "--out",
            str(out),
            "--base-url",
            mirror.url,
            "--workers",
            "1",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert code.returncode != 0
    assert "symbolic link to '.' refused" in code.stderr + code.stdout, (code.stdout + code.stderr)[-3000:]
    assert "l1" in code.stderr + code.stdout
    assert (outside / "pwned").read_text() == "original"
    assert not list(out.rglob("pwned"))
    assert not [p for p in out.rglob("*") if p.is_symlink()]


def test_truncated_parts_are_fetched_again_listed_together_and_not_reused_after_the_mirror_is_fixed(
    mirror, tmp_path
):
    www = tmp_path / "www" / "train"
    whole = {name: (www / name).read_bytes() for name in ("part_0.tar.gz", "part_1.tar.gz")}
    for name, data in whole.items():  # the mirror serves both parts cut short (Content-Length matches)
        (www / name).write_bytes(data[: len(data) // 2])
    out = tmp_path / "k400"
    args = ["--out", str(out), "--base-url", mirror.url, "--workers", "1", "--quiet"]
    with pytest.raises(Exception, match=r"2 archive\(s\) truncated or corrupt") as err:
        kinetics.main(args)
    assert "train/part_0.tar.gz" in str(err.value) and "train/part_1.tar.gz" in str(err.value)
    fetched = [path for path, _ in mirror.requests if path == "/train/part_0.tar.gz"]
    assert len(fetched) == 2  # the bad download was verified by extraction and fetched again once

    for name, data in whole.items():  # the mirror is fixed
        (www / name).write_bytes(data)
    assert kinetics.main(args) == 0
    assert (out / "train.csv").read_text().count("\n") >= 3


def test_the_shipped_class_list_is_the_official_400(real_annotations):
    shipped = kinetics.canonical_classes()
    assert len(shipped) == 400 == len(set(shipped)) and shipped == sorted(shipped)
    assert shipped == (real_annotations / "k400_classes.txt").read_text().splitlines()


def test_labels_outside_kinetics_400_are_an_error_naming_them(mirror, tmp_path):
    annotations = tmp_path / "www" / "annotations" / "val.csv"
    annotations.write_text(annotations.read_text() + "dancing the robot,zzzzzzzzzzz,0,10,val,0\n")
    with pytest.raises(
        ValueError, match=r"1 label\(s\) not among Kinetics-400's 400 classes.*'dancing the robot'"
    ):
        kinetics.main(
            ["--out", str(tmp_path / "k400"), "--base-url", mirror.url, "--workers", "1", "--quiet"]
        )
