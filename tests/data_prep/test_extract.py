"""Extraction is all-or-nothing: hostile members are refused by name, truncated archives leave nothing."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from data_prep.extract import ExtractError, safe_extract


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]], mode: str = "w:gz") -> Path:
    """members: (name, data, symlink target); data None + target None makes a folder."""
    with tarfile.open(path, mode) as tar:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.startswith("."))


def test_a_good_tar_gz_is_extracted_and_a_rerun_is_skipped(tmp_path):
    archive = _tar(
        tmp_path / "a.tar.gz", [("rgb", None, None), ("rgb/x.mp4", b"x" * 100, None), ("y.txt", b"y", None)]
    )
    assert safe_extract(archive, tmp_path / "out") == 2
    assert _listing(tmp_path / "out") == ["rgb", "rgb/x.mp4", "y.txt"]
    assert (tmp_path / "out" / "rgb" / "x.mp4").read_bytes() == b"x" * 100
    assert safe_extract(archive, tmp_path / "out") == 0  # marker: done before


def test_split_parts_of_one_tar_gz_are_read_as_one_archive(tmp_path):
    whole_members = [os.urandom(5000) for _ in range(4)]
    whole = _tar(tmp_path / "whole.tar.gz", [(f"v2/{i}.webm", whole_members[i], None) for i in range(4)])
    data = whole.read_bytes()
    parts = []
    for i, offset in enumerate(range(0, len(data), 6000)):
        part = tmp_path / f"20bn-something-something-v2-{i:02d}"
        part.write_bytes(data[offset : offset + 6000])
        parts.append(part)
    assert len(parts) > 2
    assert safe_extract(parts, tmp_path / "out") == 4
    assert _listing(tmp_path / "out") == ["v2"] + [f"v2/{i}.webm" for i in range(4)]
    assert (tmp_path / "out" / "v2" / "3.webm").read_bytes() == whole_members[3]
    assert (tmp_path / "out" / ".extracted-20bn-something-something-v2").exists()


@pytest.mark.parametrize(
    ("member", "target", "message"),
    [
        ("../evil.txt", None, "'..'"),
        ("ok/../../evil.txt", None, "'..'"),
        ("/tmp/evil.txt", None, "absolute path"),
        ("link", "../../outside", "points outside"),
        ("link", "/etc/passwd", "points outside"),
    ],
)
def test_hostile_members_are_refused_by_name_and_nothing_is_written(tmp_path, member, target, message):
    archive = _tar(
        tmp_path / "bad.tar.gz", [("good.txt", b"fine", None), (member, None if target else b"evil", target)]
    )
    out = tmp_path / "deep" / "out"
    with pytest.raises(ExtractError, match=message) as err:
        safe_extract(archive, out)
    assert err.value.member == member
    assert _listing(out) == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_a_symlink_inside_the_target_is_allowed(tmp_path):
    archive = _tar(
        tmp_path / "a.tar", [("d/real.txt", b"r", None), ("d/alias.txt", None, "real.txt")], mode="w"
    )
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "alias.txt").read_bytes() == b"r"


def test_hostile_zip_members_are_refused(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fine.txt", "ok")
        z.writestr("../../evil.txt", "evil")
    with pytest.raises(ExtractError, match=r"'\.\.'.*|evil"):
        safe_extract(path, tmp_path / "out")
    assert _listing(tmp_path / "out") == []


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.97])
def test_a_truncated_archive_is_reported_and_not_half_extracted(tmp_path, keep):
    whole = _tar(tmp_path / "whole.tar.gz", [(f"rgb/{i}.mp4", os.urandom(20_000), None) for i in range(5)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    with pytest.raises(ExtractError, match="truncated or corrupt"):
        safe_extract(cut, tmp_path / "out")
    assert _listing(tmp_path / "out") == []
    assert not list((tmp_path / "out").glob(".extracted-*"))


def test_a_missing_archive_says_to_download_it(tmp_path):
    with pytest.raises(ExtractError, match="download it first"):
        safe_extract(tmp_path / "nothere.tar.gz", tmp_path / "out")
