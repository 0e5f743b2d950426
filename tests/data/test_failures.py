"""DecodeFailureLog on its own: the training rate limit per epoch and the evaluation reports per pass.

The end-to-end behaviour (a real Trainer over broken videos) is in test_datamodule.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from src.data.failures import DecodeFailureLog, DecodeFailureRateError


def eval_batch(rows: list[int], failed: dict[int, str]) -> dict:
    return {
        "index": torch.tensor(rows, dtype=torch.long),
        "failed_index": torch.tensor(list(failed), dtype=torch.long),
        "failed_reason": list(failed.values()),
    }


def test_the_rate_limit_counts_one_epoch_at_a_time_and_names_the_fix(tmp_path: Path) -> None:
    failures = DecodeFailureLog(max_failure_rate=0.1, index_root=tmp_path / "k400")
    shard = DecodeFailureLog.shard_size(39, world_size=2)
    assert shard == 20  # the train sampler pads 39 videos to 2 shards of 20: 2 failures allowed per epoch
    failures.count_train(2, epoch=0, rank=1, shard=shard)
    failures.count_train(0, epoch=0, rank=1, shard=shard)
    failures.count_train(2, epoch=1, rank=1, shard=shard)  # a new epoch starts from 0
    assert (failures.train_epoch, failures.train_total) == (2, 4)
    with pytest.raises(DecodeFailureRateError) as caught:
        failures.count_train(1, epoch=1, rank=1, shard=shard)
    message = str(caught.value)
    assert "3 videos failed to decode in epoch 1 on rank 1" in message
    assert (
        "max_failure_rate=0.1 of 20 videos" in message and f"make doctor INDEX={tmp_path / 'k400'}" in message
    )


def test_an_evaluation_pass_is_reported_when_the_shard_is_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failures = DecodeFailureLog(0.01, tmp_path)
    failures.folder = tmp_path / "run"
    paths = {row: f"videos/{row}.mp4" for row in range(6)}
    track = dict(path_of=paths.__getitem__, shard_total=lambda: 6, rank_world=(1, 2), key=(False, 0, 10, 1))
    with caplog.at_level(logging.INFO):
        failures.track_eval("val", eval_batch([0, 2], {1: "empty file"}), **track)
        assert not (tmp_path / "run").exists() and "evaluated" not in caplog.text  # 3 of 6 seen so far
        failures.track_eval("val", eval_batch([3, 4], {5: "truncated"}), **track)
    report = failures.report("val")
    assert (report.evaluated, report.total) == (4, 6)
    assert report.file == tmp_path / "run" / "failed_val_rank1.txt"  # one file per rank under DDP
    assert report.file.read_text().splitlines() == [
        "1\tvideos/1.mp4\tempty file",
        "5\tvideos/5.mp4\ttruncated",
    ]
    assert f"val: evaluated 4 of 6 videos; 2 failed to decode, listed in {report.file}" in caplog.text
    # the next pass (another key) starts a new report; a clean pass writes nothing and logs at INFO
    failures.track_eval("val", eval_batch([0, 1, 2, 3, 4, 5], {}), **{**track, "key": (False, 1, 20, 1)})
    assert failures.report("val").failed == [] and failures.report("val").evaluated == 6
    assert failures.report("test") is None


def test_a_sanity_check_pass_writes_and_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failures = DecodeFailureLog(0.01, tmp_path)
    failures.folder = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        failures.track_eval(
            "val",
            eval_batch([0], {1: "empty file"}),
            path_of=str,
            shard_total=lambda: 2,
            rank_world=(0, 1),
            key=(True, 0, 0, 1),
        )
    assert not (tmp_path / "run").exists() and "evaluated" not in caplog.text
