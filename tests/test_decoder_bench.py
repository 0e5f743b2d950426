"""The fair decoder benchmark (benchmarks/decoders.py): a row for every reader and codec, sane factors, a cold
PyAV cache, the same frames from every reader, and file sets generated once.

Timings are never asserted (they depend on the machine); the protocol and the table's structure are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.decoders import (
    BEFORE,
    DECODE,
    FACTORS,
    JPEG,
    ON_CPU,
    ON_DEVICE,
    QUICK_KINDS,
    TRANSFORM_CPU,
    TRANSFORM_DEVICE,
    file_sets,
    main,
    readers,
)
from benchmarks.tables import decoder_tables

VIDEO_SETS = ("k400-340p", "ssv2")


@pytest.mark.timeout(180)
def test_quick_run_measures_every_reader_and_codec_with_finite_factors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "decoders.json"
    assert main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    clips = [r for r in rows if r["type"] == "clips" and r["status"] == "ok"]
    for dataset in VIDEO_SETS:
        mine = {(r["stage"], r["reader"]) for r in clips if r["dataset"] == dataset}
        for reader in ("pyav", "decord", BEFORE):
            assert {(DECODE, reader), (ON_CPU, reader), (ON_DEVICE, reader)} <= mine
        assert {(TRANSFORM_CPU, "—"), (TRANSFORM_DEVICE, "—")} <= mine
        # torchcodec: measured where it works, else a skipped row that says why
        assert any(r["dataset"] == dataset and r["reader"] == "torchcodec" for r in rows)
    jpeg = {(r["stage"], r["reader"]) for r in clips if r["dataset"] == "ssv1"}
    assert {(DECODE, JPEG), (ON_CPU, JPEG), (ON_DEVICE, JPEG)} <= jpeg
    for r in clips:
        assert r["files"] == 4 and r["passes"] == 3 and len(r["cpu_s_per_pass"]) == 3
        assert math.isfinite(r["clips_per_cpu_s"]) and r["clips_per_cpu_s"] > 0
        assert r.get("mismatched_clips_vs_pyav", 0) == 0  # every reader returned PyAV's very frames
    # the whole worker costs more than either of its parts
    by = {(r["dataset"], r["stage"], r["reader"]): r["clips_per_cpu_s"] for r in clips}
    assert by[("k400-340p", ON_CPU, "decord")] < by[("k400-340p", DECODE, "decord")]
    assert by[("k400-340p", ON_CPU, "decord")] < by[("k400-340p", TRANSFORM_CPU, "—")]
    factors = [r for r in rows if r["type"] == "ratio"]
    expected = {name for name, top, bottom in FACTORS if "torchcodec" not in (top[1], bottom[1])}
    for dataset in VIDEO_SETS:
        assert expected - {f for f in expected if "JPEG" in f} <= {
            r["factor"] for r in factors if r["dataset"] == dataset
        }
    by_row = {(r["dataset"], r["stage"], r["reader"]): r for r in clips}
    for r in factors:
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        # the range is that of the paired per-pass ratios (the median rates' ratio may fall outside it)
        top, bottom = next((t, b) for name, t, b in FACTORS if name == r["factor"])
        a, b = by_row[(r["dataset"], *top)], by_row[(r["dataset"], *bottom)]
        per_pass = [sb / sa for sa, sb in zip(a["cpu_s_per_pass"], b["cpu_s_per_pass"])]
        assert (r["pass_min"], r["pass_max"]) == (round(min(per_pass), 3), round(max(per_pass), 3))
    table = decoder_tables(rows)
    for dataset in (*VIDEO_SETS, "ssv1"):
        assert f"| {dataset} |" in table
    assert "loader per core" in table and "identical" in table

    # runs side by side (BENCHMARKS.md): one column per run, the spread over them
    second = {**result, "rows": [{**r, "ratio": r["ratio"] * 2} if r["type"] == "ratio" else r for r in rows]}
    (tmp_path / "second.json").write_text(json.dumps(second))
    capsys.readouterr()
    assert main(["--summarize", str(out), str(tmp_path / "second.json")]) == 0
    summary = capsys.readouterr().out
    factor = factors[0]
    line = next(ln for ln in summary.splitlines() if f"| {factor['dataset']} | {factor['factor']} |" in ln)
    low, high = factor["ratio"], factor["ratio"] * 2
    assert f"| {low:.2f}× | {high:.2f}× | {low:.2f}-{high:.2f}× |" in line
    decode = next(
        r for r in clips if r["dataset"] == "ssv2" and r["stage"] == DECODE and r["reader"] == "decord"
    )
    rate = f"{decode['clips_per_cpu_s']:.2f}"
    assert f"| ssv2 | {DECODE} | decord | {rate} | {rate} | {rate}-{rate} |" in summary


def test_the_pyav_row_reads_every_clip_with_an_empty_timestamp_cache(tmp_path: Path) -> None:
    """A worker of a real epoch sees each file about once: the PyAV row may not reuse a cached table."""
    from src.data.decoding import pyav_reader

    kind = QUICK_KINDS[0]
    (index,) = file_sets([kind], 2, tmp_path, log=lambda _: None)
    read = readers(kind)[0]["pyav"]
    for path in sorted((index / "videos").iterdir()):
        read(path, [0, 4, 8])
    assert len(pyav_reader._PROBE_CACHE) == 1  # the last file's table only: each read began empty


def test_file_sets_are_generated_once_and_hold_the_gops_and_b_frames_they_claim(tmp_path: Path) -> None:
    from src.data.decoding.pyav_reader import demux_timestamps

    kind = QUICK_KINDS[0]
    (first,) = file_sets([kind], 2, tmp_path, log=lambda _: None)
    stamps = {p: p.stat().st_mtime_ns for p in (first / "videos").iterdir()}
    (again,) = file_sets([kind], 2, tmp_path, log=lambda _: None)
    assert again == first and {p: p.stat().st_mtime_ns for p in (again / "videos").iterdir()} == stamps
    import av

    for i, path in enumerate(sorted(stamps)):
        info, table, keyframes = demux_timestamps(path)
        assert len(keyframes) == math.ceil(info.num_frames / kind.gops[i])  # one keyframe per GOP
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.has_b_frames  # B-frames, as x264 writes them


@pytest.mark.timeout(120)
def test_compare_frames_checks_every_reader_against_pyav_on_a_folder_of_videos(
    tmp_path: Path, capsys
) -> None:
    """The check a user runs on their own footage: identical clips exit 0; a file PyAV cannot read exits 1."""
    from tests.helpers.videos import write_test_video

    write_test_video(tmp_path / "ok" / "a.mp4", 80, size=64, pattern="textured")
    write_test_video(tmp_path / "ok" / "b.webm", 80, size=64, codec="vp9", pattern="textured")
    assert main(["--compare-frames", str(tmp_path / "ok")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("17/17 clips identical" in line for line in lines), lines
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "c.mp4").write_bytes((tmp_path / "ok" / "a.mp4").read_bytes()[:3000])  # truncated
    assert main(["--compare-frames", str(tmp_path / "bad")]) == 1
