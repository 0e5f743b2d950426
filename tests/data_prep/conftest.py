"""Fixtures for the data-prep tests: a local HTTP file server with Range support, and the shared annotations."""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder, honours `Range: bytes=N-`, can throttle, and logs every request."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        size = path.stat().st_size
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            while block := f.read(server.chunk):
                try:
                    self.wfile.write(block)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                if server.delay:
                    time.sleep(server.delay)


class FileServer:
    """A started http.server on 127.0.0.1: `url` is its root; `requests` lists (path, Range header)."""

    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(RangeHandler, directory=str(root))
        )
        self.httpd.requests = []
        self.httpd.chunk = 1 << 16
        self.httpd.delay = 0.0
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def throttle(self, chunk: int, delay: float) -> None:
        """Send `chunk` bytes every `delay` seconds (0 delay: full speed)."""
        self.httpd.chunk, self.httpd.delay = chunk, delay

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    """A local HTTP server over `tmp_path / 'www'` for the duration of one test."""
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """../shared/fixtures/real_annotations beside the repository; the test is skipped when it is absent."""
    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "real_annotations"
    if not path.is_dir():
        pytest.skip(f"shared annotation fixtures not found at {os.path.normpath(path)}")
    return path
