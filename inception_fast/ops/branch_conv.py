"""branch_conv: the branches of an Inception block that start at its input, for inference (BatchNorm
folded into the weights and biases), as one op: the 1x1 convolutions that read the block input as
ONE convolution over their concatenated filters (bias + ReLU in its epilogue), the average-pool
branch projected first and pooled after (both linear: the pool runs on the narrower tensor), the
max-pool branch pooled then projected (max does not commute), each branch's following convolutions
(3x3, 5x5, 1x7 / 7x1, stride 1 or 2) with bias + ReLU, and each branch's result written into its
channel slice of the block output (no separate torch.cat). Semantics in csrc/ops.cpp, reference in
`branch_conv_reference`.

Kernels: C++ on the CPU (csrc/cpu/branch_conv.cpp: ATen's oneDNN convolutions over channels_last
tensors); Triton (inception_fast/triton/branch_conv.py: an implicit-GEMM convolution over NHWC with
the bias + ReLU epilogue storing into the output's channel slice, for CUDA and, under
TRITON_INTERPRET=1, CPU tensors); CUDA C++ (csrc/cuda/branch_conv.cu: each reduce branch's 1x1 and its
first k x k convolution fused in one kernel, the reduced tile and its halo in shared memory; run under
use_backend("cuda") until timed on a GPU, and tested on the CPU through `branch_conv_emulated`, the
same kernel bodies run block by block). Inference only: there is no gradient (train the model's fused path,
whose blocks merge their 1x1 convolutions the same way, with BatchNorm between the convolutions).

`spec_of(branches)` turns a block description (`BranchBlock.branches()`, eval mode) into the op's
arguments, BatchNorm folded in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _backend, _library

_library.define_triton_ops(["branch_conv"], "inception_fast.triton.branch_conv")

POOL_NONE, POOL_AVG, POOL_AVG_EXCLUDE_PAD, POOL_MAX = 0, 1, 2, 3


def _conv_args(depth, conv_stride, conv_padding):
    return [(tuple(conv_stride[2 * j:2 * j + 2]), tuple(conv_padding[2 * j:2 * j + 2])) for j in range(sum(depth))]


def branch_conv_reference(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding):
    """The op's semantics, composed of torch ops (output in x's dtype, channels_last)."""
    offsets = [0]
    for s in split:
        offsets.append(offsets[-1] + s)
    args = _conv_args(depth, conv_stride, conv_padding)
    results, j = [], 0
    for i, s in enumerate(split):
        w = weight[offsets[i]:offsets[i + 1]]
        b = bias[offsets[i]:offsets[i + 1]] if bias is not None else None
        if pool[i] == POOL_NONE:
            a = F.relu(F.conv2d(x, w, b))
        elif pool[i] in (POOL_AVG, POOL_AVG_EXCLUDE_PAD):
            a = F.avg_pool2d(F.conv2d(x, w), 3, 1, 1, count_include_pad=pool[i] == POOL_AVG)
            a = F.relu(a + b.view(1, -1, 1, 1) if b is not None else a)
        else:
            a = F.relu(F.conv2d(F.max_pool2d(x, 3, 1, 1), w, b))
        for _ in range(depth[i]):
            stride, padding = args[j]
            a = F.relu(F.conv2d(a, conv_weight[j], conv_bias[j], stride, padding))
            j += 1
        results.append(a)
    return torch.cat(results, 1).contiguous(memory_format=torch.channels_last)


def output_shape(x_shape, split, depth, conv_weight, conv_stride, conv_padding):
    """(N, C_out, OH, OW) of branch_conv; raises ValueError naming the branch that does not fit."""
    n, _, h, w = x_shape
    args = _conv_args(depth, conv_stride, conv_padding)
    channels, size, j = 0, None, 0
    for i, s in enumerate(split):
        c, hw = s, (h, w)
        for _ in range(depth[i]):
            (sh, sw), (ph, pw) = args[j]
            kh, kw = conv_weight[j].shape[2:]
            hw = ((hw[0] + 2 * ph - kh) // sh + 1, (hw[1] + 2 * pw - kw) // sw + 1)
            if min(hw) < 1:
                raise ValueError(f"branch_conv: convolution {j} (branch {i}) has a {kh}x{kw} kernel that does not fit "
                                 f"its input with padding {(ph, pw)}")
            c = conv_weight[j].shape[0]
            j += 1
        if size is not None and hw != size:
            raise ValueError(f"branch_conv: the branches end on different map sizes (branch 0: {size}, branch {i}: "
                             f"{hw})")
        size = hw
        channels += c
    return n, channels, size[0], size[1]


def _fake(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding):
    shape = output_shape(x.shape, split, depth, conv_weight, conv_stride, conv_padding)
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


_library.register_fake("branch_conv", _fake)


def _check_inputs(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"branch_conv: x must be a 4-D (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"branch_conv: x must be floating point, got {x.dtype}")
    if not (len(split) == len(pool) == len(depth) >= 1):
        raise ValueError(f"branch_conv: split, pool and depth need one entry per branch, got {len(split)}, "
                         f"{len(pool)}, {len(depth)}")
    if min(split) < 1 or min(depth) < 0 or any(p not in (0, 1, 2, 3) for p in pool):
        raise ValueError(f"branch_conv: split entries must be >= 1, depth >= 0, pool 0-3; got split {list(split)}, "
                         f"pool {list(pool)}, depth {list(depth)}")
    r = sum(split)
    if tuple(weight.shape) != (r, x.shape[1], 1, 1):
        raise ValueError(f"branch_conv: weight must be [{r}, {x.shape[1]}, 1, 1] (sum(split) 1x1 filters over x's "
                         f"channels), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (r,):
        raise ValueError(f"branch_conv: bias must be [{r}], got {tuple(bias.shape)}")
    n_conv = sum(depth)
    if not (len(conv_weight) == len(conv_bias) == n_conv and len(conv_stride) == len(conv_padding) == 2 * n_conv):
        raise ValueError(f"branch_conv: sum(depth) = {n_conv} convolutions need as many conv_weight and conv_bias "
                         f"entries and twice as many conv_stride / conv_padding values")
    for t in [weight, bias, *conv_weight, *conv_bias]:
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"branch_conv: every weight and bias must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"branch_conv: every weight and bias must be on x's device {x.device}, got {t.device}")
    j = 0
    for i, s in enumerate(split):
        c = s
        for _ in range(depth[i]):
            if conv_weight[j].dim() != 4 or conv_weight[j].shape[1] != c:
                raise ValueError(f"branch_conv: conv_weight[{j}] (branch {i}) must be [O, {c}, kh, kw], got "
                                 f"{tuple(conv_weight[j].shape)}")
            if conv_bias[j] is not None and tuple(conv_bias[j].shape) != (conv_weight[j].shape[0],):
                raise ValueError(f"branch_conv: conv_bias[{j}] must be [{conv_weight[j].shape[0]}], got "
                                 f"{tuple(conv_bias[j].shape)}")
            c = conv_weight[j].shape[0]
            j += 1
    if min(conv_stride, default=1) < 1 or min(conv_padding, default=0) < 0:
        raise ValueError("branch_conv: conv strides must be >= 1 and paddings >= 0")
    output_shape(x.shape, split, depth, conv_weight, conv_stride, conv_padding)


def branch_conv(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding):
    """The branches of an Inception block that start at x, BatchNorm folded (see the module doc and
    csrc/ops.cpp); channels_last output in x's dtype. On the backend `use_backend` selects: C++ for
    CPU tensors, Triton for CUDA tensors (and CPU ones under TRITON_INTERPRET=1; the CUDA C++ kernels
    under use_backend("cuda"), or where Triton is missing), else the reference."""
    split, pool, depth = [int(v) for v in split], [int(v) for v in pool], [int(v) for v in depth]
    conv_stride, conv_padding = [int(v) for v in conv_stride], [int(v) for v in conv_padding]
    conv_weight, conv_bias = list(conv_weight), list(conv_bias)
    _check_inputs(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in [x, weight, bias, *conv_weight, *conv_bias]):
        raise RuntimeError("branch_conv is an inference op (BatchNorm folded into its weights) and has no gradient: "
                           "train the model's fused path, or call it under torch.no_grad()")
    backend = _backend.resolve(x, "branch_conv")
    args = (x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding)
    if backend == "reference":
        return branch_conv_reference(*args)
    if backend == "cuda" and _backend.get_backend() == "auto" and \
            _backend.unavailable_reason("triton", x.device, x.dtype) is None:
        # The CUDA C++ kernels (csrc/cuda/branch_conv.cu: the fused reduce + k x k tile) are checked
        # through their CPU emulation but not yet timed on a GPU: Triton's tensor-core implicit GEMM
        # stays the default until `python3 tools/gpucheck.py` has timed both; use_backend("cuda")
        # runs them.
        backend = "triton"
    return getattr(_library.namespace(backend), "branch_conv")(*args)


def branch_conv_emulated(x, weight, bias, split, pool, depth, conv_weight, conv_bias, conv_stride, conv_padding,
                         smem_bytes: int = 227 * 1024):
    """branch_conv through the CUDA backend's plan and kernels run on the CPU (tests; see
    csrc/testing/branch_conv_emulated.cpp), with `smem_bytes` of shared memory per block (an H100's by
    default)."""
    _check_inputs(x, weight, bias, [int(v) for v in split], [int(v) for v in pool], [int(v) for v in depth],
                  list(conv_weight), list(conv_bias), [int(v) for v in conv_stride], [int(v) for v in conv_padding])
    return torch.ops.inception_fast._branch_conv_emulated(x, weight, bias, split, pool, depth, conv_weight, conv_bias,
                                                         conv_stride, conv_padding, smem_bytes)
