"""`inception_fast.optimize(model)`: any of the six models compiled for inference.

What it does to a model (eval only; the model given is left as it is):
- every conv-BN-ReLU becomes one convolution: BatchNorm folded into the weights and bias (in float64,
  then rounded once to the run dtype), the ReLU a post-op of the convolution (oneDNN on the CPU);
- in every Inception block the 1x1 convolutions that read the block input become ONE convolution
  with their output channels concatenated (the input is read once, one large GEMM instead of
  several narrow ones); the following convs read their channel slice of it; with branch_conv=True a
  block whose branches all start at its input (all but the grid reductions and the forking
  Inception-v3 E / v4 C blocks) is one ops.branch_conv call, each branch written into its slice of
  the block output;
- the average-pool branch is projected first and pooled after (pool and 1x1 conv are both linear,
  so pool(conv(x)) == conv(pool(x)) for either count_include_pad), then bias and ReLU: the pool runs
  on the narrower tensor;
- in the Inception-ResNet blocks the residual scale is folded into the up-projection, and the
  residual add and ReLU are its post-ops (one pass instead of three);
- max pools on the max_pool op (no int64 index tensor: 1.6-4.5x ATen's on these maps);
- on the CPU in float32, the 3x3 stride-1 convolutions where it measured faster as Winograd's
  F(2x2, 3x3) (ops.winograd_conv3x3: 2.25x fewer multiply-adds; FoldedConv._winograd_pays says where),
  and the 1x7 / 7x1 / 1x3 / 3x1 ones as F(4, 7) / F(4, 3) (ops.winograd_conv1d: 2.8x / 2x fewer;
  FoldedConv._winograd1d_dim says where);
- the classifier's average pool on ops.global_avg_pool, its Linear on a kept oneDNN primitive
  (KeptLinear, an nn.Linear);
- activations in channels_last and, with `dtype=torch.bfloat16` (or float16 on a GPU), in that
  dtype; the result takes the same input as the model (float32, NCHW or channels_last) and returns
  float32;
- on the CPU, forward runs under the memory pool (`inception_fast.memory`): each forward's
  activations reuse the blocks the previous one freed instead of page-faulting fresh memory in
  (1.10-1.22x on googlenet and inception_resnet_v2, measured in one process with and without);
- on the CPU, forward replays the ops it recorded on its second call with an input of that
  signature, without the Python of the module tree (`inception_fast._replay`; 1.03-1.11x at batch 1,
  where that Python was ~30 us per op), and then runs as one C++ call (Replay.run_model: the input's
  conversion, the ops, the float32 output).

The block descriptions it compiles are the models' own (`BranchBlock.branches()`), checked against
each block's forward in the tests.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import statistics
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import _ext, layers, memory, ops
from inception_fast._replay import Programs, signature
from inception_fast.layers import BranchBlock, ConvBNReLU, Fork, MaxPool2d, ResidualBlock
from inception_fast.models._base import GlobalPool2d
from inception_fast.ops import _backend

__all__ = ["optimize", "OptimizedModel", "FoldedConv", "FusedBranches", "FusedResidual", "KeptLinear",
           "branch_conv_spec"]


@functools.lru_cache(maxsize=None)
def _onednn_pointwise() -> bool:
    """Whether ATen's oneDNN convolution with fused post-ops (what inductor's freezing uses) is here."""
    ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    if not ok:
        warnings.warn("inception_fast.optimize: this torch has no oneDNN convolution with post-ops "
                      "(torch.ops.mkldnn._convolution_pointwise); CPU convolutions run as conv2d + separate "
                      "bias/ReLU passes", stacklevel=3)
    return ok


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


@functools.lru_cache(maxsize=None)
def _onednn_kept() -> bool:
    """Whether inception_fast._onednn (convolutions on oneDNN primitives created once and kept) is
    here; without it, ATen's oneDNN convolution runs, which makes the primitive's descriptor again
    on every call (15-50 us a convolution)."""
    if not _ext.onednn_loaded() and _ext.loaded():  # (without _C, import reported both)
        warnings.warn("inception_fast.optimize: inception_fast._onednn is not available "
                      f"({_ext.ONEDNN_ERROR or 'not built'}; install onednn-cpu-gomp and onednn-devel-cpu-gomp, then "
                      "rebuild); CPU convolutions run through ATen's oneDNN convolution", stacklevel=3)
    return _ext.onednn_loaded()


def _is_conv_bn_relu(step) -> bool:
    return isinstance(getattr(step, "conv", None), nn.Conv2d) and isinstance(getattr(step, "bn", None),
                                                                              nn.BatchNorm2d)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, scale: float = 1.0):
    """(weight, bias) of conv followed by bn (running statistics) and a factor, in float64."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                               device=w.device)
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("optimize() folds BatchNorm's running statistics into the convolutions; a "
                             "BatchNorm2d without them (track_running_stats=False) has none to fold")
        inv = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(inv)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(inv)
        w = w * (gamma * inv).view(-1, 1, 1, 1)
        b = (b - bn.running_mean.detach().double()) * gamma * inv + beta
    return w * scale, b * scale


