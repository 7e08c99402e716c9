"""Triton kernels for the scaled residual add ops (schemas in csrc/ops.cpp).

The tensors of one call share their strides and are non-overlapping and dense, so element i of
one is element i of the other when each is read as a flat buffer from its data pointer: the
kernels run over that flat buffer, whatever the shape or memory format. Arithmetic is float32;
ReLU is where(y < 0, 0, y), which keeps NaN.
"""

import contextlib

import torch
import triton
import triton.language as tl

# Elements per program: 16 per thread at 8 warps, i.e. 16-byte accesses, two to four per
# thread per tensor.
_BLOCK = 4096
_NUM_WARPS = 8


@triton.jit
def _scaled_residual_add_kernel(x_ptr, r_ptr, y_ptr, numel, scale, RELU: tl.constexpr,
                                BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = x + scale * r
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_residual_add_backward_kernel(g_ptr, out_ptr, gx_ptr, gr_ptr, numel, scale,
                                         RELU: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        out = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(out > 0.0, g, 0.0)
    tl.store(gx_ptr + offs, g.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gr_ptr + offs, (scale * g).to(gr_ptr.dtype.element_ty), mask=mask)


def _on_device(t):
    # Triton launches on the current CUDA device; make that the tensor's.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _is_dense(t):
    """Non-overlapping and dense: the elements fill numel() consecutive slots from data_ptr."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _like(t, ref):
    # The caller passes tensors with ref's strides; anything else is copied into them rather
    # than read wrongly.
    if t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref, dtype=t.dtype)
    out.copy_(t)
    return out


def scaled_residual_add(x, residual, scale, relu):
    """y = act(x + scale * residual), act = ReLU if relu else identity; y has x's strides."""
    if not _is_dense(x):
        x = x.contiguous()
    residual = _like(residual, x)
    y = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return y
    with _on_device(x):
        _scaled_residual_add_kernel[(triton.cdiv(numel, _BLOCK),)](
            x, residual, y, numel, float(scale), RELU=bool(relu), BLOCK=_BLOCK,
            num_warps=_NUM_WARPS)
    return y


def scaled_residual_add_backward(grad_out, out, scale, relu):
    """(grad_x, grad_residual) = (grad_out * mask, scale * grad_out * mask), mask = out > 0 if
    relu else 1; both with out's strides."""
    if not _is_dense(out):
        out = out.contiguous()
    grad_out = _like(grad_out, out)
    grad_x = torch.empty_like(out)
    grad_residual = torch.empty_like(out)
    numel = out.numel()
    if numel == 0:
        return grad_x, grad_residual
    with _on_device(out):
        _scaled_residual_add_backward_kernel[(triton.cdiv(numel, _BLOCK),)](
            grad_out, out, grad_x, grad_residual, numel, float(scale), RELU=bool(relu),
            BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return grad_x, grad_residual
