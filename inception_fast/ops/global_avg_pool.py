"""global_avg_pool: the mean of each channel of a 4-D map, (N, C, H, W) -> (N, C) -- the pooling in
front of every model's classifier (GlobalPool2d('avg') as optimize() runs it).

On the CPU one C++ pass (csrc/cpu/global_avg_pool.cpp): a channels_last map read as rows of
channels, a block of channels summed over the pixels in vector registers (NCHW: plane by plane),
the sum in float32 and rounded once to x's dtype, as ATen's mean. ATen's mean over (H, W) of a
channels_last bfloat16 map ran at 5 GB/s. Elsewhere, with gradients wanted, or without the compiled
extension, the reference.
"""
from __future__ import annotations

import torch

from inception_fast.ops import _backend, _library


def global_avg_pool_reference(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3))


def _fake(x):
    return x.new_empty((x.shape[0], x.shape[1]))


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::global_avg_pool", _fake)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """x.mean((2, 3)) for a 4-D floating-point map x: (N, C), x's dtype, contiguous. Inference: with
    gradients wanted it is the reference (x.mean)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"global_avg_pool: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"global_avg_pool: x must be a 4-D (N, C, H, W) map, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"global_avg_pool: x must be floating point, got {x.dtype}")
    if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad) \
            or _backend.resolve(x, "global_avg_pool") == "reference":
        return global_avg_pool_reference(x)
    return _library.namespace("cpu").global_avg_pool(x)
