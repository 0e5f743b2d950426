"""StructViT-Lightning: StructViT (CVPR 2024) for video understanding on PyTorch Lightning."""

__version__ = "0.1.0"
