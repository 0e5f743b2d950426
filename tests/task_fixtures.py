"""Tiny in-memory video batches in the DataModule's batch format, for tests of the task and callbacks."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset

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
    """`n` clips whose class is the sign pattern of their mean (learnable in a few steps); optional delay."""

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

    def __getitem__(self, i: int) -> dict:
        if self.delay:
            time.sleep(self.delay)
        video = self.videos[i].clone()
        if i in self.nan_rows:
            video.fill_(float("nan"))
        if self.views:
            video = torch.stack([video + 0.01 * v for v in range(self.views)])
        return {"video": video, "label": self.labels[i], "index": torch.tensor(i)}


def collate_train(items: list[dict]) -> dict:
    """Stack clips; `decode_failures` is a scalar per batch as in the DataModule contract."""
    batch = {key: torch.stack([item[key] for item in items]) for key in ("video", "label", "index")}
    batch["decode_failures"] = torch.tensor(0)
    return batch


def collate_eval(items: list[dict]) -> dict:
    """Stack (V, 3, T, H, W) views; no failures."""
    batch = {key: torch.stack([item[key] for item in items]) for key in ("video", "label", "index")}
    batch["failed_index"] = torch.zeros(0, dtype=torch.long)
    return batch


def loader(dataset: TinyClips, batch_size: int = 4, shuffle: bool = False) -> DataLoader:
    """A DataLoader with the collate function that matches the dataset (train or eval)."""
    collate = collate_eval if dataset.views else collate_train
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)
