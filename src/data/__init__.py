"""The video data pipeline: decoding, sampling, transforms, datasets and the DataModule.

Names are imported lazily so `from src.data.decoding import read_frames` (the dataset doctor, forked
workers) does not pull in Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DecodeError": "src.data.decoding",
    "DecodeTimeoutError": "src.data.decoding",
    "MissingVideoError": "src.data.decoding",
    "VideoInfo": "src.data.decoding",
    "probe": "src.data.decoding",
    "read_frames": "src.data.decoding",
    "ClipSampler": "src.data.sampling",
    "TrainTransform": "src.data.transforms",
    "EvalTransform": "src.data.transforms",
    "FlipPolicy": "src.data.transforms",
    "swap_table": "src.data.transforms",
    "VideoClipDataset": "src.data.datasets",
    "VideoDataModule": "src.data.datamodule",
    "PREPARE_TARGETS": "src.data.catalog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'src.data' has no attribute {name!r}")
