"""Training-step throughput (clips/s) and peak memory of whole models, side by side.

One step = forward, cross-entropy, backward, AdamW update, on a fixed random clip batch; the optimiser
state is created during warm-up, so the measured peak is that of a steady-state step. The models' timed
steps alternate, so the ratios between them are side by side even on a host whose load drifts.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks.kernels import sdpa_kernels
from benchmarks.memory import cpu_profile, oom_reason, operator_names, peak_bytes
from benchmarks.timing import time_call


@dataclass(frozen=True)
class ModelCase:
    """A registry model name with overrides, at one input (B, 3, T, H, W)."""

    label: str
    name: str
    overrides: dict = field(default_factory=dict)


# The three models compared: UniFormer-S (D = 0) and StructViT-S-4 with key/value stride 2 and 1.
MODEL_CASES = (
    ModelCase("uniformer_s", "uniformer_s"),
    ModelCase("structvit_s S=2", "structvit_s", {"structure_dim": 4, "kv_stride": 2}),
    ModelCase("structvit_s S=1", "structvit_s", {"structure_dim": 4, "kv_stride": 1}),
)


class Trainee:
    """A registry model in training mode with its AdamW optimiser; `step(clips, labels)` is one training step
    (forward under bf16 autocast when asked, cross-entropy, backward, optimiser step)."""

    def __init__(self, case: ModelCase, device: str, bf16: bool, num_classes: int = 400) -> None:
        from src.models import build_model

        torch.manual_seed(0)
        self.model = build_model(case.name, num_classes=num_classes, **case.overrides).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.autocast = (
            torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )

    def step(self, clips: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = F.cross_entropy(self.model(clips), labels)
        loss.backward()
        self.optimizer.step()


def _prepare(
    case: ModelCase, *, batch: int, frames: int, size: int, device: str, bf16: bool, num_classes: int
) -> tuple[Callable[[], None], dict]:
    """(one training step of the built model, the row describing it)."""
    trainee = Trainee(case, device, bf16, num_classes)
    model = trainee.model
    clips = torch.randn(batch, 3, frames, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        trainee.step(clips, labels)

    row = {
        "label": case.label,
        "model": case.name,
        "overrides": case.overrides,
        "input": [batch, 3, frames, size, size],
        "device": device,
        "precision": "bf16-autocast" if bf16 else "fp32",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }
    return step, row


def measure_models(
    cases: list[ModelCase],
    *,
    batch: int,
    frames: int,
    size: int,
    reps: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    bf16: bool = False,
    num_classes: int = 400,
) -> list[dict]:
    """Median step time, clips/s and peak memory of each model, one JSON-ready row per model.

    The models' timed steps are interleaved (model 1, 2, 3, 1, 2, 3, ...), so a change in the host's load
    during the run hits every model alike and the ratios between them stay fair.
    """
    prepared = [
        _prepare(c, batch=batch, frames=frames, size=size, device=device, bf16=bf16, num_classes=num_classes)
        for c in cases
    ]
    samples: list[list[float]] = [[] for _ in prepared]
    rows = []
    try:
        for step, _ in prepared:
            time_call(step, reps=1, warmup=warmup, device=device)  # warm-up; creates the optimiser state
        for _ in range(reps):
            for i, (step, _) in enumerate(prepared):
                samples[i].append(time_call(step, reps=1, warmup=0, device=device).median_s)
        for (step, row), times in zip(prepared, samples):
            if torch.device(device).type == "cpu":
                peak, ops = cpu_profile(step)
            else:
                peak, ops = peak_bytes(step, device), operator_names(step)
            median = statistics.median(times)
            rows.append(
                {
                    **row,
                    "status": "ok",
                    "step_ms": round(median * 1e3, 2),
                    "min_ms": round(min(times) * 1e3, 2),
                    "max_ms": round(max(times) * 1e3, 2),
                    "reps": len(times),
                    "clips_per_s": round(batch / median, 3),
                    "peak_mib": round(peak / 2**20, 1),
                    "sdpa_kernels": sdpa_kernels(ops),
                }
            )
    except (torch.OutOfMemoryError, MemoryError) as err:
        reason = oom_reason(err)
        done = {r["label"] for r in rows}
        rows += [
            {**row, "status": "oom", "reason": reason} for _, row in prepared if row["label"] not in done
        ]
    return rows
