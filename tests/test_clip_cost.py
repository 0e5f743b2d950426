"""benchmarks.clip_cost: every step of one clip's CPU time is measured, on real generated videos, with the
pipeline's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.clip_cost import measure
from benchmarks.suites import TINY_KINETICS, TINY_SSV2


@pytest.mark.timeout(300)
def test_every_step_of_a_clip_is_timed_for_both_kinds(tmp_path: Path) -> None:
    rows = measure(kinds=(TINY_KINETICS, TINY_SSV2), cache_dir=tmp_path, clips=2, reps=1)
    steps = {
        "demux (timestamp table)",
        "seek + decode, every frame",
        "seek + decode, unwanted non-ref skipped",
        "colour conversion, converter per frame",
        "colour conversion, one converter",
        "read_frames (whole read)",
        "crop (+ resize)",
        "RandAugment",
        "flip + normalise + erase",
    }
    for dataset in ("k400", "ssv2"):
        mine = {r["step"]: r for r in rows if r["dataset"] == dataset}
        assert set(mine) == steps
        assert all(r["ms_per_clip"] > 0 and len(r["ms_per_clip_passes"]) == 1 for r in mine.values())
