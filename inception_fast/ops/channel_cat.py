"""channel_cat: torch.cat(xs, 1) into a channels_last output -- the end of every Inception block as
optimize() runs it (each branch's result, or a channel slice of the merged 1x1 convolution's output,
side by side).

On the CPU one C++ pass (csrc/cpu/channel_cat.cpp): one parallel region over bands of pixels, each
input's channel runs copied with inline vector moves, channel slices read in place. ATen's cat
makes one TensorIterator copy (and one parallel region) per input. Elsewhere, or without the
compiled extension, the reference.
"""
from __future__ import annotations

import torch

from inception_fast.ops import _backend, _library


def channel_cat_reference(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(xs), 1).contiguous(memory_format=torch.channels_last)


def _fake(xs):
    n, _, h, w = xs[0].shape
    c = sum(x.shape[1] for x in xs)
    return xs[0].new_empty((n, c, h, w)).contiguous(memory_format=torch.channels_last)


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::channel_cat", _fake)


def channel_cat(xs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """torch.cat(xs, 1), channels_last, for 4-D (N, C_i, H, W) tensors of one dtype and device.
    Inference: no autograd (with gradients wanted it is torch.cat)."""
    if not isinstance(xs, (list, tuple)) or not xs or not all(isinstance(x, torch.Tensor) for x in xs):
        raise TypeError("channel_cat: xs must be a non-empty list of tensors")
    x0 = xs[0]
    for i, x in enumerate(xs):
        if x.dim() != 4 or x.shape[0] != x0.shape[0] or x.shape[2:] != x0.shape[2:]:
            raise ValueError(f"channel_cat: xs[{i}] must be 4-D with xs[0]'s batch and spatial size "
                             f"({x0.shape[0]}, *, {', '.join(map(str, x0.shape[2:]))}), got shape {tuple(x.shape)}")
        if x.dtype != x0.dtype:
            raise TypeError(f"channel_cat: xs[{i}] is {x.dtype}, xs[0] is {x0.dtype}: the inputs must share one dtype")
        if x.device != x0.device:
            raise ValueError(f"channel_cat: xs[{i}] is on {x.device}, xs[0] on {x0.device}")
    if x0.device.type != "cpu" or (torch.is_grad_enabled() and any(x.requires_grad for x in xs)) \
            or _backend.resolve(x0, "channel_cat") == "reference":
        return channel_cat_reference(xs)
    return _library.namespace("cpu").channel_cat(list(xs))
