"""`onednn_conv`: optimize()'s CPU convolution on a oneDNN primitive kept per geometry
(schemas in csrc/ops.cpp, in inception_fast._C; the CPU kernels in csrc/onednn/onednn_conv.cpp, the optional
extension inception_fast._onednn, which loads only where _C does).

    packed = onednn_conv_pack(weight, input_size, stride, padding, post_op)   # once per input size
    y = onednn_conv(x, packed, weight.shape, bias, stride, padding, post_op, other)
    # == act(conv2d(x, weight, bias, stride, padding) [+ other]) in channels_last;
    #    post_op: 1 ReLU, 2 add `other` (before the ReLU), 3 both

ATen's oneDNN convolution builds the primitive's descriptor on every call (15-50 us for the brgemm
kernels); the primitive here is made once and looked up. float32 and bfloat16, CPU tensors, no
gradient (inference: optimize()).
"""
from __future__ import annotations

import torch

from inception_fast import _ext

__all__ = ["available", "onednn_conv", "onednn_conv_pack", "onednn_conv_reference"]


def available() -> bool:
    """Whether the ops have their kernels: _onednn loaded (and with it _C, which declares them)."""
    return _ext.loaded() and _ext.onednn_loaded()


def _out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _fake(x, packed, weight_size, bias, stride, padding, post_op, other):
    n, _, h, w = x.shape
    shape = (n, weight_size[0], _out_size(h, weight_size[2], stride[0], padding[0]),
             _out_size(w, weight_size[3], stride[1], padding[1]))
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


if _ext.loaded():  # the schema is _C's: its fake kernel goes with it, with or without _onednn
    torch.library.register_fake(f"{_ext.OPS_NAMESPACE}::onednn_conv", _fake)


def onednn_conv_pack(weight: torch.Tensor, input_size, stride, padding, post_op: int = 1,
                     has_bias: bool = True) -> torch.Tensor:
    """The weight (O, I, kh, kw; the compute dtype) in the layout of the primitive for this input
    size, as uint8 bytes for onednn_conv (with a bias unless has_bias=False; post_op as onednn_conv's)."""
    return torch.ops.inception_fast.onednn_conv_pack(weight, list(input_size), list(stride), list(padding),
                                                     bool(has_bias), post_op)


def onednn_conv(x, packed, weight_size, bias, stride, padding, post_op: int = 1, other=None) -> torch.Tensor:
    return torch.ops.inception_fast.onednn_conv(x, packed, list(weight_size), bias, list(stride), list(padding),
                                                post_op, other)


def onednn_conv_reference(x, weight, bias, stride, padding, post_op: int = 1, other=None) -> torch.Tensor:
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding)
    if post_op & 2:
        y = y + other
    return torch.relu(y) if post_op & 1 else y
