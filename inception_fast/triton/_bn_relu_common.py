"""What the fused BatchNorm + ReLU kernels share (bn_relu.py: the elementwise passes;
_bn_relu_reductions.py: the per-channel reductions): how a tensor is tiled in either layout, the
pre-activation, and the Python helpers that pick the layout and block sizes.

Layout. x is (N, C, H, W), contiguous in NCHW or in channels_last; S = H * W. Both layouts are
read in place, as a matrix of rows with a unit-stride column axis:
  * NCHW:          rows = (n, c) planes (R = N * C), columns = spatial (K = S), channel = row % C;
  * channels_last: rows = (n, s) pixels (R = N * S), columns = channels (K = C), channel = column.
Element (row, col) is at row * ROW_STRIDE + col, ROW_STRIDE = S (NCHW) or C (channels_last).
These are the layout's own contiguous strides: they stay right whatever strides torch reports
for size-1 dimensions, and a tensor contiguous in both layouts (C == 1 or S == 1) is addressed
the same way by both. Every tile is [rows, columns], so loads run along the contiguous axis and
vectorize whenever ROW_STRIDE is a multiple of 16 (Triton specializes on that).

Numerics. All arithmetic is float32. The pre-activation z is computed by one helper (_preact)
in every kernel, so the backward recomputes exactly the forward's ReLU mask. ReLU is
where(z < 0, 0, z), which keeps NaN (max/minimum would drop it).
"""

import contextlib

import torch
import triton
import triton.language as tl

# Elements per program tile. 4096 = 16 per thread at 8 warps: two to four 16-byte accesses per
# thread per tensor, and few enough programs under TRITON_INTERPRET=1. When the row stride is
# not a multiple of 16 the accesses cannot be vectorized, every element then needs its own
# 64-bit address, and a 4096 tile takes 100-140 registers (cross-compiled for sm_90): such
# layouts get half a tile.
_TILE = 4096


@triton.jit
def _preact(x, mean, invstd, w, b, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    # The single definition of z = (x - mean) * invstd * w + b. The explicit fma fixes the
    # rounding, so forward and backward kernels get bit-identical z (and ReLU masks).
    z = (x - mean) * invstd
    if HAS_W:
        if HAS_B:
            z = tl.fma(z, w, b)
        else:
            z = z * w
    else:
        if HAS_B:
            z = z + b
    return z


def _on_device(t):
    # Triton launches on the current CUDA device; make that the tensor's.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _cdiv(a, b):
    return -(-a // b)


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _pick_block(n, lo, hi, min_efficiency=0.85):
    """The largest power of two in [lo, hi] (hi capped near n) whose padding of n keeps at
    least min_efficiency of the lanes busy; failing that, the most efficient one."""
    hi = max(lo, min(hi, _next_pow2(n)))
    best, best_eff = hi, -1.0
    b = hi
    while b >= lo:
        eff = n / (_cdiv(n, b) * b)
        if eff >= min_efficiency:
            return b
        if eff > best_eff:
            best, best_eff = b, eff
        b //= 2
    return best


def _num_warps(block_elems):
    return 8 if block_elems >= 2048 else 4


def _tile_elems(row_stride):
    # Triton vectorizes the unit-stride axis when it can prove 16-element alignment.
    return _TILE if row_stride % 16 == 0 else max(2, _TILE // 2)


def _use_channels_last(x):
    """True to tile x as channels_last ([pixels, channels]), False as NCHW ([planes, spatial])."""
    _, c, h, w = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if not x.is_contiguous():
        return True
    # Contiguous in both layouts (C == 1 or H * W == 1): the addresses agree; pick the
    # orientation whose unit-stride axis is longer.
    return h * w == 1 and c > 1


def _in_layout(t, channels_last):
    # The kernels address all tensors of one call with one layout. Inputs come in the layout of
    # x (the caller checks); anything else is copied rather than read wrongly.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)
