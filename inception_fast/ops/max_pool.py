"""max_pool: 2-D max pooling (no dilation) without the index tensor, on the CPU.

ATen's CPU max_pool2d always computes int64 argmax indices and scans each window one channel at a
time: on GoogLeNet's maps (the 3x3/1 pool branch of every Inception block, the stem's 3x3/2 pools)
it runs at 1/10-1/20 of the memory bandwidth. This kernel takes 16 or 32 channels at a time
(channels_last, the window's rows then its columns: kh + kw - 2 comparisons an output) or a run of
output columns at a time (NCHW), and its backward recomputes each window's argmax from x rather
than storing indices. The semantics are ATen's: output size with ceil_mode, padding skipped, NaN
propagated, ATen's values (where a window's maximum is a zero held as both -0 and +0, the sign can
differ), and the gradient routed to the element ATen's index names (the first maximum in row-major
window order).

C++ kernels for the CPU (csrc/cpu/max_pool.cpp), autograd in C++ (csrc/autograd/max_pool.cpp). On
other devices (cuDNN's pooling is the fast one there) or without the compiled extension it is
F.max_pool2d.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _backend, _library


def _pair(v, name):
    v = (v, v) if isinstance(v, int) else tuple(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ValueError(f"max_pool: {name} must be an int or two ints, got {v!r}")
    return v


def max_pool_reference(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    return F.max_pool2d(x, kernel_size, stride if stride is not None else kernel_size, padding, ceil_mode=ceil_mode)


def output_size(in_hw, kernel, stride, padding, ceil_mode) -> tuple[int, int]:
    """(OH, OW) of a max pool as ATen computes it (with ceil_mode, the last window must start inside
    the input or its left padding); < 1 where the window does not fit."""
    out = []
    for n, k, s, p in zip(in_hw, kernel, stride, padding):
        o = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    return tuple(out)


def _memory_format(x):
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _fake(x, kernel_size, stride, padding, ceil_mode):
    oh, ow = output_size(x.shape[2:], kernel_size, stride, padding, ceil_mode)
    return x.new_empty((x.shape[0], x.shape[1], oh, ow)).contiguous(memory_format=_memory_format(x))


def _backward_fake(grad_out, x, kernel_size, stride, padding, ceil_mode):
    return torch.empty_like(x, memory_format=_memory_format(x))


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::max_pool", _fake)
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::max_pool_backward", _backward_fake)


def _check_inputs(x, kernel, stride, padding, ceil_mode):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"max_pool: x must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"max_pool: x must be floating point, got {x.dtype}")
    if min(kernel) < 1 or min(stride) < 1:
        raise ValueError(f"max_pool: kernel_size and stride must be positive, got {kernel} and {stride}")
    if min(padding) < 0 or padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"max_pool: padding must be between 0 and half the kernel size, got padding {padding} "
                         f"for kernel {kernel}")
    if min(output_size(x.shape[2:], kernel, stride, padding, ceil_mode)) < 1:
        raise ValueError(f"max_pool: a {kernel} window with padding {padding} does not fit an input of size "
                         f"{tuple(x.shape[2:])}")


def max_pool(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False) -> torch.Tensor:
    """F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode) (no dilation); on the CPU
    the C++ kernel (output in x's memory format), elsewhere F.max_pool2d."""
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or stride == () else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    ceil_mode = bool(ceil_mode)
    _check_inputs(x, kernel, stride, padding, ceil_mode)
    if x.device.type != "cpu" or _backend.resolve(x, "max_pool") == "reference":
        return max_pool_reference(x, kernel, stride, padding, ceil_mode)
    return _library.namespace("cpu").max_pool(_library.dense(x), kernel, stride, padding, ceil_mode)
