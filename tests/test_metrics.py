"""Accuracy metrics, multi-view softmax averaging and the test report files."""

import csv

import pytest
import torch

from src.metrics import (
    MultiViewMetrics,
    accuracy_collection,
    average_views,
    confusion_figure,
    write_confusion_csv,
    write_per_class_csv,
)


def test_top1_top5_and_mean_class_accuracy():
    metrics = accuracy_collection(6)
    logits = torch.eye(6)[[0, 1, 2, 3]]  # predicts 0, 1, 2, 3
    labels = torch.tensor([0, 1, 2, 0])  # the last one is wrong
    values = metrics(logits, labels)
    assert values["top1"].item() == pytest.approx(0.75)
    assert values["top5"].item() == pytest.approx(1.0)  # label 0 is among the 5 best of row 3
    assert values["mean_class"].item() == pytest.approx((0.5 + 1 + 1) / 3)


def test_top5_becomes_top_k_with_fewer_than_five_classes():
    metrics = accuracy_collection(3)
    values = metrics(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([2]))
    assert values["top5"].item() == 1.0 and values["top1"].item() == 0.0


def test_views_are_combined_by_averaging_softmax():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 3.0]])  # 2 videos x 2 views
    view_probs, video_probs = average_views(logits, 2)
    expected = (logits[0].softmax(0) + logits[1].softmax(0)) / 2
    assert torch.allclose(video_probs[0], expected)
    assert video_probs.shape == (2, 2) and view_probs.shape == (4, 2)


def test_all_view_accuracy_can_differ_from_single_view():
    metrics = MultiViewMetrics(2)
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0]])  # one video, views disagree, average says class 0
    view_probs, video_probs = average_views(logits, 2)
    metrics.update(view_probs, video_probs, torch.tensor([0]))
    values = metrics.compute()
    assert values["top1"].item() == 1.0
    assert values["single_view/top1"].item() == 0.5


def test_report_files(tmp_path):
    matrix = torch.tensor([[3, 1], [0, 0]])
    write_confusion_csv(tmp_path / "cm.csv", matrix, ["push", "pull"])
    write_per_class_csv(tmp_path / "pc.csv", matrix, ["push", "pull"])
    rows = list(csv.reader(open(tmp_path / "cm.csv")))
    assert rows == [["true\\pred", "push", "pull"], ["push", "3", "1"], ["pull", "0", "0"]]
    per_class = list(csv.DictReader(open(tmp_path / "pc.csv")))
    assert per_class[0] == {"class": "push", "support": "4", "correct": "3", "accuracy": "0.750000"}
    assert per_class[1]["accuracy"] == ""  # no test videos of that class
    figure = confusion_figure(matrix, ["push", "pull"])
    figure.savefig(tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 1000


# Names a hand-made index may hold; a "$" pair is mathtext to matplotlib unless the text is marked as plain.
AWKWARD_NAMES = [
    "$_$ price",
    "50% off",
    'say "hi"',
    "it's",
    "x^2_y",
    "back\\slash",
    "non\u00a0breaking",
    "two\nlines",
]


def test_class_names_are_drawn_as_written_never_as_markup(tmp_path):
    k = len(AWKWARD_NAMES)
    figure = confusion_figure(torch.eye(k, dtype=torch.long), AWKWARD_NAMES)
    figure.savefig(tmp_path / "cm.png")  # mathtext parsing raised ParseSyntaxException here for "$_$ price"
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == AWKWARD_NAMES
    assert [t.get_text() for t in axes.get_yticklabels()] == AWKWARD_NAMES
    assert (tmp_path / "cm.png").stat().st_size > 1000
    write_confusion_csv(tmp_path / "cm.csv", torch.eye(k, dtype=torch.long), AWKWARD_NAMES)
    assert list(csv.reader(open(tmp_path / "cm.csv", newline="")))[0][1:] == AWKWARD_NAMES
