"""conv_im2col: a k x k convolution (one group, no dilation) as im2col + one GEMM, on the CPU.

The rows of im2col are the output pixels, its columns (ky, kx, c): the memory order of a
channels_last weight, which is thus the GEMM's other operand as it is. Forward one GEMM; backward
two (grad_x through col2im, grad_W = dy^T cols, with cols recomputed rather than kept). Where the
output map is small -- the 3x3, 2x2 and 1x1 grids an Inception network reaches at the seeds' 75x75
input, and the stride-2 grid reductions onto them -- this beats oneDNN's convolution, forward +
backward, by 1.1-5x (measured on a 2-core Zen 4; csrc/cpu/conv_im2col.cpp); on larger maps it
loses, and `worth_it` says which is which.

C++ kernels for the CPU (csrc/cpu/conv_im2col.cpp), autograd and autocast in C++
(csrc/autograd/conv_im2col.cpp). On any other device, or without the compiled extension, it is
F.conv2d.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _backend, _library


def conv_im2col_reference(x, weight, bias=None, stride=(1, 1), padding=(0, 0)):
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def output_size(in_hw, kernel, stride, padding) -> tuple[int, int]:
    """(OH, OW) of a convolution (no dilation) of an in_hw map; < 1 where the kernel does not fit."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(in_hw, kernel, stride, padding))


def _out_size(x, weight, stride, padding):
    return output_size(x.shape[2:], weight.shape[2:], stride, padding)


def _fake(x, weight, bias, stride, padding):
    torch._check(x.dim() == 4 and weight.dim() == 4 and weight.shape[1] == x.shape[1],
                 lambda: f"conv_im2col: weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}")
    oh, ow = _out_size(x, weight, stride, padding)
    return x.new_empty((x.shape[0], weight.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)


def _backward_fake(grad_out, x, weight, stride, padding, output_mask):
    grad_x = torch.empty_like(x, memory_format=torch.channels_last) if output_mask[0] else None
    grad_w = torch.empty_like(weight, memory_format=torch.channels_last) if output_mask[1] else None
    grad_b = weight.new_empty(weight.shape[0]) if output_mask[2] else None
    return grad_x, grad_w, grad_b


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::conv_im2col", _fake)
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::conv_im2col_backward", _backward_fake)


def worth_it(out_h: int, out_w: int, stride) -> bool:
    """Whether conv_im2col beats the convolution primitive for an output map of out_h x out_w,
    forward + backward, on the CPU: measured over every k x k conv of the six models at the seeds'
    75x75 input, batch 8 (2-core Zen 4, fp32), it wins on outputs of up to 16 pixels (1.04-5.5x)
    and on stride-2 reductions onto up to 7x7 (1.2-2x), and loses on larger outputs (0.45-0.95x)."""
    pixels = out_h * out_w
    return pixels <= 16 or (max(stride) > 1 and pixels <= 49)


def _check_inputs(x, weight, bias, stride, padding):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"conv_im2col: x must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"conv_im2col: x must be floating point, got {x.dtype}")
    if weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv_im2col: weight must be [O, {x.shape[1]}, kh, kw] for x of shape {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None and t.device != x.device:
            raise ValueError(f"conv_im2col: {name} is on {t.device} but x is on {x.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv_im2col: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if len(stride) != 2 or min(stride) < 1 or len(padding) != 2 or min(padding) < 0:
        raise ValueError(f"conv_im2col: stride must be two ints >= 1 and padding two ints >= 0, got stride "
                         f"{tuple(stride)}, padding {tuple(padding)}")
    if min(_out_size(x, weight, stride, padding)) < 1:
        raise ValueError(f"conv_im2col: the {tuple(weight.shape[2:])} kernel does not fit x of shape "
                         f"{tuple(x.shape)} with padding {tuple(padding)}")


def conv_im2col(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=(1, 1),
                padding=(0, 0)) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding) as im2col + GEMM on the CPU (channels_last output;
    give it a channels_last weight, or it is reordered on every call). Under autocast it runs in the
    autocast dtype, like F.conv2d; otherwise x, weight and bias must share a dtype."""
    stride, padding = tuple(stride), tuple(padding)
    _check_inputs(x, weight, bias, stride, padding)
    if x.device.type != "cpu" or _backend.resolve(x, "conv_im2col") == "reference":
        return conv_im2col_reference(x, weight, bias, stride, padding)
    return _library.namespace("cpu").conv_im2col(x, weight, bias, stride, padding)
