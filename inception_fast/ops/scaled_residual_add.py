"""scaled_residual_add: y = act(x + scale * residual), the Inception-ResNet shortcut
(scale 0.17 / 0.10 / 0.20 in the paper, act = ReLU except after the last block).

One pass instead of three (mul, add, relu); the backward needs only the output (its sign is the
ReLU mask), so neither input is saved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _backend, _library
from inception_fast.ops._library import like

_library.define_triton_ops(["scaled_residual_add", "scaled_residual_add_backward"],
                           "inception_fast.triton.scaled_residual_add")


def scaled_residual_add_reference(x, residual, scale, relu=True):
    """The eager composition (as timm's Block35/17/8 write it: branch * scale + shortcut, then act)."""
    y = residual * scale + x
    return F.relu(y) if relu else y


def _fake(x, residual, scale, relu):
    torch._check(x.shape == residual.shape, lambda: "x and residual must have the same shape")
    return torch.empty_like(x)


def _backward_fake(grad_out, out, scale, relu):
    return torch.empty_like(out), torch.empty_like(out)


_library.register_fake("scaled_residual_add", _fake)
_library.register_fake("scaled_residual_add_backward", _backward_fake)


def _setup_context(ctx, inputs, output):
    _, _, scale, relu = inputs
    ctx.scale, ctx.relu = scale, relu
    ctx.save_for_backward(output if relu else None)


def _make_backward(ops):
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if not ctx.relu:
            return grad, grad * ctx.scale, None, None
        grad_x, grad_r = ops.scaled_residual_add_backward(like(grad, out), out, ctx.scale, True)
        return grad_x, grad_r, None, None

    return backward


_library.register_autograd("scaled_residual_add", _make_backward, _setup_context)


def _check_inputs(x, residual):
    for t, name in ((x, "x"), (residual, "residual")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"scaled_residual_add: {name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"scaled_residual_add: {name} must be a floating-point tensor, got {t.dtype}")
    if residual.shape != x.shape:
        raise ValueError(f"scaled_residual_add: residual has shape {tuple(residual.shape)} but x has "
                         f"{tuple(x.shape)} (they must match, no broadcasting)")
    if residual.dtype != x.dtype:
        raise TypeError(f"scaled_residual_add: residual has dtype {residual.dtype} but x has {x.dtype}")
    if residual.device != x.device:
        raise ValueError(f"scaled_residual_add: residual is on {residual.device} but x is on {x.device}")


def scaled_residual_add(x: torch.Tensor, residual: torch.Tensor, scale: float, relu: bool = True) -> torch.Tensor:
    """act(x + scale * residual) on the fastest available backend, act = ReLU if `relu`."""
    _check_inputs(x, residual)
    backend = _backend.resolve(x, "scaled_residual_add")
    if backend == "reference":
        return scaled_residual_add_reference(x, residual, scale, relu)
    x = _library.dense(x)
    return _library.namespace(backend).scaled_residual_add(x, like(residual, x), float(scale), bool(relu))
