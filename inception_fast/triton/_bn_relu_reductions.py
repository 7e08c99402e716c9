"""Triton kernels for the per-channel reductions of the fused BatchNorm + ReLU ops, bn_stats and
bn_relu_backward_reduce (schemas in csrc/ops.cpp; layout and numerics in _bn_relu_common.py).

Each channel is split across several programs, each writing a per-channel partial to a [P, C]
buffer that a second small kernel combines, so the result is deterministic (no atomics).
"""

import contextlib
import functools

import torch
import triton
import triton.language as tl

from inception_fast.triton._bn_relu_common import (_cdiv, _in_layout, _next_pow2, _num_warps, _on_device,
                                                   _pick_block, _preact, _tile_elems, _use_channels_last)

# Reductions aim for this many programs per SM (a full wave of resident programs).
_PROGRAMS_PER_SM = 8
# Programs the reductions aim for off the GPU (TRITON_INTERPRET=1 on CPU tensors).
_CPU_PROGRAMS = 16

# Multiprocessors of the GPU that launches_as_on_gpu() sizes the reductions for; None: the
# tensors' own device.
_as_on_gpu_sms = None


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _nchw_tile(t, c, N, C, S, S_TILES, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    # Tile t of channel c in NCHW: batch block t // S_TILES, spatial block t % S_TILES (so
    # consecutive tiles walk along the contiguous spatial axis). Also returns its element count.
    nb = t // S_TILES
    sb = t - nb * S_TILES
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = (n < N)[:, None] & (s < S)[None, :]
    offs = (n.to(tl.int64) * C + c)[:, None] * S + s[None, :]
    cnt = (tl.minimum(N - nb * BLOCK_N, BLOCK_N) * tl.minimum(S - sb * BLOCK_S, BLOCK_S))
    return offs, mask, cnt.to(tl.float32)


@triton.jit
def _bn_stats_nchw_kernel(
    x_ptr, pshift_ptr, pdelta_ptr, pm2_ptr, pcnt_ptr,
    N, C, S, S_TILES, NUM_TILES, TILES_PER_PROG,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Program (c, p): tiles [p * TILES_PER_PROG, ...) of channel c -> its mean (as shift +
    # delta), M2 and count. Sums are shifted by the mean of the program's first tile: per-lane
    # accumulation stays cheap, and the cancellation in M2 = sum(d^2) - sum(d)^2 / n is bounded
    # (a first tile of m of the n elements whose mean is off by e adds m * e^2 <= M2 itself, so
    # sum(d^2) <= (1 + n / m) * M2).
    c = tl.program_id(0)
    t_begin = tl.program_id(1) * TILES_PER_PROG
    t_end = tl.minimum(t_begin + TILES_PER_PROG, NUM_TILES)
    offs, mask, total = _nchw_tile(t_begin, c, N, C, S, S_TILES, BLOCK_N, BLOCK_S)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    shift = tl.sum(tl.sum(x, axis=1), axis=0) / total
    d = tl.where(mask, x - shift, 0.0)
    acc1 = d
    acc2 = d * d
    for t in range(t_begin + 1, t_end):
        offs, mask, cnt = _nchw_tile(t, c, N, C, S, S_TILES, BLOCK_N, BLOCK_S)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift, 0.0)
        acc1 += d
        acc2 += d * d
        total += cnt
    s1 = tl.sum(tl.sum(acc1, axis=1), axis=0)
    s2 = tl.sum(tl.sum(acc2, axis=1), axis=0)
    m2 = s2 - s1 * (s1 / total)
    m2 = tl.where(m2 < 0.0, 0.0, m2)  # rounding only; where() keeps NaN
    out = tl.program_id(1) * C + c
    tl.store(pshift_ptr + out, shift)
    tl.store(pdelta_ptr + out, s1 / total)
    tl.store(pm2_ptr + out, m2)
    tl.store(pcnt_ptr + out, total)


@triton.jit
def _bn_stats_cl_kernel(
    x_ptr, pshift_ptr, pdelta_ptr, pm2_ptr, pcnt_ptr,
    M, C, ROWS_PER_PROG,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Program (cb, p): rows [p * ROWS_PER_PROG, ...) of channels block cb -> per-channel mean
    # (as shift + delta), M2, count; shifted sums as in _bn_stats_nchw_kernel.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    r_begin = tl.program_id(1) * ROWS_PER_PROG
    r_end = tl.minimum(r_begin + ROWS_PER_PROG, M)
    rr = tl.arange(0, BLOCK_M)

    rows = r_begin + rr
    mask = (rows < r_end)[:, None] & col_mask[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    shift = tl.sum(x, axis=0) / tl.minimum(r_end - r_begin, BLOCK_M).to(tl.float32)
    d = tl.where(mask, x - shift[None, :], 0.0)
    acc1 = d
    acc2 = d * d
    for r0 in range(r_begin + BLOCK_M, r_end, BLOCK_M):
        rows = r0 + rr
        mask = (rows < r_end)[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[None, :], 0.0)
        acc1 += d
        acc2 += d * d
    total = (r_end - r_begin).to(tl.float32)
    s1 = tl.sum(acc1, axis=0)
    s2 = tl.sum(acc2, axis=0)
    m2 = s2 - s1 * (s1 / total)
    m2 = tl.where(m2 < 0.0, 0.0, m2)  # rounding only; where() keeps NaN
    out = tl.program_id(1) * C + cols
    tl.store(pshift_ptr + out, shift, mask=col_mask)
    tl.store(pdelta_ptr + out, s1 / total, mask=col_mask)
    tl.store(pm2_ptr + out, m2, mask=col_mask)
    tl.store(pcnt_ptr + out, tl.zeros([BLOCK_C], dtype=tl.float32) + total, mask=col_mask)


@triton.jit
def _bn_stats_combine_kernel(
    pshift_ptr, pdelta_ptr, pm2_ptr, pcnt_ptr, mean_ptr, var_ptr, C, P,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Chan's parallel combination of the [P, C] partials, in two passes so that every sum has
    # non-negative terms: mean = sum(n_p mean_p) / n; M2 = sum(M2_p + n_p (mean_p - mean)^2).
    # mean_p - mean is formed as (shift_p - mean) + delta_p: when the mean is large against the
    # spread, shift_p - mean is exact (Sterbenz), so rounding mean_p to float32 costs nothing.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    pp = tl.arange(0, BLOCK_P)
    acc_n = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_s = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + pp
        mask = (p < P)[:, None] & col_mask[None, :]
        offs = p[:, None] * C + cols[None, :]
        cnt = tl.load(pcnt_ptr + offs, mask=mask, other=0.0)
        shift = tl.load(pshift_ptr + offs, mask=mask, other=0.0)
        delta = tl.load(pdelta_ptr + offs, mask=mask, other=0.0)
        acc_n += cnt
        acc_s += cnt * (shift + delta)
    # Columns past C (masked) have n = 0: divide by 1 there instead of making a NaN to discard.
    n = tl.where(col_mask, tl.sum(acc_n, axis=0), 1.0)
    mean = tl.sum(acc_s, axis=0) / n
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + pp
        mask = (p < P)[:, None] & col_mask[None, :]
        offs = p[:, None] * C + cols[None, :]
        cnt = tl.load(pcnt_ptr + offs, mask=mask, other=0.0)
        shift = tl.load(pshift_ptr + offs, mask=mask, other=0.0)
        delta = tl.load(pdelta_ptr + offs, mask=mask, other=0.0)
        m2 = tl.load(pm2_ptr + offs, mask=mask, other=0.0)
        dm = (shift - mean[None, :]) + delta
        acc += tl.where(mask, m2 + cnt * dm * dm, 0.0)
    tl.store(mean_ptr + cols, mean, mask=col_mask)
    tl.store(var_ptr + cols, tl.sum(acc, axis=0) / n, mask=col_mask)


@triton.jit
def _bn_relu_backward_reduce_nchw_kernel(
    g_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, pa_ptr, pb_ptr,
    N, C, S, S_TILES, NUM_TILES, TILES_PER_PROG,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Program (c, p): partial sum(dz) and sum(dz * (x - mean)) of channel c over its tiles.
    c = tl.program_id(0)
    mean = tl.load(mean_ptr + c)
    invstd = tl.load(invstd_ptr + c)
    w = mean  # placeholder, unused unless HAS_W
    b = mean  # placeholder, unused unless HAS_B
    if HAS_W:
        w = tl.load(w_ptr + c)
    if HAS_B:
        b = tl.load(b_ptr + c)
    t_begin = tl.program_id(1) * TILES_PER_PROG
    t_end = tl.minimum(t_begin + TILES_PER_PROG, NUM_TILES)
    acc_a = tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32)
    for t in range(t_begin, t_end):
        offs, mask, cnt = _nchw_tile(t, c, N, C, S, S_TILES, BLOCK_N, BLOCK_S)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = _preact(x, mean, invstd, w, b, HAS_W, HAS_B)
        dz = tl.where(mask & (z > 0.0), g, 0.0)
        acc_a += dz
        acc_b += dz * (x - mean)
    out = tl.program_id(1) * C + c
    tl.store(pa_ptr + out, tl.sum(tl.sum(acc_a, axis=1), axis=0))
    tl.store(pb_ptr + out, tl.sum(tl.sum(acc_b, axis=1), axis=0))


@triton.jit
def _bn_relu_backward_reduce_cl_kernel(
    g_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, invstd_ptr, pa_ptr, pb_ptr,
    M, C, ROWS_PER_PROG,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Program (cb, p): partial sums of channels block cb over rows [p * ROWS_PER_PROG, ...).
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    mean = tl.load(mean_ptr + cols, mask=col_mask, other=0.0)[None, :]
    invstd = tl.load(invstd_ptr + cols, mask=col_mask, other=0.0)[None, :]
    w = mean  # placeholder, unused unless HAS_W
    b = mean  # placeholder, unused unless HAS_B
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0)[None, :]
    if HAS_B:
        b = tl.load(b_ptr + cols, mask=col_mask, other=0.0)[None, :]
    r_begin = tl.program_id(1) * ROWS_PER_PROG
    r_end = tl.minimum(r_begin + ROWS_PER_PROG, M)
    rr = tl.arange(0, BLOCK_M)
    acc_a = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for r0 in range(r_begin, r_end, BLOCK_M):
        rows = r0 + rr
        mask = (rows < r_end)[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = _preact(x, mean, invstd, w, b, HAS_W, HAS_B)
        dz = tl.where(mask & (z > 0.0), g, 0.0)
        acc_a += dz
        acc_b += dz * (x - mean)
    out = tl.program_id(1) * C + cols
    tl.store(pa_ptr + out, tl.sum(acc_a, axis=0), mask=col_mask)
    tl.store(pb_ptr + out, tl.sum(acc_b, axis=0), mask=col_mask)


@triton.jit
def _sum_partials_kernel(
    pa_ptr, pb_ptr, a_ptr, b_ptr, C, P,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # a[c] = sum_p pa[p, c], b[c] = sum_p pb[p, c]; fixed order, so deterministic.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    pp = tl.arange(0, BLOCK_P)
    acc_a = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + pp
        mask = (p < P)[:, None] & col_mask[None, :]
        offs = p[:, None] * C + cols[None, :]
        acc_a += tl.load(pa_ptr + offs, mask=mask, other=0.0)
        acc_b += tl.load(pb_ptr + offs, mask=mask, other=0.0)
    tl.store(a_ptr + cols, tl.sum(acc_a, axis=0), mask=col_mask)
    tl.store(b_ptr + cols, tl.sum(acc_b, axis=0), mask=col_mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device):
    if _as_on_gpu_sms is not None:
        return _PROGRAMS_PER_SM * _as_on_gpu_sms
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _PROGRAMS_PER_SM * _sm_count(index)
    return _CPU_PROGRAMS


@contextlib.contextmanager
def launches_as_on_gpu(sms: int):
    """Within the block, the reductions are split for a GPU of `sms` multiprocessors whatever the
    tensors' device: the launch configurations such a GPU gets, from CPU tensors. For recording those
    launches under TRITON_INTERPRET=1 without running them (tools/triton_aot.py); not thread-safe."""
    global _as_on_gpu_sms
    saved = _as_on_gpu_sms
    _as_on_gpu_sms = sms
    try:
        yield
    finally:
        _as_on_gpu_sms = saved


def _reduce_config(x, channels_last):
    """Grid and tiling for the per-channel reductions; P is the number of partials per channel."""
    n, c, h, w = x.shape
    s = h * w
    target = _target_programs(x.device)
    if channels_last:
        m = n * s
        block_c = _pick_block(c, 16, 256)
        block_m = max(2, min(_tile_elems(c) // block_c, _next_pow2(m)))
        c_blocks = _cdiv(c, block_c)
        tiles = _cdiv(m, block_m)
        tiles_per_prog = _cdiv(tiles, max(1, target // c_blocks))
        p = _cdiv(tiles, tiles_per_prog)
        return p, (c_blocks, p), dict(M=m, C=c, ROWS_PER_PROG=tiles_per_prog * block_m,
                                      BLOCK_M=block_m, BLOCK_C=block_c,
                                      num_warps=_num_warps(block_m * block_c))
    tile = _tile_elems(s)
    block_s = _pick_block(s, 2, 1024)
    block_n = max(2, min(tile // block_s, _next_pow2(n)))
    # A small batch leaves the tile short: widen it along the plane (>= 50% of lanes busy)
    # rather than loop over many small tiles.
    while block_n * block_s < tile and block_s < _next_pow2(s):
        block_s *= 2
    s_tiles = _cdiv(s, block_s)
    tiles = _cdiv(n, block_n) * s_tiles
    tiles_per_prog = _cdiv(tiles, max(1, target // c))
    p = _cdiv(tiles, tiles_per_prog)
    return p, (c, p), dict(N=n, C=c, S=s, S_TILES=s_tiles, NUM_TILES=tiles,
                           TILES_PER_PROG=tiles_per_prog, BLOCK_N=block_n, BLOCK_S=block_s,
                           num_warps=_num_warps(block_n * block_s))


def _combine_config(c, p):
    block_c = min(64, max(16, _next_pow2(c)))
    block_p = min(16, max(2, _next_pow2(p)))
    return (_cdiv(c, block_c),), dict(BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)


def bn_stats(x):
    """Per-channel mean and biased variance of x over (N, H, W), float32 [C]."""
    c = x.shape[1]
    if x.numel() == 0:
        nan = torch.full((c,), float("nan"), dtype=torch.float32, device=x.device)
        return nan, nan.clone()
    channels_last = _use_channels_last(x)
    x = _in_layout(x, channels_last)
    p, grid, cfg = _reduce_config(x, channels_last)
    partials = torch.empty((4, p, c), dtype=torch.float32, device=x.device).unbind(0)
    mean = torch.empty(c, dtype=torch.float32, device=x.device)
    var = torch.empty(c, dtype=torch.float32, device=x.device)
    kernel = _bn_stats_cl_kernel if channels_last else _bn_stats_nchw_kernel
    combine_grid, combine_cfg = _combine_config(c, p)
    with _on_device(x):
        kernel[grid](x, *partials, **cfg)
        _bn_stats_combine_kernel[combine_grid](*partials, mean, var, c, p, **combine_cfg)
    return mean, var


def bn_relu_backward_reduce(grad_out, x, weight, bias, mean, invstd):
    """(sum_dz, sum_dz_xmu), float32 [C], with dz = grad_out * (pre-activation > 0)."""
    c = x.shape[1]
    if x.numel() == 0:
        return (torch.zeros(c, dtype=torch.float32, device=x.device),
                torch.zeros(c, dtype=torch.float32, device=x.device))
    channels_last = _use_channels_last(x)
    x = _in_layout(x, channels_last)
    grad_out = _in_layout(grad_out, channels_last)
    p, grid, cfg = _reduce_config(x, channels_last)
    pa, pb = torch.empty((2, p, c), dtype=torch.float32, device=x.device).unbind(0)
    sum_dz = torch.empty(c, dtype=torch.float32, device=x.device)
    sum_dz_xmu = torch.empty(c, dtype=torch.float32, device=x.device)
    kernel = (_bn_relu_backward_reduce_cl_kernel if channels_last
              else _bn_relu_backward_reduce_nchw_kernel)
    combine_grid, combine_cfg = _combine_config(c, p)
    with _on_device(x):
        kernel[grid](
            grad_out, x,
            weight if weight is not None else mean,
            bias if bias is not None else mean,
            mean, invstd, pa, pb,
            HAS_W=weight is not None, HAS_B=bias is not None, **cfg,
        )
        _sum_partials_kernel[combine_grid](pa, pb, sum_dz, sum_dz_xmu, c, p, **combine_cfg)
    return sum_dz, sum_dz_xmu
