"""Published weights by name (`src.weights`): a local hub on 127.0.0.1 (`HF_ENDPOINT`) serves a tiny UniFormer-format
checkpoint; `fit --model.init_from NAME` downloads it into the Hugging Face cache, loads it exactly as the local file
loads, reuses the cache offline, and a truncated or altered file, an unknown name or a hub out of reach each end
with one line naming the weights and the fix."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from src.weights import CATALOGUE, catalogue, parse_hf
from src.weights_classes import K400_UNIFORMER, SSV1_SORTED, SSV2_LABELS_JSON
from tests.helpers.cli_runs import ROOT, env, ok, run_args, run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO, FILE, NAME = "test-org/tiny_uniformer", "tiny_structvit_xs_plain.pth", "tiny_uniformer_xs_synthetic"


class LocalHub:
    """What `hf_hub_download` asks of the Hub: HEAD and GET of /{repo}/resolve/{revision}/{file} with ETag,
    X-Repo-Commit and Content-Length, and byte ranges (a resumed download)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files  # "repo/file" -> bytes; tests replace a value to serve an altered file
        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _file(self) -> bytes | None:
                repo_file, sep, rest = self.path.partition("/resolve/")
                _revision, _, filename = rest.partition("/")
                return hub.files.get(f"{repo_file.strip('/')}/{filename}") if sep else None

            def _headers(self, data: bytes, status: int, start: int = 0) -> None:
                self.send_response(status)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()

            def _missing(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
                hub.requests.append(f"HEAD {self.path}")
                data = self._file()
                self._missing() if data is None else self._headers(data, 200)

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(f"GET {self.path}")
                data = self._file()
                if data is None:
                    return self._missing()
                wanted = self.headers.get("Range", "")
                start = int(wanted.split("=")[1].split("-")[0]) if wanted.startswith("bytes=") else 0
                self._headers(data, 206 if start else 200, start)
                self.wfile.write(data[start:])

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> str:
    """An address where nothing listens (a socket bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def tiny_uniformer_checkpoint(num_classes: int) -> bytes:
    """A bare state dict as the UniFormer releases are (an OrderedDict of tensors, no StructSA filters): the
    weights of the synthetic config's structvit_xs with plain attention, non-trivial everywhere."""
    import io

    from src.models import build_model

    torch.manual_seed(0)
    model = build_model("structvit_xs", num_classes=num_classes, structure_dim=4, stem="conv")
    state = {k: v for k, v in model.state_dict().items() if "_struct." not in k}
    with torch.no_grad():
        for k, v in state.items():
            if v.is_floating_point() and "running_var" not in k:
                v.add_(torch.randn_like(v) * 0.02)  # no tensor left at its default initialisation
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def published(tiny_index, tmp_path_factory):
    """The local hub serving the tiny checkpoint, and a catalogue file naming it (STRUCTVIT_WEIGHTS_CATALOGUE) with
    the synthetic index's classes as its head's order and the file's SHA-256."""
    classes = (tiny_index / "classes.txt").read_text().splitlines()
    data = tiny_uniformer_checkpoint(len(classes))
    hub = LocalHub({f"{REPO}/{FILE}": data})
    folder = tmp_path_factory.mktemp("published")
    entry = {
        "name": NAME,
        "repo": REPO,
        "filename": FILE,
        "purpose": "tests: the synthetic config's structvit_xs, plain attention",
        "fits": ["structvit_xs"],
        "frames": "8, segment",
        "classes": classes,
        "head_note": "the synthetic index's classes.txt",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "source": "tests/test_weights.py",
    }
    (folder / "catalogue.json").write_text(json.dumps([entry]))
    (folder / FILE).write_bytes(data)
    yield {"hub": hub, "data": data, "folder": folder, "catalogue": folder / "catalogue.json", "entry": entry}
    hub.stop()


def hub_env(published, home: Path, **extra: str) -> dict[str, str]:
    return {
        "HF_ENDPOINT": published["hub"].url,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "STRUCTVIT_WEIGHTS_CATALOGUE": str(published["catalogue"]),
        **extra,
    }


def weights_cli(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """`python -m src.weights ...` in a fresh process (huggingface_hub reads HF_ENDPOINT when imported)."""
    return subprocess.run(
        [sys.executable, "-m", "src.weights", *args],
        cwd=ROOT,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------------------ the catalogue
def test_every_entry_names_its_file_source_and_a_head_order_or_why_the_head_is_not_used():
    names = [entry.name for entry in CATALOGUE]
    assert len(set(names)) == len(names)
    for entry in CATALOGUE:
        assert entry.repo.startswith("Sense-X/") and entry.filename.endswith(".pth") and entry.source
        assert entry.fits and entry.frames and entry.purpose
        if entry.classes is None:
            assert entry.head_note.startswith("not used"), entry.name
        assert entry.sha256 is None or len(entry.sha256) == 64
    # the head orders that are known are the project's names (matched by name to a run's classes)
    k400 = (ROOT / "data_prep" / "k400_classes.txt").read_text().splitlines()
    assert sorted(K400_UNIFORMER) == sorted(k400) and list(K400_UNIFORMER) != k400  # same names, other order
    assert len(SSV2_LABELS_JSON) == len(set(SSV2_LABELS_JSON)) == 174
    assert list(SSV1_SORTED) == sorted(SSV1_SORTED) and len(set(SSV1_SORTED)) == 174
    # K600 heads are not used, and their names say so
    assert all(e.name.endswith("_nohead") for e in CATALOGUE if "_k600_" in e.name)


def test_the_list_command_shows_each_entry_with_its_use_variant_frames_classes_and_source():
    result = weights_cli("list")
    assert result.returncode == 0, result.stderr
    for entry in CATALOGUE:
        assert entry.name in result.stdout and entry.location in result.stdout
    assert "fits: uniformer_s, structvit_s; frames: 16 x 8" in result.stdout
    assert "head: 400 classes, Kinetics-400 in UniFormer's order" in result.stdout
    assert "head: not used: ImageNet-1k" in result.stdout


def test_an_hf_source_is_owner_repo_file_with_an_optional_revision():
    assert parse_hf("hf://Sense-X/uniformer_video/uniformer_small_k400_16x8.pth") == (
        "Sense-X/uniformer_video",
        "uniformer_small_k400_16x8.pth",
        "main",
    )
    assert parse_hf("hf://o/r/sub/f.pth@v1") == ("o/r", "sub/f.pth", "v1")


def test_an_unknown_name_lists_the_known_ones_and_suggests_the_closest(capsys):
    from src.task import init_from_problem

    problem = init_from_problem("uniformer_s_k400_16x4")
    assert problem.startswith(
        "model.init_from: uniformer_s_k400_16x4 is neither a file nor the name of published"
    )
    assert "did you mean uniformer_s_k400_16x8?" in problem
    assert all(name in problem for name in catalogue())
    assert (
        init_from_problem("uniformer_s_k400_16x8") is None
    )  # a name is checked, not downloaded, at parse time
    assert init_from_problem("hf://Sense-X/uniformer_video/uniformer_small_k400_16x8.pth") is None
    # a path keeps its own message
    assert "no checkpoint at checkpoints/x.pth (it does not exist)" in init_from_problem("checkpoints/x.pth")


# ------------------------------------------------------------------------------------- download and cache
def test_download_fetches_into_the_cache_checks_the_hash_and_refuses_a_truncated_or_altered_file(
    published, tmp_path
):
    home = tmp_path / "hf"
    first = weights_cli("download", NAME, **hub_env(published, home))
    assert first.returncode == 0, first.stderr
    cached = Path(first.stdout.split(": ", 1)[1].split(" (SHA-256")[0])
    assert cached.is_relative_to(home / "hub") and cached.read_bytes() == published["data"]
    assert published["entry"]["sha256"] in first.stdout

    # a truncated file in the cache (a download cut short and moved into place by hand, a full disk)
    blob = cached.resolve()
    blob.write_bytes(published["data"][: len(published["data"]) // 2])
    refused = weights_cli("download", NAME, **hub_env(published, home))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("error: ")
    assert (
        f"has {len(published['data']) // 2} bytes, the published {REPO}/{FILE} has {len(published['data'])}"
        in line
    )
    assert f"python -m src.weights download {NAME} --force" in line

    # the same length, other bytes: the SHA-256 says so, naming both hashes
    altered = bytearray(published["data"])
    altered[-1] ^= 0xFF
    blob.write_bytes(bytes(altered))
    refused = weights_cli("download", NAME, **hub_env(published, home))
    line = refused.stderr.strip()
    assert refused.returncode == 1 and line.count("\n") == 0
    assert f"SHA-256 {hashlib.sha256(altered).hexdigest()}, the published {REPO}/{FILE} has " in line
    assert published["entry"]["sha256"] in line

    # --force downloads it again, and the file is whole
    again = weights_cli("download", NAME, "--force", **hub_env(published, home))
    assert again.returncode == 0, again.stderr
    assert cached.read_bytes() == published["data"]


def test_the_hub_serving_other_bytes_than_the_catalogue_says_is_refused(published, tmp_path):
    hub = published["hub"]
    original = hub.files[f"{REPO}/{FILE}"]
    hub.files[f"{REPO}/{FILE}"] = original[:-1] + bytes([original[-1] ^ 0xFF])
    try:
        result = weights_cli("download", NAME, **hub_env(published, tmp_path / "hf"))
    finally:
        hub.files[f"{REPO}/{FILE}"] = original
    assert result.returncode == 1 and "the published" in result.stderr and "Traceback" not in result.stderr


def test_offline_without_the_file_in_the_cache_is_one_line_naming_the_file_and_the_fix(published, tmp_path):
    result = weights_cli("download", NAME, **hub_env(published, tmp_path / "empty", HF_HUB_OFFLINE="1"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot download {REPO}/{FILE} (HF_HUB_OFFLINE is set and it is not in the cache "
        f"{tmp_path / 'empty' / 'hub'}); run 'python -m src.weights download {NAME}' where the hub is reachable, "
        "or set --model.init_from to a local file"
    )


# ---------------------------------------------------------------------------------------- through the CLI
def fit_args(tiny_index: Path, runs: Path, name: str, init_from: str) -> list[str]:
    return [
        "fit",
        *run_args(tiny_index, runs, name, "v"),
        "--trainer.max_epochs",
        "1",
        "--model.init_from",
        init_from,
    ]


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fit_from_a_name_downloads_loads_like_the_local_file_and_reuses_the_cache_offline(
    published, tiny_index, tmp_path
):
    """Three tiny fits with the same seed: from the name (downloaded), from the same file on disk, and from the
    name again with the hub stopped and HF_HUB_OFFLINE=1. Same start, same data: the same weights at the end."""
    from src.trained import read_card

    home, runs = tmp_path / "hf", tmp_path / "runs"
    ok(run_cli(*fit_args(tiny_index, runs, "by_name", NAME), **hub_env(published, home)))
    assert any(r.startswith("GET ") for r in published["hub"].requests)  # downloaded from the local hub
    ok(run_cli(*fit_args(tiny_index, runs, "by_path", str(published["folder"] / FILE))))
    by_name, by_path = weights_of(runs / "by_name" / "v"), weights_of(runs / "by_path" / "v")
    assert by_name.keys() == by_path.keys()
    assert all(torch.equal(by_name[k], by_path[k]) for k in by_name)

    report = (runs / "by_name" / "v" / "init_report.txt").read_text()
    assert report.startswith(f"{NAME}\n{home / 'hub'}") and published["entry"]["sha256"] in report
    card = read_card(runs / "by_name" / "v" / "checkpoints" / "last.ckpt")
    assert (
        card.init_source["init_from"] == NAME and card.init_source["sha256"] == published["entry"]["sha256"]
    )
    assert Path(card.init_source["file"]).read_bytes() == published["data"]
    assert f"started from: {NAME} (" in str(card)

    published["hub"].stop()  # no hub any more: the cache alone
    offline = hub_env(published, home, HF_HUB_OFFLINE="1", HF_ENDPOINT=closed_port())
    ok(run_cli(*fit_args(tiny_index, runs, "offline", NAME), **offline))
    again = weights_of(runs / "offline" / "v")
    assert all(torch.equal(again[k], by_name[k]) for k in by_name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_custom_yaml_without_network_fails_at_fit_with_one_line_naming_the_weights(tiny_index, tmp_path):
    """configs/custom.yaml names published weights; with no hub in reach and an empty cache, the run stops
    before training with one line that says which file and how to get it (no traceback)."""
    result = run_cli(
        "fit",
        "--config",
        "configs/custom.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32-true",
        "--data.root",
        str(tiny_index),
        "--data.num_workers",
        "0",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        HF_ENDPOINT=closed_port(),
        HF_HOME=str(tmp_path / "empty"),
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    name = "uniformer_s_k400_16x8"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(
        f"error: model.init_from {name}: cannot download Sense-X/uniformer_video/uniformer_small_k400_16x8.pth ("
    )
    assert "is unreachable" in errors[0] and f"not in the cache {tmp_path / 'empty' / 'hub'}" in errors[0]
    assert errors[0].endswith(
        f"run 'python -m src.weights download {name}' where the hub is reachable, or set --model.init_from to a "
        "local file"
    )


def test_a_broken_extra_catalogue_is_one_line_naming_it(tmp_path, monkeypatch):
    bad = tmp_path / "catalogue.json"
    bad.write_text(json.dumps([{"name": "x", "colour": "blue"}]))
    monkeypatch.setenv("STRUCTVIT_WEIGHTS_CATALOGUE", str(bad))
    from src.task import init_from_problem

    problem = init_from_problem("x")
    assert problem.startswith(
        f"model.init_from: STRUCTVIT_WEIGHTS_CATALOGUE={bad}: not a catalogue of weights"
    )
    assert "colour" in problem


def test_ssv1_head_order_is_the_sorted_list_of_the_official_ssv1_class_names():
    """SSV1_SORTED is derived from the SSv2 names: that holds only if SSv1's category list has the same names."""
    path = (
        Path(__file__).resolve().parents[1]
        / ".."
        / "shared"
        / "fixtures"
        / "real_annotations"
        / "ssv1_labels.txt"
    )
    if not path.is_file():
        pytest.skip(f"shared annotation fixtures not found at {path}")
    names = path.read_text(encoding="utf-8").splitlines()
    assert list(SSV1_SORTED) == sorted(names)