class FoldedConv(nn.Module):
    """act(conv(x, weight, bias) [+ other]): a convolution with BatchNorm folded in, the ReLU (and a
    residual add) as post-ops of oneDNN's convolution on the CPU."""

    # On the CPU, run on inception_fast._onednn's kept primitives where it is built (True), or on
    # ATen's oneDNN convolution (False; for A/B checks). Read when a forward is recorded.
    use_kept_primitives: bool = True
    # On a GPU, the ReLU (and the residual add before it) fused into cuDNN's convolution
    # (torch.cudnn_convolution_relu / cudnn_convolution_add_relu, the kernels TorchScript's freezing
    # uses) instead of conv2d then separate passes over the output. Set per module by
    # optimize(cudnn_fused=True); off by default until timed on a GPU (the GPU check's model
    # benchmarks time both, "optimize_graph" and "optimize_cudnn_fused").
    cudnn_fused: bool = False
    # On the CPU in float32, the 3x3 stride-1 convolutions as Winograd's F(2x2, 3x3)
    # (ops.winograd_conv3x3: 2.25x fewer multiply-adds, two transform passes) where _winograd_pays
    # says it measured faster than oneDNN's direct convolution. Read when a forward is recorded.
    use_winograd: bool = True
    # On the CPU in float32, the 1x7 / 7x1 / 1x3 / 3x1 stride-1 convolutions as F(4, r)
    # (ops.winograd_conv1d: 2.8x / 2x fewer multiply-adds) where _winograd1d_dim says it measured faster
    # (and use_winograd is on). Read when a forward is recorded.
    use_winograd1d: bool = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, conv: nn.Conv2d, relu: bool = True):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FoldedConv takes plain zero-padded convolutions, got {conv}")
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.relu = relu
        # oneDNN's own layout of the weight for an input shape (packed on first use: 2-12% per conv
        # over reordering a plain weight on every call). Not state: dropped on copy, rebuilt on use.
        self._packed: dict = {}

    def __getstate__(self):
        state = super().__getstate__()
        state["_packed"] = {}
        return state

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        key = (tuple(x.shape), w.dtype, w.data_ptr())
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= 8:  # a model fed many shapes keeps the latest few
                self._packed.clear()
            packed = self._packed[key] = torch.ops.mkldnn._reorder_convolution_weight(
                w, self.padding, self.stride, self.dilation, 1, list(x.shape))
        return packed

    @classmethod
    def from_step(cls, step, relu: bool = True) -> "FoldedConv":
        """From a ConvBNReLU (or anything with its `conv` and `bn`)."""
        return cls(*_fold(step.conv, step.bn), step.conv, relu)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def _onednn_packed(self, x: torch.Tensor, post_op: int) -> torch.Tensor:
        w, b = self.weight, self.bias
        key = ("onednn", tuple(x.shape), w.dtype, b.dtype, post_op, w.data_ptr(), w._version)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= 8:
                self._packed.clear()
            packed = self._packed[key] = torch.ops.inception_fast.onednn_conv_pack(
                w, list(x.shape), self.stride, self.padding, True, post_op)
        return packed

    def _winograd_pays(self, x: torch.Tensor) -> bool:
        """Whether this convolution on x runs as ops.winograd_conv3x3: a float32 CPU 3x3 convolution,
        stride 1, padding 0 or 1, of 20 MFLOP or more, whose channels make the saved multiply-adds
        outweigh the transforms (C K / (C + K) >= 20), with 48 input channels or more or a map of
        28x28 or more, on maps larger than 8x8 (more than 16 tiles of 2x2 outputs an image), or with
        384 input channels or more. Measured against oneDNN's direct convolution on a 2-core Zen 4, in
        the replayed model: 1.2-1.5x on 14x14 to 56x56 maps of 64-192 channels (batch 1 and 8), 1.2x
        on 147x147 of 32 -> 64 and 1.08x on 28x28 of 32 -> 96, 1.1-1.2x on 8x8 of 448 -> 384; left
        direct: 0.86-0.92x on 14x14 of 32 -> 64 / 128, 0.63-1.02x on 7x7 maps (batch 8), 0.6x with
        16-24 input channels."""
        w = self.weight
        if not (self._winograd_candidate(x) and tuple(w.shape[2:]) == (3, 3)
                and self.padding in ([0, 0], [1, 1])):
            return False
        k, c = w.shape[:2]
        p = self.padding[0]
        oh, ow = x.shape[2] + 2 * p - 2, x.shape[3] + 2 * p - 2
        tiles = ((oh + 1) // 2) * ((ow + 1) // 2)  # an image's
        flops = 2 * x.shape[0] * oh * ow * c * k * 9
        return c * k >= 20 * (c + k) and flops >= 20e6 and (c >= 48 or oh * ow >= 28 * 28) \
            and (tiles > 16 or c >= 384)

    def _winograd_candidate(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (self.use_winograd and x.dtype == torch.float32 and w.dtype == torch.float32 and x.device.type == "cpu"
                and self.stride == [1, 1] and self.dilation == [1, 1] and x.dim() == 4 and _ext.loaded())

    def _winograd1d_dim(self, x: torch.Tensor) -> int | None:
        """The axis (2 for r x 1, 3 for 1 x r) along which this convolution on x runs as
        ops.winograd_conv1d (F(4, r)), or None: a float32 CPU 1x7 / 7x1 / 1x3 / 3x1 convolution, stride 1,
        zero padding along its axis only (less than r), of 10 MFLOP or more, C K / (C + K) >= 20, with 8 outputs or
        more along the axis (two tiles of 4). Measured against the direct convolution on a 2-core Zen 4,
        alone: 1.6-1.95x on Inception-v4 / Inception-ResNet-v2 / Inception-v3's 17x17 maps of 128-320
        channels and 1.3-1.8x on their 8x8 maps of 192-512 (batch 1, 4 and 8)."""
        w = self.weight
        if not (self.use_winograd1d and self._winograd_candidate(x)):
            return None
        kh, kw = w.shape[2:]
        if kh == 1 and kw in (3, 7) and self.padding[0] == 0:
            dim, r = 3, kw
        elif kw == 1 and kh in (3, 7) and self.padding[1] == 0:
            dim, r = 2, kh
        else:
            return None
        k, c = w.shape[:2]
        out = x.shape[dim] + 2 * self.padding[dim - 2] - r + 1
        flops = 2 * x.shape[0] * c * k * r * out * x.shape[5 - dim]
        return dim if self.padding[dim - 2] < r and c * k >= 20 * (c + k) and flops >= 10e6 and out >= 8 else None

    def _winograd_weight(self) -> torch.Tensor:
        w = self.weight
        key = ("winograd", w.data_ptr(), w._version)
        u = self._packed.get(key)
        if u is None:
            if len(self._packed) >= 8:
                self._packed.clear()
            u = self._packed[key] = ops.winograd_weight(w) if w.shape[2:] == (3, 3) else ops.winograd_weight1d(w)
        return u

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        w, b = self.weight, self.bias
        if other is None and not torch.is_grad_enabled():
            if self._winograd_pays(x):
                return ops.winograd_conv3x3(x, self._winograd_weight(), b, self.padding[0], self.relu)
            dim = self._winograd1d_dim(x)
            if dim is not None:
                return ops.winograd_conv1d(x, self._winograd_weight(), b, dim, self.padding[dim - 2], self.relu)
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and w.dtype == x.dtype \
                and not torch.is_grad_enabled() and self.dilation == [1, 1] and self.use_kept_primitives \
                and _onednn_kept() \
                and (other is None or other.dtype == x.dtype):
            post_op = (1 if self.relu else 0) | (0 if other is None else 2)
            return torch.ops.inception_fast.onednn_conv(x, self._onednn_packed(x, post_op), list(w.shape), b,
                                                        self.stride, self.padding, post_op, other)
        # (torch 2.11's oneDNN fails to make the add-fused primitive for a 1x1 output map, "could not
        # create a memory": such maps, only met at small inputs, take conv2d below)
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _onednn_pointwise() \
                and (other is None or other.shape[-2] * other.shape[-1] > 1):
            w = self._packed_weight(x) if w.dtype == x.dtype and not torch.is_grad_enabled() else w
            act = "relu" if self.relu else "none"
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(x, w, b, self.padding, self.stride, self.dilation, 1,
                                                               act, [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, w, b, self.padding, self.stride, self.dilation, 1, "add", 1.0,
                "relu" if self.relu else None, [], "")
        if x.is_cuda and self.cudnn_fused and self.relu and not torch.is_grad_enabled() and w.dtype == x.dtype \
                and (other is None or other.dtype == x.dtype):
            if other is None:
                return torch.cudnn_convolution_relu(x, w, b, self.stride, self.padding, self.dilation, 1)
            return torch.cudnn_convolution_add_relu(x, w, other, 1.0, b, self.stride, self.padding, self.dilation, 1)
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation)
        if other is not None:
            y = y.add_(other)
        return F.relu_(y) if self.relu else y

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, padding={tuple(self.padding)}, " \
               f"relu={self.relu}"


class _PoolProjection(nn.Module):
    """relu(avgpool(conv1x1(x)) + bias) == relu(conv1x1(avgpool(x)) + bias): the projection first,
    so that the pool runs on the narrower tensor; a 3x3/1/1 pool, its bias and the ReLU in one pass
    (ops.avg_pool3x3_bias_relu)."""

    def __init__(self, pool: nn.AvgPool2d, step):
        super().__init__()
        w, b = _fold(step.conv, step.bn)
        self.project = FoldedConv(w, torch.zeros_like(b), step.conv, relu=False)
        self.register_buffer("bias", b.float().view(1, -1, 1, 1))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(x)
        p = self.pool
        if _pair(p.kernel_size) == (3, 3) and _pair(p.stride) == (1, 1) and _pair(p.padding) == (1, 1) \
                and not p.ceil_mode and p.divisor_override is None:  # one pass (ops.avg_pool3x3_bias_relu)
            return ops.avg_pool3x3_bias_relu(y, self.bias.view(-1), p.count_include_pad)
        return F.relu_(p(y).add_(self.bias))


def _is_1x1(step) -> bool:
    c = step.conv
    return c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0) and c.groups == 1 \
        and c.dilation == (1, 1)


def _compile_steps(steps) -> nn.ModuleList:
    out = nn.ModuleList()
    for step in steps:
        if isinstance(step, Fork):
            out.append(_Fork([_compile_steps(b) for b in step.branches]))
        elif _is_conv_bn_relu(step):
            out.append(FoldedConv.from_step(step))
        elif isinstance(step, nn.MaxPool2d):
            out.append(_fast_max_pool(step))
        elif isinstance(step, nn.AvgPool2d):
            out.append(copy.deepcopy(step))
        else:
            raise TypeError(f"optimize() does not know the block step {type(step).__name__}")
    return out


def _fast_max_pool(pool: nn.MaxPool2d) -> nn.Module:
    """The pool on the max_pool op (no index tensor; 1.6-4.5x ATen's CPU max_pool2d), where it takes it."""
    if pool.return_indices or pool.dilation not in (1, (1, 1)):
        return copy.deepcopy(pool)
    return MaxPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode, fused=True)


