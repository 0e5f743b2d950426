"""DepthwiseConv3d: the same outputs and gradients as PyTorch's own grouped Conv3d, only faster on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.models.depthwise import DepthwiseConv3d


@pytest.mark.parametrize(
    "channels,multiplier,kernel,stride,shape",
    [
        (3, 1, (3, 5, 5), (1, 1, 1), (2, 3, 4, 6, 5)),  # UniFormer's 5x5x5-style depthwise conv
        (3, 4, (3, 3, 3), (1, 2, 2), (2, 3, 3, 6, 7)),  # StructSA's k_struct: C -> C·D, stride (1, S, S)
        (2, 2, (1, 3, 3), (1, 2, 2), (1, 2, 1, 5, 6)),  # image kernel, odd sizes
    ],
)
def test_outputs_and_gradients_equal_grouped_conv3d(channels, multiplier, kernel, stride, shape):
    torch.manual_seed(0)
    conv = DepthwiseConv3d(
        channels, channels * multiplier, kernel, stride=stride, padding=tuple(k // 2 for k in kernel)
    ).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ours = conv(x)
    theirs = F.conv3d(x, conv.weight, conv.bias, stride, conv.padding, groups=channels)
    g = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, (x, conv.weight, conv.bias), g),
        torch.autograd.grad(theirs, (x, conv.weight, conv.bias), g),
    ):
        assert (a - b).abs().max() < 1e-12
    assert torch.equal(ours, theirs)
    assert isinstance(conv, torch.nn.Conv3d) and set(conv.state_dict()) == {"weight", "bias"}


def test_bf16_autocast_returns_bf16_and_float32_gradients():
    conv = DepthwiseConv3d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 2, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert conv.weight.grad.dtype == x.grad.dtype == torch.float32
    assert torch.isfinite(conv.weight.grad).all()
