"""The datasets this project prepares: each name's default index folder and the `make` target that writes it.

The recipe of a dataset (sampling, frames, crop, augmentation, flip policy, test views) is not here: it is the
`data:` section of `configs/<name>.yaml`, written out in full so that `--print_config` and every run's
config.yaml show each value that runs. `config_data(name)` reads that section for code outside the CLI
(benchmarks, tests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from src.paths import configs_dir

# dataset name -> the make target that prepares its index
PREPARE_TARGETS: dict[str, str] = {
    "k400": "prepare-k400",
    "ssv2": "prepare-ssv2",
    "ssv1": "prepare-ssv1",
    "diving48": "prepare-diving48",
    "gym99": "prepare-gym",
    "gym288": "prepare-gym",
    "synthetic": "prepare-synthetic",
    "imagenet": "prepare-imagenet",
    "synthetic_images": "prepare-synthetic-images",
    "custom": "prepare-folder SRC=<your video folder>",
}


def default_root(dataset: str) -> Path:
    """`$DATA_ROOT/<dataset>`, or `./data/<dataset>` when DATA_ROOT is unset."""
    return Path(os.environ.get("DATA_ROOT") or "data") / dataset


def prepare_hint(dataset: str) -> str:
    """The make target that prepares `dataset` (any other name: a generic hint)."""
    return PREPARE_TARGETS.get(dataset, "prepare-<dataset>")


def config_data(name: str) -> dict[str, Any]:
    """The `data:` section of configs/<name>.yaml: the dataset's recipe as the CLI runs it."""
    import yaml

    configs = configs_dir()
    path = configs / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in configs.glob("*.yaml"))
        raise ValueError(f"no dataset config {path}; known: {known}")
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["data"])
