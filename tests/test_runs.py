"""src.runs: run folders, checkpoint discovery and the test-result arithmetic shared by the CLI, the demo
and the studies."""

from __future__ import annotations

import pytest

from src.models.checkpoints import CheckpointFileError
from src.runs import best_checkpoint, last_checkpoint, next_version, summarize


# ------------------------------------------------------------------------------------- result arithmetic
def test_reversed_pair_accuracy_counts_only_clips_of_paired_classes():
    names = ["right", "left", "grow", "bounce"]
    matrix = [  # rows: true class, columns: predicted
        [3, 1, 0, 0],  # right: 3 of 4 right, 1 taken for its reversal
        [2, 2, 0, 0],  # left: 2 of 4, 2 taken for its reversal
        [0, 0, 4, 0],  # grow: unpaired here
        [0, 0, 1, 3],  # bounce: unpaired
    ]
    res = summarize(names, matrix, pairs=[[0, 1]], top5=0.95)
    assert res.clips == 16
    assert res.top1 == pytest.approx(12 / 16)
    assert res.mean_class == pytest.approx((0.75 + 0.5 + 1.0 + 0.75) / 4)
    assert res.reversed_clips == 8
    assert res.reversed_pairs == pytest.approx(5 / 8)
    assert res.reversed_confusion == pytest.approx(3 / 8)
    assert res.top5 == 0.95
    assert res.per_class == {"right": 0.75, "left": 0.5, "grow": 1.0, "bounce": 0.75}


def test_mean_class_accuracy_leaves_out_classes_without_test_clips():
    res = summarize(["a", "b", "c"], [[1, 1, 0], [0, 0, 0], [0, 0, 2]], pairs=[])
    assert res.mean_class == pytest.approx((0.5 + 1.0) / 2)
    assert res.reversed_pairs is None and res.reversed_clips == 0


def test_an_empty_confusion_matrix_is_an_error_not_zero_accuracy():
    with pytest.raises(ValueError, match="no test clip"):
        summarize(["a", "b"], [[0, 0], [0, 0]], pairs=[[0, 1]])


def test_next_version_follows_the_existing_run_folders(tmp_path):
    assert next_version(tmp_path, "synthetic") == 0
    for name in ("version_0", "version_3", "version_x", "other"):
        (tmp_path / "synthetic" / name).mkdir(parents=True)
    assert next_version(tmp_path, "synthetic") == 4


def test_best_checkpoint_prefers_best_over_last_and_names_the_folder_when_empty(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=str(folder)):
        best_checkpoint(tmp_path)
    (folder / "last.ckpt").write_bytes(b"x")
    assert best_checkpoint(tmp_path).name == "last.ckpt"
    (folder / "best-004-100.ckpt").write_bytes(b"x")
    assert best_checkpoint(tmp_path).name == "best-004-100.ckpt"


def test_last_checkpoint_names_where_it_looked_when_the_run_has_none(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no last.ckpt under .*fresh/version_\*/checkpoints/"):
        last_checkpoint(tmp_path, "fresh")


def test_last_checkpoint_refuses_a_run_whose_checkpoints_are_all_corrupt(tmp_path):
    folder = tmp_path / "run" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFileError, match="no intact checkpoint under"):
        last_checkpoint(tmp_path, "run")
