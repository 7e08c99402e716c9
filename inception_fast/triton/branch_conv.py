"""Triton kernels of branch_conv (schema in csrc/ops.cpp, semantics in inception_fast/ops/branch_conv.py).

`_conv_kernel` is an implicit-GEMM convolution over NHWC: a program computes a BLOCK_M x BLOCK_N tile
of output pixels x output channels, its K loop running over the kernel taps and, per tap, the
input channels in BLOCK_K chunks (tl.dot, float32 accumulation; IEEE float32 products for float32
inputs, not TF32, so the op keeps float32's accuracy; under TRITON_INTERPRET=1, whose tl.dot of
float16/bfloat16 operands gives wrong results (Triton 3.8), 16-bit operands are widened to float32
first, which is exact for them); the epilogue adds the bias, applies the ReLU
(NaN kept) and stores the tile through the output's strides at a channel offset, so a branch writes
straight into its slice of the block output, and reads its input as a channel slice of the merged
1x1 result. `_pool_kernel` is the average-pool branch's 3x3/1 pool of the projected tensor with its
bias and ReLU, into its slice. The max-pool branch's pool (which does not commute with the 1x1) is
ATen's max_pool2d.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _round_to_bf16(v):
    """v rounded to the nearest bfloat16 (ties to even), still float32; NaN kept. The interpreter's
    float32 -> bfloat16 cast truncates (twice the rounding error of the GPU's), so under it the
    kernels round first and the cast is then exact."""
    bits = v.to(tl.uint32, bitcast=True)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(v != v, v, rounded)


@triton.jit
def _conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, C, OH, OW, O, KH, KW, SH, SW, PH, PW,
                 sxn, sxh, sxw, sxc, syn, syh, syw, syc,
                 HAS_BIAS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                 ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, oh, ow)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    m_mask = offs_m < M
    n_mask = offs_n < O
    img = offs_m // (OH * OW)
    rem = offs_m % (OH * OW)
    oh = rem // OW
    ow = rem % OW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(0, KH):
        ih = oh * SH - PH + kh
        for kw in range(0, KW):
            iw = ow * SW - PW + kw
            valid = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            base = img.to(tl.int64) * sxn + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
            for c0 in range(0, C, BLOCK_K):
                offs_k = c0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < C
                a = tl.load(x_ptr + base[:, None] + offs_k[None, :] * sxc,
                            mask=valid[:, None] & k_mask[None, :], other=0.0)
                # The weight as [KH, KW, C, O], O contiguous.
                w_offs = ((kh * KW + kw) * C + offs_k).to(tl.int64)[:, None] * O + offs_n[None, :]
                b = tl.load(w_ptr + w_offs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                if UPCAST:  # the interpreter's tl.dot of 16-bit floats is wrong; float32 is exact for them
                    acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
                elif IEEE:
                    acc += tl.dot(a, b, input_precision="ieee")
                else:
                    acc += tl.dot(a, b)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)
    if ROUND_BF16:
        acc = _round_to_bf16(acc)
    y_offs = (img.to(tl.int64) * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] \
        + offs_n.to(tl.int64)[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _pool_kernel(r_ptr, b_ptr, y_ptr, M, H, W, C, srn, srh, srw, src, syn, syh, syw, syc,
                 HAS_BIAS: tl.constexpr, INCLUDE_PAD: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    # relu(avg_pool2d(r, 3, 1, 1) + bias) for a tile of pixels x channels.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_mask = offs_m < M
    c_mask = offs_c < C
    img = offs_m // (H * W)
    rem = offs_m % (H * W)
    h = rem // W
    w = rem % W
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    count = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for dh in range(-1, 2):
        for dw in range(-1, 2):
            ih = h + dh
            iw = w + dw
            valid = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            offs = (img.to(tl.int64) * srn + ih.to(tl.int64) * srh + iw.to(tl.int64) * srw)[:, None] \
                + offs_c.to(tl.int64)[None, :] * src
            acc += tl.load(r_ptr + offs, mask=valid[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            count += valid.to(tl.float32)
    if INCLUDE_PAD:
        acc = acc / 9.0
    else:
        acc = acc / tl.maximum(count, 1.0)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    acc = tl.where(acc < 0.0, 0.0, acc)
    if ROUND_BF16:
        acc = _round_to_bf16(acc)
    y_offs = (img.to(tl.int64) * syn + h.to(tl.int64) * syh + w.to(tl.int64) * syw)[:, None] \
        + offs_c.to(tl.int64)[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & c_mask[None, :])


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def launches_as_on_gpu():
    """Within the block, launches are configured as on a GPU even under TRITON_INTERPRET=1: the GPU
    tile configuration, and none of the interpreter's own flags (16-bit operands widened, bfloat16
    rounding). For recording a GPU's launches without running them (tools/triton_aot.py): kernels run
    inside it under the interpreter may compute wrong 16-bit results. Not thread-safe."""
    global _interpreting
    saved = _interpreting
    _interpreting = lambda: False  # noqa: E731
    try:
        yield
    finally:
        _interpreting = saved


def _on_device(t):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _nhwc_strides(t):
    """(n, h, w, c) strides of an (N, C, H, W) tensor, the order the kernels take them in."""
    return t.stride(0), t.stride(2), t.stride(3), t.stride(1)


def _block_k(c):
    return 16 if c <= 16 else 32


# Tile configurations, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) from (M, O, C, dtype):
# "small" is what the interpreter runs (few elements a program: it executes them one by one); "gpu"
# is the tensor-core tile for 16-bit operands (128 output pixels x 64 channels x a K chunk of 32 at 8
# warps, wgmma on sm_90; 64 pixels for narrower outputs) and 64 x 32 x 32 at 8 warps for float32,
# whose IEEE products run on the FMA units. The largest tiles that compile without spilling registers for sm_80 and sm_90
# (tools/triton_aot.py: the per-element int64 addresses of the gathered input tile
# take most of the registers; 128 x 128 x 64, or any of these at 4 warps, spill 16-900 bytes a thread).
# Not yet timed on a GPU.
_CONV_CONFIG = "auto"  # "auto" (gpu unless interpreting), "small", "gpu": the tests pick one


def _pow2_at_least(v, lo, hi):
    p = lo
    while p < v and p < hi:
        p *= 2
    return p


def _conv_config(m, o, c, dtype):
    config = _CONV_CONFIG if _CONV_CONFIG != "auto" else ("small" if _interpreting() else "gpu")
    if config == "small":
        return 32, 32 if o > 16 else 16, _block_k(c), 4, 3
    if dtype == torch.float32:
        return 64, _pow2_at_least(o, 16, 32), _pow2_at_least(c, 16, 32), 8, 2
    block_n = _pow2_at_least(o, 16, 64)
    block_m = 128 if m >= 128 and block_n == 64 else 64  # (128 x 32 spills on sm_80)
    return block_m, block_n, _pow2_at_least(c, 16, 32), 8, 3


def conv_into(x, weight, bias, stride, padding, y, relu=True):
    """y[...] = act(conv2d(x, weight, bias, stride, padding)): x and y NHWC views (any strides; y
    typically a channel slice of a larger output), weight [O, C, kh, kw]."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    _, _, oh, ow = y.shape
    wt = weight.permute(2, 3, 1, 0).contiguous()  # [kh, kw, C, O]
    m = n * oh * ow
    block_m, block_n, block_k, num_warps, num_stages = _conv_config(m, o, c, x.dtype)
    grid = (triton.cdiv(m, block_m), triton.cdiv(o, block_n))
    with _on_device(x):
        _conv_kernel[grid](x, wt, bias if bias is not None else wt, y, m, h, w, c, oh, ow, o, kh, kw,
                           stride[0], stride[1], padding[0], padding[1], *_nhwc_strides(x), *_nhwc_strides(y),
                           HAS_BIAS=bias is not None, RELU=relu, IEEE=x.dtype == torch.float32,
                           UPCAST=_interpreting() and x.dtype != torch.float32,
                           ROUND_BF16=_interpreting() and y.dtype == torch.bfloat16,
                           BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
                           num_stages=num_stages)
    return y


