"""Who measured: CPU model, cores, threads, GPU, library versions and date, stored with every result."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def available_memory_bytes() -> int | None:
    """MemAvailable of the host in bytes (None where /proc/meminfo is absent)."""
    gib = _mem_gib("MemAvailable")
    return None if gib is None else int(gib * 2**30)


def machine_info() -> dict:
    """A JSON-ready description of this machine and software, for the header of every result file."""
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _mem_gib("MemTotal"),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info
