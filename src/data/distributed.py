"""Samplers that shard a split over DDP ranks: shuffled for training, contiguous and exact for evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from src.data.datasets import EMPTY_SHARD, sample_seed


class TrainSampler(Sampler):
    """Yields `(index, seed)`: an epoch's permutation, padded to a multiple of the world size, one shard per rank.

    The per-sample seed is a function of (seed, epoch, position in the global permutation), so clips do not
    depend on the number of DataLoader workers. Lightning calls `set_epoch` at every epoch.
    """

    def __init__(
        self, num_items: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ):
        if num_items < 1:
            raise ValueError("the training split is empty (after limit and quarantine)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.num_samples = math.ceil(num_items / world_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of epoch `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
            if self.shuffle
            else np.arange(self.num_items)
        )
        total = self.num_samples * self.world_size
        order = np.resize(order, total)  # wrap around so every rank gets the same number of batches
        for position in range(self.rank, total, self.world_size):
            yield int(order[position]), sample_seed(self.seed, self.epoch, position)


class EvalSampler(Sampler):
    """Contiguous shard `rank` of `world_size` over `num_items`, no padding: every item exactly once overall.

    A rank whose shard is empty (fewer items than ranks) yields `EMPTY_SHARD` once, which the dataset turns
    into a placeholder that the collate drops: every rank then runs at least one evaluation step and its
    epoch-end hooks, so the metric reductions there meet on all ranks instead of waiting for a missing one.
    """

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.start = rank * num_items // world_size
        self.stop = (rank + 1) * num_items // world_size

    @property
    def num_videos(self) -> int:
        """How many real items this shard holds (0 for an empty shard)."""
        return self.stop - self.start

    def __len__(self) -> int:
        return max(self.num_videos, 1)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop) if self.num_videos else [EMPTY_SHARD])
