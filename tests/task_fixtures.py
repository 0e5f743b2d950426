"""Tiny in-memory video clips batched by the DataModule's own collate functions, for tests of the task and callbacks."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset

from src.data.datasets import EvalCollate, collate_train

NUM_CLASSES = 4


class OneThread:
    """Context manager: torch on one thread. On a shared 2-core machine, 2 threads per test process thrash."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


CLIP = (3, 8, 32, 32)


class TinyClips(Dataset):
    """`n` clips whose class is the sign pattern of their mean (learnable in a few steps); optional delay.

    Items are those of the project's dataset (src/data/datasets.py `VideoClipDataset`), so the loader below
    batches them with its collate functions, the one definition of the batch format: a training item is
    `video` (1, 3, T, H, W), `label` (1,), `index`, `decode_failures`; with `views` an evaluation item is
    `video` (views, 3, T, H, W), `label`, `index`, `path` (`clip<i>.mp4`) and `failed`.
    """

    def __init__(
        self, n: int = 8, views: int | None = None, nan_rows: tuple[int, ...] = (), delay: float = 0.0
    ):
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.videos = (
            torch.randn(n, *CLIP, generator=generator) * 0.1 + self.labels.view(-1, 1, 1, 1, 1) * 0.5
        )
        self.views = views
        self.nan_rows = set(nan_rows)
        self.delay = delay

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return f"clip{i}.mp4"

    def __getitem__(self, i: int) -> dict:
        if self.delay:
            time.sleep(self.delay)
        video = self.videos[i].clone()
        if i in self.nan_rows:
            video.fill_(float("nan"))
        if self.views:
            views = torch.stack([video + 0.01 * v for v in range(self.views)])
            return {
                "failed": False,
                "video": views,
                "label": int(self.labels[i]),
                "index": i,
                "path": self.path(i),
            }
        return {"video": video[None], "label": self.labels[i : i + 1], "index": i, "decode_failures": 0}


def loader(
    dataset: TinyClips, batch_size: int = 4, shuffle: bool = False, predict: bool = False
) -> DataLoader:
    """A DataLoader with the project's collate for the dataset's items: train, eval, or predict (`predict`)."""
    if dataset.views:
        collate = EvalCollate((dataset.views, *CLIP), predict=predict)
    else:
        collate = collate_train
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)
