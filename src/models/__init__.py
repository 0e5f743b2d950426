"""StructSA, the StructViT / UniFormer family and pytorchvideo baselines, built by name."""

from .registry import build_model, list_models, model_options, register_model

__all__ = ["build_model", "list_models", "model_options", "register_model"]
