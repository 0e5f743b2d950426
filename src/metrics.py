"""Classification metrics: top-1, top-5, mean per-class accuracy; multi-view averaging; confusion matrix files."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy


class MeanClassAccuracy(Metric):
    """Mean over classes of per-class top-1 accuracy, counting only classes that have samples (FineGym's metric).

    torchmetrics' macro accuracy also averages in classes that were only predicted (a 0/0 counted as 0);
    a class absent from the evaluated set says nothing about the model, so it is left out here.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("correct", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("support", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds (N, K) scores or (N,) class indices; target (N,)."""
        if preds.dim() == 2:
            preds = preds.argmax(dim=-1)
        target = target.long()
        self.support += torch.bincount(target, minlength=self.num_classes)
        self.correct += torch.bincount(target[preds == target], minlength=self.num_classes)

    def compute(self) -> Tensor:
        """The mean accuracy over classes with support (0 when there were no samples)."""
        present = self.support > 0
        if not present.any():
            return torch.tensor(0.0)
        return (self.correct[present].float() / self.support[present].float()).mean()


def accuracy_collection(num_classes: int) -> MetricCollection:
    """top1 / top5 (micro) and mean_class accuracy; top-5 becomes top-K when K < 5 classes."""
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "mean_class": MeanClassAccuracy(num_classes),
        }
    )


def average_views(logits: Tensor, num_views: int) -> tuple[Tensor, Tensor]:
    """(B*V, K) logits of V views per video -> ((B*V, K) per-view softmax, (B, K) mean softmax over views)."""
    if logits.shape[0] % num_views:
        raise ValueError(f"{logits.shape[0]} rows of logits are not a multiple of {num_views} views")
    probs = logits.float().softmax(dim=-1)
    return probs, probs.view(-1, num_views, probs.shape[-1]).mean(dim=1)


class EpochMetrics(nn.Module):
    """What one epoch of one stage accumulates on this rank, reduced over all ranks by `compute`.

    Accuracy (top-1 / top-5 / mean-class), the mean loss weighted by samples, the number of samples scored
    and of videos that failed to decode. Every value is a torchmetrics state with a fixed shape, so `compute`
    runs the same collectives in the same order on every rank, whatever each rank saw (even nothing).
    `compute` must therefore be called by every rank at the same point (the LightningModule's epoch-end hooks);
    nothing else in the project reduces metrics, so a callback on rank 0 alone never enters a collective.
    In evaluation, `src.hang_guard`'s end-of-epoch meeting runs first (a callback hook, before the module's):
    the ranks enter these all-gathers together, so a rank slower than `collective_timeout` over its whole
    shard is not mistaken for a hung one.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.accuracy = accuracy_collection(num_classes)
        self.loss = MeanMetric(nan_strategy="ignore")
        self.samples = SumMetric()
        self.decode_failures = SumMetric()

    def update(self, scores: Tensor, labels: Tensor, loss: Tensor | None = None) -> None:
        """scores (N, K), labels (N,), loss: the mean loss of these N samples (weighted by N)."""
        self.accuracy.update(scores, labels)
        self.samples.update(float(labels.shape[0]))
        if loss is not None:
            self.loss.update(loss.detach().float(), weight=float(labels.shape[0]))

    def record_failures(self, count: int) -> None:
        """Count videos that failed to decode (substituted in training, skipped in evaluation)."""
        self.decode_failures.update(float(count))

    def compute(self) -> dict[str, Tensor]:
        """{'top1', 'top5', 'mean_class', 'loss', 'samples', 'decode_failures'} over all ranks (a collective).

        With no sample on any rank the accuracies are 0 and the loss NaN; `samples` says so.
        """
        with (
            warnings.catch_warnings()
        ):  # a rank (or an epoch of skipped steps) may have seen nothing: expected
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
            samples = self.samples.compute()
            out = dict(self.accuracy.compute().items())
            loss = self.loss.compute()  # computed (and synced) on every rank, whatever `samples` says
            out["loss"] = loss if samples > 0 else torch.tensor(float("nan"))
            out["samples"] = samples
            out["decode_failures"] = self.decode_failures.compute()
        return out

    def reset(self) -> None:
        """Clear every state (between epochs)."""
        for metric in (self.accuracy, self.loss, self.samples, self.decode_failures):
            metric.reset()


class MultiViewMetrics(nn.Module):
    """Evaluation metrics: all-view (softmax averaged per video, with the loss, the videos scored and the
    videos skipped) and single-view (every view scored alone). See `EpochMetrics` for how they reduce."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.single = accuracy_collection(num_classes)
        self.all = EpochMetrics(num_classes)

    def update(
        self, view_probs: Tensor, video_probs: Tensor, labels: Tensor, loss: Tensor | None = None
    ) -> None:
        """view_probs (B*V, K), video_probs (B, K), labels (B,), loss: mean loss of the B videos."""
        num_views = view_probs.shape[0] // max(labels.shape[0], 1)
        self.single.update(view_probs, labels.repeat_interleave(num_views))
        self.all.update(video_probs, labels, loss)

    def record_failures(self, count: int) -> None:
        """Count videos skipped because they failed to decode."""
        self.all.record_failures(count)

    def compute(self) -> dict[str, Tensor]:
        """{'top1', ..., 'loss', 'videos', 'decode_failures', 'single_view/top1', ...} over all ranks (a collective)."""
        out = self.all.compute()
        out["videos"] = out.pop("samples")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
            out.update({f"single_view/{name}": value for name, value in self.single.compute().items()})
        return out

    def reset(self) -> None:
        """Clear every state (between epochs)."""
        self.single.reset()
        self.all.reset()


def write_confusion_csv(path: Path, matrix: Tensor, class_names: Sequence[str]) -> None:
    """Rows = true class, columns = predicted class, with a header row and a first column of class names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\pred", *class_names])
        for name, row in zip(class_names, matrix.tolist()):
            writer.writerow([name, *[int(v) for v in row]])


def write_per_class_csv(path: Path, matrix: Tensor, class_names: Sequence[str]) -> None:
    """One row per class: name, number of test videos, correct, accuracy (empty where a class has no videos)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    support = matrix.sum(dim=1)
    correct = matrix.diagonal()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "support", "correct", "accuracy"])
        for i, name in enumerate(class_names):
            n, c = int(support[i]), int(correct[i])
            writer.writerow([name, n, c, f"{c / n:.6f}" if n else ""])


def confusion_figure(matrix: Tensor, class_names: Sequence[str]):
    """A matplotlib figure of the row-normalised confusion matrix (class names on the axes when <= 60)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.float()
    norm = m / m.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(class_names)
    size = min(4 + 0.25 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 60:
        # names are data: parse_math=False keeps "$", "_", "^" literal ("$...$" is mathtext otherwise)
        ax.set_xticks(range(k), labels=class_names, rotation=90, fontsize=6, parse_math=False)
        ax.set_yticks(range(k), labels=class_names, fontsize=6, parse_math=False)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
