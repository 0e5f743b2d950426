"""Resumable HTTP downloads: Range resume, retries with backoff, parallel workers, size/checksum checks.

A download is written to `<dest>.part` and renamed to `dest` only once it is complete and verified, so a
killed run leaves either a finished file or a `.part` file that the next run continues with a Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that could not be completed or verified; names the URL, the file and the reason."""

    def __init__(self, url: str, dest: Path, reason: str):
        super().__init__(f"download of {url} -> {dest} failed: {reason}")
        self.url, self.dest, self.reason = url, Path(dest), reason


@dataclass(frozen=True)
class DownloadItem:
    """One file to fetch. `size` and `sha256`/`md5` are checked when given."""

    url: str
    dest: Path
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


def _checksum(path: Path, algo: str) -> str:
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(item: DownloadItem, path: Path) -> None:
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise DownloadError(item.url, item.dest, f"size {size} bytes, expected {item.size}")
    for algo in ("sha256", "md5"):
        expected = getattr(item, algo)
        if expected and _checksum(path, algo) != expected.lower():
            raise DownloadError(
                item.url, item.dest, f"{algo} mismatch (expected {expected}); delete it and retry"
            )


def _total_from_headers(response, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range")  # "bytes 100-199/200"
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def _fetch_once(item: DownloadItem, part: Path, timeout: float, bar: tqdm | None) -> None:
    """One attempt: continue `part` from its current size with a Range request, until the server ends."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(item.url, headers={"User-Agent": "structvit-lightning-data-prep"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part is already complete (or longer than the file)
            return
        raise
    with response:
        if offset and response.status != 206:
            log.info("%s: server ignored the Range request; restarting from byte 0", item.url)
            offset = 0
        total = _total_from_headers(response, offset)
        if bar is not None and total:
            bar.total = (bar.total or 0) + total
            bar.update(offset)
            bar.refresh()
        with open(part, "ab" if offset else "wb") as out:
            while True:
                block = response.read1(CHUNK)  # what has arrived, so a killed run keeps it
                if not block:
                    break
                out.write(block)
                out.flush()
                if bar is not None:
                    bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise DownloadError(
            item.url, item.dest, f"connection ended at {part.stat().st_size} of {total} bytes"
        )


def download(
    item: DownloadItem,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    bar: tqdm | None = None,
) -> Path:
    """Fetch `item.url` to `item.dest` (skipped when dest exists and verifies); resume partial files."""
    dest = Path(item.dest)
    if dest.exists():
        _verify(item, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(item, part, timeout, bar)
            last_error = None
            break
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise DownloadError(item.url, dest, "HTTP 404 not found; check the base URL") from err
            last_error = err
        except (OSError, http.client.HTTPException, DownloadError) as err:  # URLError, timeouts, resets
            last_error = err
        if attempt < retries:
            delay = backoff * 2**attempt
            log.warning(
                "%s: attempt %d failed (%s); retrying in %.1fs", item.url, attempt + 1, last_error, delay
            )
            time.sleep(delay)
    if last_error is not None:
        raise DownloadError(item.url, dest, f"gave up after {retries + 1} attempts: {last_error}")
    try:
        _verify(item, part)
    except DownloadError:
        part.unlink(missing_ok=True)  # a wrong file must not be resumed
        raise
    os.replace(part, dest)
    return dest


def download_many(
    items: Sequence[DownloadItem],
    *,
    workers: int = 4,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download several files in parallel threads with one shared byte progress bar; order is kept."""
    with tqdm(total=0, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [
                pool.submit(download, item, retries=retries, backoff=backoff, timeout=timeout, bar=bar)
                for item in items
            ]
            return [f.result() for f in futures]


def fetch_text(url: str, dest: Path, **kwargs) -> str:
    """Download a small text file (a URL list, an annotation file) and return its content."""
    return download(DownloadItem(url, Path(dest)), **kwargs).read_text(encoding="utf-8")
