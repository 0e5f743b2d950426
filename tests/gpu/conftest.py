"""Fixtures of the `gpu` tests: the device and shapes to run at, bounds, and where measurements are recorded.

On a machine with CUDA the tests run on the GPU at the paper's shapes. Without one they skip, unless
GPU_CHECK_DEVICE=cpu (set by `make gpu-check DEVICE=cpu`, which `make test` runs): then they run the same
code on CPU at tiny shapes, so no line of the GPU check can break unnoticed before a GPU is available.
GPU_CHECK_RECORD names a JSON-lines file each test appends its measurements to (benchmarks/gpu_check.py
reads it); GPU_CHECK_TOLERANCE_SCALE multiplies every bound (0 proves a failure is reported).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks.cuda_paths import SHAPES, PathShapes

NO_CUDA = "CUDA is absent (`make gpu-check DEVICE=cpu` runs these tests at tiny shapes on CPU)"


def _device() -> str | None:
    requested = os.environ.get("GPU_CHECK_DEVICE", "").strip()
    if requested == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


@pytest.fixture(scope="session")
def device() -> str:
    """'cuda' where a GPU is visible, 'cpu' in the dry run; skips the test otherwise."""
    found = _device()
    if found is None:
        pytest.skip(NO_CUDA)
    return found


@pytest.fixture(scope="session")
def shapes(device: str) -> PathShapes:
    return SHAPES[device]


@pytest.fixture(scope="session")
def tolerance_scale() -> float:
    return float(os.environ.get("GPU_CHECK_TOLERANCE_SCALE", "1"))


@pytest.fixture
def record(request) -> Callable[[dict], None]:
    """Append a measurement row (with this test's id) to GPU_CHECK_RECORD, if set."""
    path = os.environ.get("GPU_CHECK_RECORD")

    def write(row: dict) -> None:
        if path:
            with Path(path).open("a") as handle:
                handle.write(json.dumps({"test": request.node.nodeid, **row}, default=str) + "\n")

    return write
