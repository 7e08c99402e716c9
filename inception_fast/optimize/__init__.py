"""`inception_fast.optimize(model)`: any of the six models compiled for inference.

What it does to a model (eval only; the model given is left as it is), file by file:
- fold.py: every conv-BN-ReLU becomes one convolution, BatchNorm folded into its weight and bias
  (in float64, then rounded once to the run dtype);
- conv.py: each convolution runs on the first algorithm of an ordered list whose rule takes it
  (Winograd 3x3 and 1-D where their cost rules say they pay, oneDNN primitives kept per geometry
  with the ReLU and the residual add as post-ops, ATen's oneDNN convolution, cuDNN's fused one,
  conv2d);
- blocks.py: in every Inception block the 1x1 convolutions that read the block input become one
  convolution over their concatenated filters; the average-pool branch is projected before it
  pools; an Inception-ResNet block's scale, residual add and ReLU become its up-projection's
  post-ops; with branch_conv=True a block of ops.branch_conv's forms is one call (spec.py);
- head.py: the classifier's pool on ops.global_avg_pool, its Linear on a kept oneDNN primitive;
- rewrite.py: the units a model lists (`inference_units()`) replaced by their compiled forms;
- runtime.py: activations in channels_last and `dtype`; on the CPU the memory pool and the replay
  of the recorded forward (inception_fast._replay), on a GPU optional CUDA graphs (cuda_graphs.py).
"""
from __future__ import annotations

import copy
import functools
import warnings

import torch
import torch.nn as nn

from inception_fast.optimize.blocks import FusedBranches, FusedResidual
from inception_fast.optimize.conv import ALGORITHMS, FoldedConv
from inception_fast.optimize.head import KeptLinear
from inception_fast.optimize.rewrite import compile_unit, rewrite
from inception_fast.optimize.runtime import OptimizedModel
from inception_fast.optimize.spec import branch_conv_spec

__all__ = ["optimize", "OptimizedModel", "FoldedConv", "FusedBranches", "FusedResidual", "KeptLinear",
           "ALGORITHMS", "branch_conv_spec", "compile_unit", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX on x86, BF16 on Arm):
    without it oneDNN converts every operand to float32 and bfloat16 runs slower than float32."""
    if hasattr(torch.cpu, "_is_avx512_bf16_supported") and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.lower().startswith(("flags", "features")) for w in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def _warn_emulated_bf16() -> None:
    warnings.warn("inception_fast.optimize: this CPU has no bfloat16 arithmetic (no AVX-512 BF16, AMX or Arm BF16): "
                  "oneDNN emulates it and dtype=torch.bfloat16 runs several times slower than float32 here; "
                  "use optimize(model) (float32) for speed", RuntimeWarning, stacklevel=3)


def optimize(model: nn.Module, *, dtype: torch.dtype | None = None, channels_last: bool = True,
             cuda_graph: bool = False, branch_conv: bool = False, replay: bool = True,
             cudnn_fused: bool = False) -> OptimizedModel:
    """`model` (any of the six, on its device) compiled for inference; the model itself is unchanged.

    dtype: the precision inside (default float32; torch.bfloat16 on CPUs with AVX-512 BF16 or AMX
    and on GPUs, torch.float16 on GPUs). channels_last: activations in NHWC (the layout oneDNN's and
    cuDNN's fastest convolutions use). cuda_graph: on a GPU, forward replays a CUDA graph captured
    once per input shape, dtype and layout (forward_features / forward_head run eagerly).
    branch_conv: run every block of ops.branch_conv's forms as that op (off by default: see
    FusedBranches.use_branch_conv). replay: on the CPU, forward replays the ops it recorded on its
    second call with an input of that shape, strides and dtype, without the Python of the module
    tree (inception_fast._replay; not while forward hooks are registered). cudnn_fused: on a GPU,
    each convolution's ReLU (and residual add) runs inside cuDNN's convolution (not yet timed on a
    GPU, hence off by default)."""
    dtype = dtype or torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"optimize() runs in float32, bfloat16 or float16, got {dtype}")
    device = next(model.parameters()).device
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"optimize(cuda_graph=True) replays CUDA graphs: the model must be on a GPU, it is on "
                         f"{device}")
    if dtype == torch.float16 and device.type == "cpu":
        raise TypeError("optimize(dtype=torch.float16) is for GPUs: on the CPU use torch.bfloat16")
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        rewrite(net)
        net = net.to(dtype)
        for m in net.modules():
            if isinstance(m, FusedBranches):
                m.use_branch_conv = bool(branch_conv)
            if isinstance(m, FoldedConv):
                m.cudnn_fused = bool(cudnn_fused)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
    return OptimizedModel(net, dtype, channels_last, cuda_graph, replay).eval()
