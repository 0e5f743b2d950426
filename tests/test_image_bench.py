"""The image benchmark (benchmarks/images.py) end to end at a tiny size: every row measured on the same files,
finite rates, the factors computed from them, the JSON written. Timings are never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.images import (
    CLASSIC,
    DECODE,
    FACTORS,
    LOADER,
    OURS_FOLDER,
    OURS_SHARDS,
    PIL_DECODE,
    SUITE_SETTINGS,
    TV_DECODE,
    image_set,
    main,
    table,
)


@pytest.mark.timeout(240)
def test_tiny_run_writes_every_row_and_factor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "images.json"
    cache = tmp_path / "cache"
    assert main(["--images", "6", "--reps", "1", "--cache-dir", str(cache), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "images" and {"cpu", "date"} <= set(result["machine"])
    assert result["settings"]["images"] == 6 and result["settings"]["rand_augment"] == "m9-n2"
    rows = [r for r in result["rows"] if r["type"] == "images"]
    expected = {
        (DECODE, TV_DECODE),
        (DECODE, PIL_DECODE),
        (LOADER, OURS_FOLDER),
        (LOADER, OURS_SHARDS),
        (LOADER, CLASSIC),
    }
    assert {(r["stage"], r["reader"]) for r in rows} == expected
    for r in rows:
        assert r["status"] == "ok" and r["passes"] == 1 and len(r["cpu_s_per_pass"]) == 1
        assert r["images"] == 6 and r["files"] == 6  # one batch holds the whole tiny set
        for key in ("images_per_cpu_s", "images_per_s", "cpu_over_wall"):
            assert math.isfinite(r[key]) and r[key] > 0
    factors = {r["factor"]: r for r in result["rows"] if r["type"] == "ratio"}
    assert set(factors) == {name for name, _, _ in FACTORS}
    assert all(r["pass_min"] <= r["pass_max"] and r["ratio"] > 0 for r in factors.values())
    assert "| decode | torchvision decode_jpeg |" in capsys.readouterr().out
    assert "ImageFolder + PIL" in table(result["rows"])
    # the set is made once: a second call reuses it
    root = image_set(6, cache)
    assert root.is_dir() and len(list((root / "train").glob("*/*.JPEG"))) == 6
    assert (root / "shards" / "shards.json").is_file()


def test_suites_that_run_the_section_have_settings() -> None:
    assert SUITE_SETTINGS["cpu"] == {"images": 256, "reps": 5} and SUITE_SETTINGS["tiny"]["reps"] == 1


@pytest.mark.timeout(240)
def test_after_decord_the_rows_come_from_a_fresh_process_that_counts_the_workers_cpu(tmp_path: Path) -> None:
    """In `make bench` the decoder sections run first: the DataModule's workers then start from a forkserver, whose
    CPU time this process cannot count, so the rows are measured in a fresh interpreter instead."""
    from benchmarks.images import measure
    from src.data.decoding import decord_used_in_this_process
    from tests.helpers.videos import write_test_video

    video = write_test_video(tmp_path / "v.mp4", num_frames=4, size=32)
    from src.data.decoding import read_frames

    read_frames(video, [0, 1], backend="decord")
    assert decord_used_in_this_process()
    logged: list[str] = []
    rows = measure(images=6, reps=1, cache_dir=tmp_path / "cache", log=logged.append)
    assert any("fresh process" in line for line in logged)
    loaders = [r for r in rows if r.get("type") == "images" and r["stage"] == LOADER]
    assert len(loaders) == 3 and all(r["cpu_over_wall"] > 0.2 for r in loaders)  # the workers' CPU is counted
