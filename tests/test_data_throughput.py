"""benchmarks.data_throughput (formerly src.data.throughput): clips/s of the training pipeline per backend."""

from pathlib import Path

import pytest

from benchmarks import data_throughput


def test_measure_times_both_backends_over_the_real_train_loader(tmp_path, monkeypatch):
    pytest.importorskip("decord")
    small = data_throughput.write_benchmark_video  # the real 568x320 video takes long to encode: a small one

    def write_small(path: Path) -> Path:
        return small(path, size=(64, 96))

    monkeypatch.setattr(data_throughput, "write_benchmark_video", write_small)
    result = data_throughput.measure(tmp_path, clips=1, reps=1)
    assert set(result) == {"decord", "pyav"}
    for figures in result.values():
        assert figures["clips_per_s"] > 0 and figures["decode_only_clips_per_s"] > 0
        assert len(figures["pass_s"]) == 1  # rep 0 was the warm-up
