"""Depthwise / channel-multiplier Conv3d with a fast CPU weight gradient.

PyTorch's CPU (oneDNN) backward of a depthwise Conv3d computes the weight gradient very slowly, orders of
magnitude slower than the forward of the same convolution. The weight gradient of a grouped conv with one input channel per group is itself a convolution of
the padded input with the output gradient (batch acting as channels), which oneDNN runs fast; this module
computes it that way. Forward, input gradient and results are those of `F.conv3d`; only the CPU weight
gradient takes the other route. Parameter names and shapes are those of `nn.Conv3d`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _weight_grad(
    x: Tensor,
    grad: Tensor,
    weight_shape: torch.Size,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> Tensor:
    """dL/dW of y = conv3d(x, W, groups=C) with W (C·m, 1, kT, kH, kW): one grouped conv, batch as channels."""
    b, c = x.shape[:2]
    cm, _, *kernel = weight_shape
    pt, ph, pw = padding
    xp = F.pad(x, (pw, pw, ph, ph, pt, pt))
    xp = xp.transpose(0, 1).reshape(1, c * b, *xp.shape[2:])  # channel c·B + b
    g = grad.transpose(0, 1).reshape(cm, b, *grad.shape[2:])  # filter c·m + j reads channels c·B … c·B+B-1
    # dW[o, δ] = Σ_{b, p} g[b, o, p] · x_pad[b, c(o), p·s + δ]: a conv of x_pad with g, dilated by the stride.
    out = F.conv3d(xp, g, groups=c, dilation=stride)
    return out[0, :, : kernel[0], : kernel[1], : kernel[2]].reshape(weight_shape)


class _DepthwiseConv3dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding) -> Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        xc, wc = x.to(dtype), weight.to(dtype)
        bc = bias.to(dtype) if bias is not None else None
        with torch.autocast("cpu", enabled=False):
            y = F.conv3d(xc, wc, bc, stride=stride, padding=padding, groups=x.shape[1])
        ctx.save_for_backward(xc, wc)
        ctx.meta = (
            stride,
            padding,
            x.dtype,
            weight.dtype,
            bias is not None,
            bias.dtype if bias is not None else None,
        )
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        xc, wc = ctx.saved_tensors
        stride, padding, x_dtype, w_dtype, has_bias, b_dtype = ctx.meta
        grad = grad.to(xc.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                grad,
                xc,
                wc,
                None,
                stride,
                padding,
                (1, 1, 1),
                False,
                (0, 0, 0),
                xc.shape[1],
                (True, False, False),
            )[0].to(x_dtype)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(xc, grad, wc.shape, stride, padding).to(w_dtype)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(dim=(0, 2, 3, 4)).to(b_dtype)
        return gx, gw, gb, None, None


class DepthwiseConv3d(nn.Conv3d):
    """`nn.Conv3d(C, C·m, k, groups=C)` whose CPU weight gradient avoids PyTorch's slow depthwise path."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=in_channels,
            bias=bias,
        )

    def forward(self, x: Tensor) -> Tensor:
        # under torch.jit.trace (TorchScript, ONNX export) the plain conv: a Python autograd Function cannot be traced
        if (
            x.device.type != "cpu"
            or not torch.is_grad_enabled()
            or self.padding_mode != "zeros"
            or torch.jit.is_tracing()
        ):
            return super().forward(x)
        return _DepthwiseConv3dFunction.apply(x, self.weight, self.bias, self.stride, self.padding)