class _GlobalAvgPool(GlobalPool2d):
    """GlobalPool2d('avg') on ops.global_avg_pool (one pass over the map, the sum in float32; ATen's
    mean of a channels_last bfloat16 map ran at 5 GB/s: 73 of googlenet's 8.5 ms at batch 1)."""

    def __init__(self, flatten: bool):
        super().__init__("avg", flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.global_avg_pool(x)
        return y if self.flatten else y.view(*y.shape, 1, 1)


class KeptLinear(nn.Linear):
    """nn.Linear (same parameters and state_dict) whose CPU inference runs as a 1x1 convolution on
    inception_fast._onednn's kept primitive, the weight packed once. ATen's CPU linear (addmm) makes
    oneDNN's primitive again on every call: GoogLeNet's classifier at batch 1 took 137 us against
    47 on the kept primitive (bf16, the weight cold: a forward's other weights pass through the cache
    between two classifications; 41 us to read the weight at all), 224 against 107 in float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.train(linear.training)
        self._packed: dict = {}  # (not state: dropped on copy, rebuilt on use)

    def __getstate__(self):
        state = super().__getstate__()
        state["_packed"] = {}
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if x.device.type == "cpu" and x.dim() == 2 and x.dtype in (torch.float32, torch.bfloat16) \
                and w.dtype == x.dtype and (b is None or b.dtype == x.dtype) and not torch.is_grad_enabled() \
                and FoldedConv.use_kept_primitives and _onednn_kept():
            n, k = x.shape
            key = (n, w.dtype, w.data_ptr(), w._version)
            packed = self._packed.get(key)
            if packed is None:
                if len(self._packed) >= 8:
                    self._packed.clear()
                packed = self._packed[key] = torch.ops.inception_fast.onednn_conv_pack(
                    w.detach().view(*w.shape, 1, 1), [n, k, 1, 1], [1, 1], [0, 0], b is not None, 0)
            y = torch.ops.inception_fast.onednn_conv(x.contiguous().view(n, k, 1, 1), packed, [w.shape[0], k, 1, 1],
                                                     b, [1, 1], [0, 0], 0, None)
            return y.view(n, w.shape[0])
        return super().forward(x)


def _compile_head(module: nn.Module) -> nn.Module | None:
    """The classifier's modules: the average pool on ops.global_avg_pool, a Linear on a kept primitive."""
    if type(module) is GlobalPool2d and module.pool_type == "avg":
        return _GlobalAvgPool(module.flatten)
    if type(module) is nn.Linear:
        return KeptLinear(module)
    return None


class _Fork(nn.Module):
    def __init__(self, branches: list[nn.ModuleList]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat([_run(b, x) for b in self.branches])


# Whether a block's branches are concatenated by ops.channel_cat on the CPU (one pass, channels_last)
# rather than torch.cat; read when a forward is recorded (for A/B checks).
use_channel_cat = True
# ... for outputs of at most this many bytes (they fit the L2 cache): there it measured 1.05-1.17x
# torch.cat (batch 1, 17x17 and 35x35 maps, bf16; 0.51 -> 0.41 ms for Inception-v3's 15 in a
# replayed forward); on outputs of several MB (batch 8) it measured 0.4-0.95x, so those stay on
# torch.cat (2-core Zen 4).
channel_cat_max_bytes = 1 << 20


def _cat(outs: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(outs, 1); on the CPU, for an output that fits the L2 cache, through ops.channel_cat."""
    if use_channel_cat and outs[0].device.type == "cpu" and all(o.dim() == 4 and o.stride(1) == 1 for o in outs) \
            and sum(o.numel() for o in outs) * outs[0].element_size() <= channel_cat_max_bytes:
        return ops.channel_cat(outs)
    return torch.cat(outs, 1)


def _run(steps: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = step(x)
    return x


def branch_conv_spec(branches: list[list], dtype: torch.dtype | None = None) -> dict | None:
    """The arguments of ops.branch_conv computing cat([run_branch(b, x) for b in branches], 1) in eval
    mode (BatchNorm folded in float64, then cast to `dtype`, default the weights' dtype), or None when a
    branch is not of the op's forms: a 1x1 conv-BN-ReLU, an average pool 3x3/1/1 then one, or a max
    pool 3x3/1/1 then one, each followed by any number of conv-BN-ReLUs."""
    weights, biases, split, pool, depth = [], [], [], [], []
    conv_weight, conv_bias, conv_stride, conv_padding = [], [], [], []
    for steps in branches:
        kind = 0
        if steps and isinstance(steps[0], nn.AvgPool2d):
            p = steps[0]
            if _pair(p.kernel_size) != (3, 3) or _pair(p.stride) != (1, 1) or _pair(p.padding) != (1, 1) \
                    or p.divisor_override is not None:
                return None
            kind, steps = (1 if p.count_include_pad else 2), steps[1:]
        elif steps and isinstance(steps[0], nn.MaxPool2d):
            p = steps[0]
            if _pair(p.kernel_size) != (3, 3) or _pair(p.stride) != (1, 1) or _pair(p.padding) != (1, 1) \
                    or _pair(p.dilation) != (1, 1) or p.return_indices:
                return None
            kind, steps = 3, steps[1:]
        if not steps or not _is_conv_bn_relu(steps[0]) or not _is_1x1(steps[0]):
            return None
        for step in steps:
            c = getattr(step, "conv", None)
            if not _is_conv_bn_relu(step) or c.groups != 1 or c.dilation != (1, 1) or c.padding_mode != "zeros" \
                    or isinstance(c.padding, str):
                return None
        w, b = _fold(steps[0].conv, steps[0].bn)
        weights.append(w)
        biases.append(b)
        split.append(w.shape[0])
        pool.append(kind)
        depth.append(len(steps) - 1)
        for step in steps[1:]:
            w, b = _fold(step.conv, step.bn)
            conv_weight.append(w)
            conv_bias.append(b)
            conv_stride += list(step.conv.stride)
            conv_padding += list(step.conv.padding)
    dtype = dtype or branches[0][-1].conv.weight.dtype
    cast = lambda t: t.to(dtype).contiguous()  # noqa: E731
    return dict(weight=cast(torch.cat(weights)), bias=cast(torch.cat(biases)), split=split, pool=pool, depth=depth,
                conv_weight=[cast(w) for w in conv_weight], conv_bias=[cast(b) for b in conv_bias],
                conv_stride=conv_stride, conv_padding=conv_padding)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class FusedBranches(nn.Module):
    """An Inception block compiled from its description (a list of branches, each a list of steps):
    the branches' leading 1x1 convs as one merged convolution, the average-pool branch projected
    first, every other conv-BN-ReLU folded."""

    # Whether forward runs the block as one ops.branch_conv call where its branches are of the op's
    # forms (optimize(branch_conv=True)). Off by default: on the CPU the op measured 0.97-1.01x the
    # composition below (which keeps oneDNN's prepacked weights and ReLU post-op; A/B, Inception-v3
    # and GoogLeNet, fp32 and bf16, 2-core Zen 4), and its Triton kernels have not been timed on a GPU.
    use_branch_conv: bool = False

    def __init__(self, branches: list[list]):
        super().__init__()
        self._init_branch_conv(branches)
        merged, sizes = [], []
        self.starts: list[str] = []  # per branch: "merged" (its slice of the merged conv), "pool_proj", "input"
        self.pool_projections = nn.ModuleList()
        rests = []
        for steps in branches:
            if steps and _is_conv_bn_relu(steps[0]) and _is_1x1(steps[0]):
                merged.append(steps[0])
                sizes.append(steps[0].conv.out_channels)
                self.starts.append("merged")
                rests.append(steps[1:])
            elif len(steps) >= 2 and isinstance(steps[0], nn.AvgPool2d) and _is_conv_bn_relu(steps[1]) \
                    and _is_1x1(steps[1]):
                self.pool_projections.append(_PoolProjection(copy.deepcopy(steps[0]), steps[1]))
                self.starts.append("pool_proj")
                rests.append(steps[2:])
            else:
                self.starts.append("input")
                rests.append(steps)
        self.sizes = sizes
        self.merged = None
        if merged:
            folded = [_fold(s.conv, s.bn) for s in merged]
            self.merged = FoldedConv(torch.cat([w for w, _ in folded]), torch.cat([b for _, b in folded]),
                                     merged[0].conv, relu=True)
        self.rests = nn.ModuleList(_compile_steps(r) for r in rests)

    def _init_branch_conv(self, branches: list[list]) -> None:
        # Only the structure is kept: the op's tensors are this module's own folded weights, taken at
        # call time (the block's 1x1 filters concatenated in branch order once per dtype and device,
        # where they come from more than one module), so the weights are not stored twice.
        spec = branch_conv_spec(branches, torch.float32)
        self._bc_args = None if spec is None else (spec["split"], spec["pool"], spec["depth"])
        self._bc_geometry = None if spec is None else (spec["conv_stride"], spec["conv_padding"])
        self._bc_cache: dict = {}

    def __getstate__(self):
        state = super().__getstate__()
        state["_bc_cache"] = {}
        return state

    def _bc_tensors(self):
        """(weight, bias, conv weights, conv biases) of ops.branch_conv, from the compiled modules."""
        firsts, chains = [], []
        pieces = iter(zip(self.merged.weight.split(self.sizes), self.merged.bias.split(self.sizes))) \
            if self.merged is not None else iter(())
        projections = iter(self.pool_projections)
        for start, rest in zip(self.starts, self.rests):
            if start == "merged":
                firsts.append(next(pieces))
                chains += list(rest)
            elif start == "pool_proj":
                proj = next(projections)
                firsts.append((proj.project.weight, proj.bias.view(-1)))
                chains += list(rest)
            else:  # the max-pool branch: [MaxPool2d, its 1x1, ...]
                firsts.append((rest[1].weight, rest[1].bias))
                chains += list(rest)[2:]
        if len(firsts) == len(self.sizes) and self.merged is not None:
            weight, bias = self.merged.weight, self.merged.bias  # the merged conv's filters, in branch order
        else:
            key = (self.merged.weight.data_ptr() if self.merged is not None else None, firsts[0][0].dtype,
                   firsts[0][0].device)
            if key not in self._bc_cache:
                self._bc_cache.clear()
                self._bc_cache[key] = (torch.cat([w for w, _ in firsts]), torch.cat([b for _, b in firsts]))
            weight, bias = self._bc_cache[key]
        return weight, bias, [c.weight for c in chains], [c.bias for c in chains]

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor | None:
        """The block's branches as one ops.branch_conv call, where it is expressible and chosen."""
        if self._bc_args is None or not self.use_branch_conv:
            return None
        from inception_fast.ops import branch_conv

        weight, bias, conv_weight, conv_bias = self._bc_tensors()
        return branch_conv(x, weight, bias, *self._bc_args, conv_weight, conv_bias, *self._bc_geometry)

    def _concatenated(self, x: torch.Tensor) -> torch.Tensor:
        y = self._branch_conv(x)
        return _cat(self.branch_outputs(x)) if y is None else y

    def branch_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        pieces = iter(self.merged(x).split(self.sizes, 1) if self.merged is not None else ())
        projections = iter(self.pool_projections)
        outs = []
        for start, rest in zip(self.starts, self.rests):
            y = next(pieces) if start == "merged" else next(projections)(x) if start == "pool_proj" else x
            outs.append(_run(rest, y))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._concatenated(x)


class FusedResidual(FusedBranches):
    """An Inception-ResNet block: the branches as FusedBranches, then act(x + scale * up(cat)) as one
    convolution (the scale folded into the up-projection, the add and the ReLU its post-ops)."""

    def __init__(self, block: ResidualBlock):
        super().__init__(block.branches())
        self.up = FoldedConv(*_fold(block.conv2d, scale=block.residual.scale), block.conv2d, relu=block.residual.relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self._concatenated(x), other=x)


def _compile_module(module: nn.Module) -> nn.Module | None:
    if isinstance(module, ResidualBlock):
        return FusedResidual(module)
    if isinstance(module, BranchBlock):
        return FusedBranches(module.branches())
    if isinstance(module, ConvBNReLU):
        return FoldedConv.from_step(module)
    if isinstance(module, nn.MaxPool2d):
        return _fast_max_pool(module)
    return _compile_head(module)


def _rewrite(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        new = _compile_module(child)
        if new is None:
            _rewrite(child)
        else:
            setattr(module, name, new)


def _rewrite_bn_inception(model: nn.Module) -> None:
    from inception_fast.models.bn_inception import BLOCKS, OPTIMIZED_SUFFIX

    flat = set()
    for name in ("conv1_7x7_s2", "conv2_3x3_reduce", "conv2_3x3"):
        model.add_module(name + OPTIMIZED_SUFFIX, FoldedConv.from_step(model.conv_bn_relu(name)))
        flat.add(name)
    for b in BLOCKS:
        model.add_module(b.name + OPTIMIZED_SUFFIX, FusedBranches(model.branches(b)))
        flat.update(n[: -len("_bn")] for n in model._modules if n.startswith(b.name + "_") and n.endswith("_bn"))
    for name in flat:  # the flat modules the compiled ones replace
        for suffix in ("", "_bn"):
            delattr(model, name + suffix)
        delattr(model, model._relu_of[name])
    for name, child in list(model.named_children()):
        if isinstance(child, nn.MaxPool2d):
            setattr(model, name, _fast_max_pool(child))
        elif _compile_head(child) is not None:
            setattr(model, name, _compile_head(child))


class _CudaGraphs:
    """fn(x) replayed from a CUDA graph captured once per input shape, dtype, layout and device: the
    launch overhead of a forward of a few hundred kernels goes (what batch-1 inference on a GPU is
    made of). Each capture warms fn up on a side stream first (Triton compilation, cuDNN's algorithm
    choice), then records it with its own input buffer; a call copies x into that buffer, replays,
    and returns a copy of the output (the graph's own output is overwritten by the next replay)."""

    def __init__(self, fn, max_graphs: int = 8):
        self.fn = fn
        self.max_graphs = max_graphs
        self.graphs: dict = {}

    def _capture(self, x: torch.Tensor):
        static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_in.copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor):
        key = signature(x)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:  # a model fed many shapes keeps the latest few
                self.graphs.clear()
            entry = self.graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return _clone_out(static_out)


def _clone_out(y):
    if isinstance(y, torch.Tensor):
        return y.clone()
    if isinstance(y, tuple):
        items = [_clone_out(v) for v in y]
        return type(y)(*items) if hasattr(y, "_fields") else type(y)(items)
    return y


def _settings_key():
    """The package settings that pick kernels at run time: a recorded program is per their values."""
    return _backend._setting.get(), layers._fused.get(), layers._merge_1x1.get()


class OptimizedModel(nn.Module):
    """The compiled model, for inference: takes what the model took (float32, NCHW or channels_last)
    and returns float32; runs in `dtype` and channels_last inside. Attributes not found here are the
    model's (pretrained_cfg, num_classes, ...)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool, cuda_graph: bool = False,
                 replay: bool = True):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph
        self.replay = replay
        # forward's CUDA graphs and CPU programs (not state: dropped on copy, made again on use)
        self._graphs = _CudaGraphs(self._run) if cuda_graph else None
        self._programs = Programs(model, self._run) if replay else None
        # (input shape, dtype, settings) -> the native program that runs the whole CPU forward
        # (Replay.run_model); filled when a forward finds its recording
        self._whole: dict = {}

    def __getstate__(self):
        state = super().__getstate__()
        state["_graphs"] = None  # CUDA graphs do not copy or pickle: captured again on use
        state["_programs"] = None  # nor do recorded programs (they hold the modules' tensors)
        state["_whole"] = {}
        state.pop("_fused_branches", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.cuda_graph:
            self._graphs = _CudaGraphs(self._run)
        self._programs = Programs(self.model, self._run) if state.get("replay", True) else None
        self._whole = {}

    def _run(self, x: torch.Tensor):
        return self.model(x)

    def _switches(self) -> tuple:
        """The per-block kernel switches (FusedBranches.use_branch_conv): a recorded program is per them."""
        fused = self.__dict__.get("_fused_branches")
        if fused is None:
            fused = self.__dict__["_fused_branches"] = [m for m in self.model.modules() if isinstance(m, FusedBranches)]
        return tuple(m.use_branch_conv for m in fused)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("an optimize()d model is for inference only (BatchNorm is folded into its "
                               "convolutions): train the original model")
        return super().train(False)

    def _input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x in the model's dtype and layout, which images of x hold a NaN)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the model takes a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"the model takes a floating-point batch, got {x.dtype}")
        if x.dim() == 4 and x.device.type == "cpu":  # (optimize() admits only the op's dtypes)
            return ops.prepare_input(x, self.dtype, self.channels_last)  # one pass for both
        if x.dim() == 4 and self.channels_last:
            return x.to(dtype=self.dtype, memory_format=torch.channels_last), self._nan_rows(x)
        return x.to(self.dtype), self._nan_rows(x)

    @staticmethod
    def _output(y, nan_rows: torch.Tensor | None):
        """float32, and NaN in the rows whose input held a NaN: oneDNN's ReLU post-op maps NaN to 0
        (max(x, 0)), where eager's ReLU keeps it and the NaN reaches every output of its image."""
        if isinstance(y, torch.Tensor):
            y = y.float()
            if nan_rows is not None and y.dim() >= 1 and y.shape[0] == nan_rows.shape[0]:
                y = torch.where(nan_rows.view(-1, *[1] * (y.dim() - 1)), float("nan"), y)
            return y
        if isinstance(y, tuple):
            items = [OptimizedModel._output(v, nan_rows) for v in y]
            return type(y)(*items) if hasattr(y, "_fields") else type(y)(items)
        return y

    @staticmethod
    def _nan_rows(x: torch.Tensor) -> torch.Tensor | None:
        return x.isnan().flatten(1).any(1) if x.dim() >= 2 else None

    def _scope(self, x):
        """no_grad, and on the CPU the memory pool (inception_fast.memory): a forward's activations
        reuse the blocks of the previous one instead of page-faulting fresh memory in."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if isinstance(x, torch.Tensor) and x.device.type == "cpu":
            stack.enter_context(memory.pooled())
        return stack

    def forward(self, x: torch.Tensor):
        if torch.onnx.is_in_onnx_export():
            raise RuntimeError("an optimize()d model does not export to ONNX (its convolutions are kept oneDNN "
                               "primitives and ops of inception_fast): export the model itself, "
                               "torch.onnx.export(model, ...); ONNX Runtime folds its BatchNorms as optimize() does")
        if self._whole and type(x) is torch.Tensor and x.is_cpu:
            # A CPU input of a shape and dtype whose forward was recorded: the input conversion, the
            # recorded ops and the float32 output in one C++ call (Replay.run_model), unless hooks
            # were registered since (the model then runs as it is, hooks called).
            extra = (_settings_key(), self._switches())
            native = self._whole.get((x.shape, x.dtype, extra))
            if native is not None and not self._programs.hooked():
                try:
                    return native.run_model(x, self.dtype, self.channels_last)
                except RuntimeError:  # e.g. the memory pool cannot be installed: the usual path says why
                    self._whole.clear()
        with self._scope(x):
            xin, nan_rows = self._input(x)
            # (A graph is captured after two eager warm-up runs, which check the input as forward does;
            # a replay reuses a capture made for the same shape.)
            if self._graphs is not None and xin.is_cuda:
                y = self._graphs(xin)
            elif self._programs is not None and xin.device.type == "cpu":
                extra = (_settings_key(), self._switches())
                y = self._programs(xin, extra)
                self._keep_whole(x, xin, extra)
            else:
                y = self.model(xin)
            return self._output(y, nan_rows)

    def _keep_whole(self, x: torch.Tensor, xin: torch.Tensor, extra) -> None:
        """Keep the native program of x's recorded forward for forward's one-call path, where it can
        run it: one output, the conversion on the prepare_input op, the memory pool there."""
        prog = self._programs.get(xin, extra)
        if prog is None or prog.native is None or prog.out_kind is not None or not memory.available() \
                or _backend.resolve(x, "prepare_input") == "reference":
            return
        if len(self._whole) >= 8:  # a model fed many shapes keeps the latest few
            self._whole.clear()
        self._whole[(x.shape, x.dtype, extra)] = prog.native

    def op_times(self, x: torch.Tensor, runs: int = 20) -> list[tuple[str, int, float]]:
        """Where a CPU forward on x spends its time: (op, calls a forward, median seconds a forward),
        the slowest first, from `runs` timed replays of the recorded forward (each op's dispatch and
        kernels; the input conversion before them and the float32 output after them excluded).
        Raises where forward does not replay (a GPU model, replay=False, forward hooks)."""
        names, per_step, _ = self._time_steps(x, runs, "op_times", describe=False)
        calls, seconds = collections.Counter(names), collections.defaultdict(float)
        for name, t in zip(names, per_step):
            seconds[name] += t
        return sorted(((name, calls[name], seconds[name]) for name in calls), key=lambda r: -r[2])

    def step_times(self, x: torch.Tensor, runs: int = 20) -> list[tuple[str, tuple, tuple, float]]:
        """op_times() step by step, in the order the forward runs them: (op, its arguments, its
        outputs, median seconds), a tensor given as its torch.Size (`Program.describe`), e.g. an
        `onednn_conv` step's input, packed weight, weight size, bias, stride, padding, post-op."""
        names, per_step, steps = self._time_steps(x, runs, "step_times", describe=True)
        return [(name, args, outs, t) for name, (args, outs), t in zip(names, steps, per_step)]

    def _time_steps(self, x: torch.Tensor, runs: int, caller: str, describe: bool):
        """(the recorded forward's op names, median seconds of each step over `runs` timed replays,
        each step's (arguments, outputs) sizes where `describe`, else None)."""
        if self._programs is None or not isinstance(x, torch.Tensor) or x.device.type != "cpu":
            raise ValueError(f"{caller}() times the replay of a recorded CPU forward: it needs a CPU input and a "
                             "model optimize()d with replay=True")
        if runs < 1:
            raise ValueError(f"{caller}(): runs must be at least 1, got {runs}")
        extra = (_settings_key(), self._switches())
        with self._scope(x):
            xin, _ = self._input(x)
            for _ in range(2):  # the first call runs the modules (building what they build), the second records
                if self._programs.get(xin, extra) is not None:
                    break
                self._programs(xin, extra)
            prog = self._programs.get(xin, extra)
            if prog is None:
                raise RuntimeError(f"{caller}(): this forward is not replayed (forward hooks, or a recording "
                                   "refused: see the warning)")
            steps = prog.describe(xin) if describe else None
            per_run = [prog.run_timed(xin)[1] for _ in range(runs)]
        per_step = [statistics.median(t[k] for t in per_run) for k in range(len(prog.names))]
        return prog.names, per_step, steps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with self._scope(x):
            xin, nan_rows = self._input(x)
            return self._output(self.model.forward_features(xin), nan_rows)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        with self._scope(x):
            return self._output(self.model.forward_head(x.to(self.dtype), pre_logits=pre_logits), self._nan_rows(x))


def optimize(model: nn.Module, *, dtype: torch.dtype | None = None, channels_last: bool = True,
             cuda_graph: bool = False, branch_conv: bool = False, replay: bool = True,
             cudnn_fused: bool = False) -> OptimizedModel:
    """`model` (any of the six, on its device) compiled for inference; the model itself is unchanged.

    dtype: the precision inside (default float32; torch.bfloat16 on CPUs with AVX-512 BF16 or AMX
    and on GPUs, torch.float16 on GPUs). channels_last: activations in NHWC (the layout oneDNN's and
    cuDNN's fastest convolutions use). cuda_graph: on a GPU, forward replays a CUDA graph captured
    once per input shape, dtype and layout (forward_features / forward_head run eagerly). branch_conv: run every block of ops.branch_conv's forms as that
    op (off by default: see FusedBranches.use_branch_conv). replay: on the CPU, forward replays the
    ops it recorded on its second call with an input of that shape, strides and dtype, without the
    Python of the module tree (inception_fast._replay; not while forward hooks are registered).
    cudnn_fused: on a GPU, each convolution's ReLU (and residual add) runs inside cuDNN's
    convolution (FoldedConv.cudnn_fused; not yet timed on a GPU, hence off by default)."""
    from inception_fast.models.bn_inception import BNInception

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
        if isinstance(net, BNInception):
            _rewrite_bn_inception(net)
        else:
            _rewrite(net)
        net = net.to(dtype)
        for m in net.modules():
            if isinstance(m, FusedBranches):
                m.use_branch_conv = bool(branch_conv)
            if isinstance(m, FoldedConv):
                m.cudnn_fused = bool(cudnn_fused)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
    return OptimizedModel(net, dtype, channels_last, cuda_graph, replay).eval()