def pool_into(r, bias, include_pad, y):
    n, c, h, w = r.shape
    m = n * h * w
    grid = (triton.cdiv(m, 32), triton.cdiv(c, 32))
    with _on_device(r):
        _pool_kernel[grid](r, bias if bias is not None else r, y, m, h, w, c, *_nhwc_strides(r), *_nhwc_strides(y),
                           HAS_BIAS=bias is not None, INCLUDE_PAD=include_pad,
                           ROUND_BF16=_interpreting() and y.dtype == torch.bfloat16, BLOCK_M=32, BLOCK_C=32)
    return y


def _out_hw(hw, weight, stride, padding):
    return tuple((hw[i] + 2 * padding[i] - weight.shape[2 + i]) // stride[i] + 1 for i in range(2))


def branch_conv(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding):
    from inception_fast.ops.branch_conv import output_shape

    x = x.contiguous(memory_format=torch.channels_last)
    n, _, h, w = x.shape
    new = lambda shape: torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)  # noqa: E731
    out = new(output_shape(x.shape, split, depth, conv_weight, conv_stride, conv_padding))
    offsets = [0]
    for s in split:
        offsets.append(offsets[-1] + s)
    rows = lambda i: weight[offsets[i]:offsets[i + 1]]  # noqa: E731
    bias_of = lambda i: bias[offsets[i]:offsets[i + 1]] if bias is not None else None  # noqa: E731

    # The branches whose 1x1 reads x: ONE convolution over their filters into r (bias + ReLU).
    direct = [i for i in range(len(split)) if pool[i] == 0]
    heads = {}
    if direct:
        wm = torch.cat([rows(i) for i in direct])
        bm = torch.cat([bias_of(i) for i in direct]) if bias is not None else None
        r = new((n, wm.shape[0], h, w))
        conv_into(x, wm, bm, (1, 1), (0, 0), r)
        c = 0
        for i in direct:
            heads[i] = r[:, c:c + split[i]]
            c += split[i]
    # Each branch into its channel slice of out.
    j, c_out = 0, 0
    for i, s in enumerate(split):
        convs = list(range(j, j + depth[i]))
        j += depth[i]
        width = conv_weight[convs[-1]].shape[0] if convs else s
        dst = out[:, c_out:c_out + width]
        c_out += width
        if pool[i] in (1, 2):
            proj = new((n, s, h, w))
            conv_into(x, rows(i), None, (1, 1), (0, 0), proj, relu=False)
            a = dst if not convs else torch.empty_like(proj)
            pool_into(proj, bias_of(i), pool[i] == 1, a)
        elif pool[i] == 3:
            pooled = F.max_pool2d(x, 3, 1, 1).contiguous(memory_format=torch.channels_last)
            a = dst if not convs else new((n, s, h, w))
            conv_into(pooled, rows(i), bias_of(i), (1, 1), (0, 0), a)
        else:
            a = heads[i]
            if not convs:
                dst.copy_(a)
        for k, jj in enumerate(convs):
            stride, padding = conv_stride[2 * jj:2 * jj + 2], conv_padding[2 * jj:2 * jj + 2]
            if k == len(convs) - 1:
                nxt = dst
            else:
                oh, ow = _out_hw(a.shape[2:], conv_weight[jj], stride, padding)
                nxt = new((n, conv_weight[jj].shape[0], oh, ow))
            conv_into(a, conv_weight[jj], conv_bias[jj], stride, padding, nxt)
            a = nxt
    return out
