"""Downloads resume with Range requests, verify size and checksum, and name the URL on failure."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from data_prep.download import DownloadError, DownloadItem, download, download_many


def _payload(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_download_writes_the_file_and_verifies_size_and_sha256(file_server, tmp_path):
    data = _payload(tmp_path / "www" / "a.bin", 300_000)
    item = DownloadItem(
        f"{file_server.url}/a.bin",
        tmp_path / "out" / "a.bin",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert download(item).read_bytes() == data
    assert not (tmp_path / "out" / "a.bin.part").exists()


def test_a_partial_file_is_resumed_with_a_range_request(file_server, tmp_path):
    data = _payload(tmp_path / "www" / "a.bin", 200_000)
    dest = tmp_path / "out" / "a.bin"
    dest.parent.mkdir()
    (dest.parent / "a.bin.part").write_bytes(data[:123_456])
    download(DownloadItem(f"{file_server.url}/a.bin", dest))
    assert dest.read_bytes() == data
    assert file_server.requests == [("/a.bin", "bytes=123456-")]


def test_a_finished_file_is_not_fetched_again(file_server, tmp_path):
    data = _payload(tmp_path / "www" / "a.bin", 1000)
    dest = tmp_path / "out" / "a.bin"
    download(DownloadItem(f"{file_server.url}/a.bin", dest))
    download(DownloadItem(f"{file_server.url}/a.bin", dest, size=len(data)))
    assert len(file_server.requests) == 1


def test_checksum_mismatch_is_reported_and_the_bad_file_is_not_kept(file_server, tmp_path):
    _payload(tmp_path / "www" / "a.bin", 1000)
    dest = tmp_path / "out" / "a.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(DownloadItem(f"{file_server.url}/a.bin", dest, sha256="0" * 64))
    assert not dest.exists() and not dest.with_name("a.bin.part").exists()


def test_missing_url_fails_at_once_naming_it(file_server, tmp_path):
    with pytest.raises(DownloadError, match=r"nope\.bin.*404"):
        download(DownloadItem(f"{file_server.url}/nope.bin", tmp_path / "nope.bin"), retries=3, backoff=10)


def test_unreachable_server_is_retried_then_reported(tmp_path):
    item = DownloadItem("http://127.0.0.1:9/x.bin", tmp_path / "x.bin")  # port 9: nothing listens
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download(item, retries=2, backoff=0.01, timeout=2)


def test_download_many_fetches_in_parallel_and_keeps_order(file_server, tmp_path):
    datas = [_payload(tmp_path / "www" / f"{i}.bin", 10_000 + i) for i in range(5)]
    items = [DownloadItem(f"{file_server.url}/{i}.bin", tmp_path / "out" / f"{i}.bin") for i in range(5)]
    paths = download_many(items, workers=3, progress=False)
    assert [p.read_bytes() for p in paths] == datas
