"""prepare_input: an optimize()d model's input in one pass -- the batch converted to the model's
dtype and layout (a new tensor), and which images hold a NaN (oneDNN's ReLU post-op maps NaN to 0, so
optimize() puts NaN back into those images' outputs).

On the CPU one C++ pass (csrc/cpu/prepare_input.cpp) replaces x.to(dtype, channels_last) plus
x.isnan().flatten(1).any(1): 3.5-6x faster on a 3-channel float32 batch (2-core Zen 4), 2% of
optimize(googlenet)'s bf16 forward. Elsewhere, or without the compiled extension, the reference.
"""
from __future__ import annotations

import torch

from inception_fast.ops import _backend, _library

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def prepare_input_reference(x: torch.Tensor, dtype: torch.dtype, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=fmt, copy=True), x.isnan().flatten(1).any(1)


def _fake(x, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.new_empty(x.shape, dtype=dtype).contiguous(memory_format=fmt), x.new_empty(x.shape[:1], dtype=torch.bool)


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::prepare_input", _fake)


def prepare_input(x: torch.Tensor, dtype: torch.dtype, channels_last: bool = True):
    """(x.to(dtype) in channels_last or NCHW, a new tensor; bool [N]: whether x[n] holds a NaN) for a
    4-D floating-point batch x."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"prepare_input: x must be a 4-D (N, C, H, W) batch, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"prepare_input: x must be floating point, got {x.dtype}")
    if dtype not in _DTYPES:
        raise TypeError(f"prepare_input: dtype must be float32, bfloat16 or float16, got {dtype}")
    if x.device.type != "cpu" or _backend.resolve(x, "prepare_input") == "reference":
        return prepare_input_reference(x, dtype, bool(channels_last))
    return tuple(_library.namespace("cpu").prepare_input(x, dtype, bool(channels_last)))
