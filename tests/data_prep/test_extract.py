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
        ("link", "../../outside", "symbolic link to '../../outside' refused"),
        ("link", "/etc/passwd", "symbolic link to '/etc/passwd' refused"),
        ("inside", "good.txt", "symbolic link to 'good.txt' refused"),
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


def test_a_link_chain_in_one_archive_is_refused_naming_the_member_not_as_corruption(tmp_path):
    archive = _tar(
        tmp_path / "chain.tar", [("l1", None, "."), ("l1/l2", None, ".."), ("l1/l2/x", b"x", None)], "w"
    )
    with pytest.raises(ExtractError, match="symbolic link to '.' refused") as err:
        safe_extract(archive, tmp_path / "out")
    assert err.value.member == "l1" and "corrupt" not in str(err.value)


def test_hard_links_are_refused(tmp_path):
    path = tmp_path / "hard.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        link = tarfile.TarInfo("b.txt")
        link.type, link.linkname = tarfile.LNKTYPE, "a.txt"
        tar.addfile(link)
    with pytest.raises(ExtractError, match="hard link to 'a.txt' refused") as err:
        safe_extract(path, tmp_path / "out")
    assert err.value.member == "b.txt"


def test_links_already_in_the_target_are_never_written_through(tmp_path):
    """A link left in the target (by an older version, by hand) must not carry an archive's files outside."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "videos").symlink_to(outside, target_is_directory=True)
    archive = _tar(tmp_path / "a.tar.gz", [("videos/x.mp4", b"x", None)])
    with pytest.raises(ExtractError, match="outside the target") as err:
        safe_extract(archive, out)
    assert err.value.member == "videos"
    assert list(outside.iterdir()) == []


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
