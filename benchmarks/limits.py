"""Cut-offs for the quadratic reference path: predict its memory and time, and skip before it hurts the host.

A reference-path run that exhausts RAM does not raise on Linux, the OOM killer ends the whole benchmark, so
the harness predicts first and skips with a recorded reason. Predictions scale the largest measured run of
the same configuration by N·N' (the quadratic term dominates; the constant and linear terms make the
extrapolation an overestimate, i.e. on the safe side). The contract's floor, N·N'·D·heads·8 bytes, covers
configurations with no measured run yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """Largest predicted peak memory (bytes) and wall time for one case (seconds) the harness will attempt."""

    memory_bytes: int = 8 * 2**30
    seconds: float = 120.0


@dataclass
class Observation:
    """One measured run: its quadratic size N·N', peak bytes and seconds per call."""

    pairs: int
    peak_bytes: int
    seconds: float


@dataclass
class QuadraticPredictor:
    """Remembers the largest measured run per configuration key and extrapolates it by N·N'."""

    observed: dict[tuple, Observation] = field(default_factory=dict)

    def record(self, key: tuple, pairs: int, peak_bytes: int, seconds: float) -> None:
        """Keep this run if it is the largest of its configuration so far."""
        old = self.observed.get(key)
        if old is None or pairs >= old.pairs:
            self.observed[key] = Observation(pairs, peak_bytes, seconds)

    def predict(self, key: tuple, pairs: int, floor_bytes: int = 0) -> tuple[int, float | None]:
        """(predicted peak bytes, predicted seconds per call or None) for a run of `pairs` = N·N'."""
        obs = self.observed.get(key)
        if obs is None:
            return floor_bytes, None
        scale = pairs / obs.pairs
        return max(floor_bytes, int(obs.peak_bytes * scale)), obs.seconds * scale


def contract_floor_bytes(tokens: int, keys: int, structure_dim: int, heads: int) -> int:
    """The contract's lower bound on the reference path's memory: N·N'·max(D,1)·heads·8 bytes."""
    return tokens * keys * max(structure_dim, 1) * heads * 8


def check(budget: Budget, predicted_bytes: int, predicted_seconds: float | None, calls: int) -> str | None:
    """None if the case fits the budget, else the reason it is skipped (stated in the results)."""
    if predicted_bytes > budget.memory_bytes:
        return (
            f"skipped: predicted peak {predicted_bytes / 2**30:.1f} GiB > budget "
            f"{budget.memory_bytes / 2**30:.1f} GiB"
        )
    if predicted_seconds is not None and predicted_seconds * calls > budget.seconds:
        return (
            f"skipped: predicted {predicted_seconds * calls:.0f} s for {calls} calls > budget "
            f"{budget.seconds:.0f} s"
        )
    return None


def device_memory_budget(device: str, cap_bytes: int | None = None) -> int:
    """`cap_bytes` (none: no cap of its own) lowered to 80% of the GPU's memory on CUDA, or to 70% of the
    memory the host has available now on CPU (a run that exhausts RAM is killed, not told)."""
    import torch

    from benchmarks.machine import available_memory_bytes

    if torch.device(device).type == "cuda":
        limit = int(torch.cuda.get_device_properties(0).total_memory * 0.8)
    else:
        available = available_memory_bytes()
        limit = int(available * 0.7) if available else None
    if cap_bytes is None:
        return limit if limit is not None else 8 * 2**30
    return cap_bytes if limit is None else min(cap_bytes, limit)
