"""Wall-clock timing with warm-up and the median of repeated runs, so figures resist one-off stalls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median (the reported figure), spread, and how many runs made it."""

    median_s: float
    min_s: float
    max_s: float
    reps: int
    warmup: int

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer measures the kernels and not just their launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object], *, reps: int = 5, warmup: int = 1, device: torch.device | str = "cpu"
) -> Timing:
    """Run `fn` `warmup` times untimed, then `reps` times timed; return the median and spread in seconds."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"time_call needs reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    # not torch.utils.benchmark.Timer: timeit(n) adds >= 2 calls of its own, blocked_autorange picks the count (tests)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), max(samples), reps, warmup)
