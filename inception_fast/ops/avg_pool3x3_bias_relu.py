"""avg_pool3x3_bias_relu: the tail of an Inception block's average-pool branch as optimize() runs it
(the branch's 1x1 projection first, the pool on the narrower tensor after):
y = relu(avg_pool2d(r, 3, stride 1, padding 1, count_include_pad) + bias).

On the CPU one C++ pass (csrc/cpu/avg_pool3x3_bias_relu.cpp) replaces avg_pool2d + add_ + relu_ (three
passes and three parallel regions), summing in float32 and rounding once. Elsewhere, or without the
compiled extension, the reference (the three ATen ops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _backend, _library

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def avg_pool3x3_bias_relu_reference(r: torch.Tensor, bias: torch.Tensor | None, count_include_pad: bool):
    y = F.avg_pool2d(r, 3, 1, 1, count_include_pad=count_include_pad)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return F.relu(y)


def _fake(r, bias, count_include_pad):
    return r.new_empty(r.shape).contiguous(memory_format=torch.channels_last)


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::avg_pool3x3_bias_relu", _fake)


def avg_pool3x3_bias_relu(r: torch.Tensor, bias: torch.Tensor | None = None, count_include_pad: bool = True):
    """relu(avg_pool2d(r, 3, 1, 1, count_include_pad) + bias) for a 4-D (N, C, H, W) float tensor r and
    a bias of C values (or None); channels_last on the CPU's fused kernel. Inference: no autograd."""
    if not isinstance(r, torch.Tensor) or r.dim() != 4:
        raise ValueError(f"avg_pool3x3_bias_relu: r must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__}")
    if r.dtype not in _DTYPES:
        raise TypeError(f"avg_pool3x3_bias_relu: r must be float32, bfloat16 or float16, got {r.dtype}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != r.shape[1]):
        raise ValueError(f"avg_pool3x3_bias_relu: bias must be a vector of r's {r.shape[1]} channels, got shape "
                         f"{tuple(bias.shape)}")
    if r.device.type != "cpu" or (torch.is_grad_enabled() and (r.requires_grad or (bias is not None and bias.requires_grad))) \
            or _backend.resolve(r, "avg_pool3x3_bias_relu") == "reference":
        return avg_pool3x3_bias_relu_reference(r, bias, count_include_pad)
    return _library.namespace("cpu").avg_pool3x3_bias_relu(r, bias, bool(count_include_pad))
