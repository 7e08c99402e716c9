"""Triton kernels for the fused BatchNorm + ReLU ops (schemas in csrc/ops.cpp).

Here: the elementwise passes, bn_relu_apply (the forward) and bn_relu_backward_elemt (grad x).
The per-channel reductions, bn_stats and bn_relu_backward_reduce, are in _bn_relu_reductions.py
and importable from here; how both tile a tensor in NCHW or channels_last, and the numerics they
share, are in _bn_relu_common.py.
"""

import torch
import triton
import triton.language as tl

from inception_fast.triton._bn_relu_common import (_cdiv, _in_layout, _next_pow2, _num_warps, _on_device,
                                                   _pick_block, _preact, _tile_elems, _use_channels_last)
from inception_fast.triton._bn_relu_reductions import (  # noqa: F401  (the reductions, importable from here)
    _CPU_PROGRAMS,
    _target_programs,
    bn_relu_backward_reduce,
    bn_stats,
    launches_as_on_gpu,
)

__all__ = ["bn_stats", "bn_relu_apply", "bn_relu_backward_reduce", "bn_relu_backward_elemt", "launches_as_on_gpu"]


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tile_2d(R, K, C, ROW_STRIDE, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
             BLOCK_K: tl.constexpr):
    # Offsets, mask and per-tile channel indices of this program's [BLOCK_R, BLOCK_K] tile.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < R
    col_mask = cols < K
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * ROW_STRIDE + cols[None, :]
    if CHANNELS_LAST:
        ch = cols
        ch_mask = col_mask
    else:
        ch = rows % C
        ch_mask = row_mask
    return offs, mask, ch, ch_mask


@triton.jit
def _load_per_channel(ptr, ch, ch_mask, CHANNELS_LAST: tl.constexpr):
    # A per-channel float32 vector, shaped to broadcast against the tile.
    v = tl.load(ptr + ch, mask=ch_mask, other=0.0)
    if CHANNELS_LAST:
        v = v[None, :]
    else:
        v = v[:, None]
    return v


@triton.jit
def _bn_relu_apply_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr,
    R, K, C, ROW_STRIDE,
    CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, ch, ch_mask = _tile_2d(R, K, C, ROW_STRIDE, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    mean = _load_per_channel(mean_ptr, ch, ch_mask, CHANNELS_LAST)
    invstd = _load_per_channel(invstd_ptr, ch, ch_mask, CHANNELS_LAST)
    w = mean  # placeholder, unused unless HAS_W
    b = mean  # placeholder, unused unless HAS_B
    if HAS_W:
        w = _load_per_channel(w_ptr, ch, ch_mask, CHANNELS_LAST)
    if HAS_B:
        b = _load_per_channel(b_ptr, ch, ch_mask, CHANNELS_LAST)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = _preact(x, mean, invstd, w, b, HAS_W, HAS_B)
    y = tl.where(z < 0.0, 0.0, z)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_relu_backward_elemt_kernel(
    g_ptr, x_ptr, gx_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, sum_dz_ptr, sum_dz_xmu_ptr,
    count, R, K, C, ROW_STRIDE,
    CHANNELS_LAST: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    HAS_SUMS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, ch, ch_mask = _tile_2d(R, K, C, ROW_STRIDE, CHANNELS_LAST, BLOCK_R, BLOCK_K)
    mean = _load_per_channel(mean_ptr, ch, ch_mask, CHANNELS_LAST)
    invstd = _load_per_channel(invstd_ptr, ch, ch_mask, CHANNELS_LAST)
    w = mean  # placeholder, unused unless HAS_W
    b = mean  # placeholder, unused unless HAS_B
    scale = invstd
    if HAS_W:
        w = _load_per_channel(w_ptr, ch, ch_mask, CHANNELS_LAST)
        scale = w * invstd
    if HAS_B:
        b = _load_per_channel(b_ptr, ch, ch_mask, CHANNELS_LAST)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = _preact(x, mean, invstd, w, b, HAS_W, HAS_B)
    dz = tl.where(z > 0.0, g, 0.0)
    if HAS_SUMS:
        mean_dz = _load_per_channel(sum_dz_ptr, ch, ch_mask, CHANNELS_LAST) / count
        coef = invstd * invstd * (_load_per_channel(sum_dz_xmu_ptr, ch, ch_mask, CHANNELS_LAST)
                                  / count)
        gx = scale * (dz - mean_dz - (x - mean) * coef)
    else:
        gx = dz * scale
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _elementwise_config(x, channels_last):
    n, c, h, w = x.shape
    s = h * w
    if channels_last:
        rows, cols, row_stride = n * s, c, c
        block_k = _pick_block(c, 16, 256)
    else:
        rows, cols, row_stride = n * c, s, s
        block_k = _pick_block(s, 2, 1024)
    block_r = max(2, min(_tile_elems(row_stride) // block_k, _next_pow2(rows)))
    grid = (_cdiv(rows, block_r), _cdiv(cols, block_k))
    return grid, dict(R=rows, K=cols, C=c, ROW_STRIDE=row_stride, CHANNELS_LAST=channels_last,
                      BLOCK_R=block_r, BLOCK_K=block_k, num_warps=_num_warps(block_r * block_k))


def bn_relu_apply(x, weight, bias, mean, invstd, training):
    """y = relu((x - mean) * invstd * weight + bias); `training` does not change the forward."""
    del training
    channels_last = _use_channels_last(x)
    x = _in_layout(x, channels_last)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    grid, cfg = _elementwise_config(x, channels_last)
    with _on_device(x):
        _bn_relu_apply_kernel[grid](
            x, y,
            weight if weight is not None else mean,
            bias if bias is not None else mean,
            mean, invstd,
            HAS_W=weight is not None, HAS_B=bias is not None, **cfg,
        )
    return y


def bn_relu_backward_elemt(grad_out, x, weight, bias, mean, invstd, sum_dz, sum_dz_xmu, count):
    """grad_x; without the sums dz * weight * invstd, with them the batch-statistics formula."""
    channels_last = _use_channels_last(x)
    x = _in_layout(x, channels_last)
    grad_out = _in_layout(grad_out, channels_last)
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x
    has_sums = sum_dz is not None and sum_dz_xmu is not None
    grid, cfg = _elementwise_config(x, channels_last)
    with _on_device(x):
        _bn_relu_backward_elemt_kernel[grid](
            grad_out, x, grad_x,
            weight if weight is not None else mean,
            bias if bias is not None else mean,
            mean, invstd,
            sum_dz if has_sums else mean,
            sum_dz_xmu if has_sums else mean,
            float(count) if has_sums else 1.0,
            HAS_W=weight is not None, HAS_B=bias is not None, HAS_SUMS=has_sums, **cfg,
        )
    return grad_x
