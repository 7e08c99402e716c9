"""Layers the models are built from: the seam between the models and the kernels.

Each layer has two paths over the same parameters: the reference path (plain nn.Conv2d,
nn.BatchNorm2d, ReLU: the eager definition) and the fused path (the ops of inception_fast.ops).
The path is chosen per module (`module.fused = True/False`) or, where that is None, globally
(`use_fused(...)` / `set_fused(...)`; the default is the fused path).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast._settings import Setting
from inception_fast.ops import bn_relu, conv1x1, conv_im2col, max_pool, scaled_residual_add
from inception_fast.ops.conv_im2col import output_size as im2col_output_size
from inception_fast.ops.conv_im2col import worth_it as im2col_worth_it

_fused = Setting(True, bool)
_merge_1x1 = Setting(True, bool)


def set_fused(enabled: bool) -> None:
    """Choose the path of every layer whose own `fused` is None."""
    _fused.set(enabled)


def fused_enabled() -> bool:
    return _fused.get()


def use_fused(enabled: bool = True):
    """Context manager: run layers whose own `fused` is None on the fused (True) or reference (False) path."""
    return _fused.use(enabled)


def merged_1x1_enabled() -> bool:
    return _merge_1x1.get()


def use_merged_1x1(enabled: bool = True):
    """Context manager: on the fused path, run the 1x1 convolutions of a block that read the block
    input as one merged GEMM + one bn_relu (True, the default) or one by one (False; for A/B checks)."""
    return _merge_1x1.use(enabled)


_fx_symbolic_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None) or (
    lambda: torch.fx._symbolic_trace.is_fx_tracing() and not torch.compiler.is_compiling())


class _PathMixin:
    fused: bool | None = None
    __jit_ignored_attributes__ = ["fused"]  # Python-only: TorchScript compiles the reference path

    def _use_fused(self) -> bool:
        # The reference path's standard ops where the fused path's choices (made from the input's
        # device, layout and sizes) cannot be followed: under torch.fx.symbolic_trace (timm's tools
        # keep our layers whole: models/_timm.py) and torch.onnx.export, both exporters (ONNX has no
        # kernels of ours; ONNX Runtime folds the BatchNorms itself; is_in_onnx_export costs ~1 us).
        if _fx_symbolic_tracing() or ((torch.compiler.is_exporting() or torch.jit.is_tracing())
                                      and torch.onnx.is_in_onnx_export()):
            return False
        return fused_enabled() if self.fused is None else self.fused


class ConvBNReLU(_PathMixin, nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU: a drop-in for torchvision's / timm's BasicConv2d
    and facenet-pytorch's BasicConv2d (same attributes `conv`, `bn`, so the same state_dict keys:
    conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked).

    On the fused path BatchNorm and ReLU are one bn_relu op, with nn.BatchNorm2d's semantics kept:
    momentum=None (cumulative average), track_running_stats=False, num_batches_tracked, and a
    SyncBatchNorm `bn` (after nn.SyncBatchNorm.convert_sync_batchnorm) synchronising statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0,
                 eps: float = 1e-3, momentum: float | None = 0.1, fused: bool | None = None, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False,
                              **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles the reference path only
            return F.relu(self.bn(self.conv(x)), inplace=True)
        else:
            if not self._use_fused():
                # In place, as the peers' BasicConv2d: the BatchNorm output is this layer's own tensor.
                return F.relu(self.bn(self.conv(x)), inplace=True)
            return bn_relu_module(self.bn, conv2d_fast(self.conv, x), self.training)


def _gemm_weight(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """The [O, C, 1, 1] weight of conv(x) as a GEMM, or None when it is not one: a 1x1 conv (stride 1,
    no padding), or any conv on a 1x1 map whose output is 1x1, which touches only one tap of its
    kernel (a slice, whose backward zero-fills the other taps)."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and (ph, pw) == (0, 0):
        return conv.weight
    if x.shape[-2:] != (1, 1) or ph >= kh or pw >= kw or (1 + 2 * ph - kh) // sh != 0 \
            or (1 + 2 * pw - kw) // sw != 0:
        return None
    return conv.weight[:, :, ph:ph + 1, pw:pw + 1]


def _im2col_args(conv: nn.Conv2d, x: torch.Tensor):
    """(stride, padding) when conv(x) should run as conv_im2col: a k x k conv on the CPU whose output
    map is small enough for im2col + GEMM to beat the convolution primitive (conv_im2col.worth_it)."""
    if x.device.type != "cpu" or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str):
        return None
    oh, ow = im2col_output_size(x.shape[2:], conv.kernel_size, conv.stride, conv.padding)
    if oh < 1 or ow < 1 or not im2col_worth_it(oh, ow, conv.stride):
        return None
    return conv.stride, conv.padding


def conv2d_fast(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) on the fused path, in channels_last (an NCHW input is converted once, at the first
    layer): where the conv is a GEMM (a 1x1 conv, or any conv on a 1x1 map) the conv1x1 op, on the
    CPU a k x k conv with a small output map conv_im2col (see conv_im2col.worth_it), else conv2d.
    Same parameters, same gradients."""
    if x.dim() != 4:
        return conv(x)
    if not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0):
        # On the CPU conv_im2col also takes the k x k convs on a 1x1 map (it leaves out the taps that
        # read only padding, and its weight gradient keeps the weight's layout).
        args = _im2col_args(conv, x)
        if args is not None:
            return conv_im2col(x, conv.weight, conv.bias, *args)
    w = _gemm_weight(conv, x)
    return conv(x) if w is None else conv1x1(x, w, conv.bias)


def set_conv_weight_layout(module: nn.Module, channels_last: bool) -> nn.Module:
    """Put the weight of every k x k nn.Conv2d of `module` in channels_last (True) or NCHW (False), in
    place (same parameters, values and state_dict). The fused path wants channels_last (else ATen
    reorders an NCHW weight on every pass); do it before DistributedDataParallel, whose gradient
    buckets follow the parameters' layout. 1x1 weights are left alone: the GEMM takes either."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d) and m.weight.dim() == 4 and m.weight.shape[-2:] != (1, 1) \
                    and not m.weight.is_contiguous(memory_format=fmt):
                m.weight.data = m.weight.data.contiguous(memory_format=fmt)
    return module


def _bn_bookkeeping(bns, training: bool) -> tuple[float, bool, bool]:
    """nn.BatchNorm2d.forward's bookkeeping for BatchNorms run as one bn_relu call (same momentum, None:
    cumulative; running statistics; mode): num_batches_tracked counted for each, and (the update
    factor, whether to use the batch's statistics, whether to track running ones)."""
    first = bns[0]
    factor = 0.0 if first.momentum is None else first.momentum
    if training and first.track_running_stats and first.num_batches_tracked is not None:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(first.num_batches_tracked) if first.momentum is None else first.momentum
    use_batch_stats = training or (first.running_mean is None and first.running_var is None)
    track = not training or first.track_running_stats
    return factor, use_batch_stats, track


def bn_relu_module(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, training: bool) -> torch.Tensor:
    """relu(bn(x)) through the fused op, with exactly nn.BatchNorm2d's bookkeeping."""
    factor, use_batch_stats, track = _bn_bookkeeping([bn], training)
    process_group = None
    if (isinstance(bn, nn.SyncBatchNorm) or getattr(bn, "_inception_fast_sync", False)) and use_batch_stats:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            group = bn.process_group if bn.process_group is not None else dist.group.WORLD
            if dist.get_world_size(group) > 1:
                process_group = group
    return bn_relu(x, bn.weight, bn.bias, bn.running_mean if track else None, bn.running_var if track else None,
                   use_batch_stats, factor, bn.eps, process_group=process_group)


def sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Make every BatchNorm2d of `module` combine its batch statistics across `process_group` (default:
    the world) on the fused path: nn.SyncBatchNorm's semantics on any backend, gloo included (DDP takes
    nn.SyncBatchNorm only on GPUs), same names and state_dict. The reference path does not synchronise
    (use nn.SyncBatchNorm.convert_sync_batchnorm there). Returns module."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm):
            m._inception_fast_sync = True
            m.process_group = process_group
    return module


def _max_pool_fast(x: torch.Tensor, dilation=1) -> bool:
    """Whether max_pool2d(x) should run as the max_pool op: a CPU tensor, no dilation, and no gradient
    to compute (its forward beats ATen's, which writes an int64 index tensor; its backward recomputes
    the argmax, so a training step keeps ATen's)."""
    return x.device.type == "cpu" and x.dim() == 4 and dilation in (1, (1, 1)) and \
        not (torch.is_grad_enabled() and x.requires_grad)


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               fused: bool = True, dilation=1, return_indices: bool = False):
    """F.max_pool2d(x, ...); on the fused path (`fused`, a layer's _use_fused()) the max_pool op where it
    is faster (CPU inference, see _max_pool_fast)."""
    if torch.jit.is_scripting():  # TorchScript compiles the reference path only
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        stride = kernel_size if stride is None else stride
        if fused and not return_indices and _max_pool_fast(x, dilation):
            return max_pool(x, kernel_size, stride, padding, ceil_mode)
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                            return_indices=return_indices)


class MaxPool2d(_PathMixin, nn.MaxPool2d):
    """nn.MaxPool2d (same arguments, same results) whose fused path runs CPU inference on the
    max_pool op (see _max_pool_fast); training and other devices run nn.MaxPool2d's forward."""

    def __init__(self, *args, fused: bool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles the reference path only
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                ceil_mode=self.ceil_mode, return_indices=self.return_indices)
        else:
            return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self._use_fused(),
                              self.dilation, self.return_indices)

    @classmethod
    def fused_copy(cls, pool: nn.MaxPool2d) -> "MaxPool2d":
        """A copy of pool on the fused path (for inference: the max_pool op on the CPU)."""
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode,
                   fused=True)


POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")  # timm's global pools; '' keeps the map unpooled


class GlobalPool2d(nn.Module):
    """Global pooling to (N, C) (or (N, 2C) for 'catavgmax'); pool_type '' passes the map through."""

    def __init__(self, pool_type: str = "avg", flatten: bool = True):
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"global_pool must be one of {POOL_TYPES}, got {pool_type!r}")
        self.pool_type = pool_type
        self.flatten = flatten

    def feat_mult(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def is_identity(self) -> bool:
        return self.pool_type == ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            x = F.adaptive_avg_pool2d(x, 1)
        elif self.pool_type == "max":
            x = F.adaptive_max_pool2d(x, 1)
        elif self.pool_type == "avgmax":
            x = 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))
        else:
            x = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1)
        return torch.flatten(x, 1) if self.flatten else x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}, flatten={self.flatten}"


class ScaledResidual(_PathMixin, nn.Module):
    """act(shortcut + scale * branch): the Inception-ResNet residual (Block35/17/8's `scale` and
    `no_relu` as constructor arguments). No parameters."""

    def __init__(self, scale: float = 1.0, relu: bool = True, fused: bool | None = None):
        super().__init__()
        self.scale = float(scale)
        self.relu = bool(relu)
        self.fused = fused

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles the reference path only
            return self._reference(shortcut, branch)
        else:
            if not self._use_fused():
                return self._reference(shortcut, branch)
            return scaled_residual_add(shortcut, branch, self.scale, self.relu)

    def _reference(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        # timm's / facenet's order of operations (out * scale + x), ReLU in place on the sum.
        y = branch * self.scale + shortcut
        return F.relu(y, inplace=True) if self.relu else y

    def extra_repr(self) -> str:
        return f"scale={self.scale}, relu={self.relu}"


class Fork(NamedTuple):
    """A step of a branch that splits it: every branch of `branches` reads the same tensor, and
    their outputs are concatenated along the channels (Inception-v3's InceptionE, v4's InceptionC)."""

    branches: tuple


class BranchBlock(nn.Module):
    """A block whose forward is cat([branch(x) for branch in branches()], dim=1) (Inception-ResNet
    blocks: then the up-projection and the residual). `branches()` describes that forward as data,
    which optimize() compiles into merged 1x1 GEMMs and folded convolutions: a branch is a list of
    steps, each a ConvBNReLU, a pooling module or a Fork. The default reads the attributes branch0,
    branch1, ... (or branch1, branch2, ...) in order, unrolling nn.Sequential; blocks whose forward is
    written differently override it, and tests check every description against its block's forward."""

    def branches(self) -> list[list]:
        names = sorted((n for n in self._modules if re.fullmatch(r"branch\d+", n)), key=lambda n: int(n[6:]))
        return [list(m) if isinstance(m, nn.Sequential) else [m] for m in (self._modules[n] for n in names)]

    def _merged_leads(self):
        """(branches, indices of the branches whose first step joins the merged 1x1), or None when
        fewer than two can (see mergeable_1x1)."""
        branches = self.branches()
        lead = [i for i, b in enumerate(branches) if b and isinstance(b[0], ConvBNReLU) and is_plain_1x1(b[0].conv)]
        if not mergeable_1x1([branches[i][0] for i in lead]):
            return None
        return branches, lead

    def branch_outputs_merged(self, x: torch.Tensor, plan=None) -> list[torch.Tensor] | None:
        """The branches' outputs with their leading 1x1 convolutions merged (conv_bn_relu_merged), or
        None when this block has nothing to merge. Same values, statistics and gradients as the
        block's forward."""
        plan = plan or self._merged_leads()
        if plan is None:
            return None
        branches, lead = plan
        heads = dict(zip(lead, conv_bn_relu_merged([branches[i][0] for i in lead], x)))
        return [run_branch(b[1:], heads[i]) if i in heads else run_branch(b, x) for i, b in enumerate(branches)]

    def forward_merged(self, x: torch.Tensor) -> torch.Tensor | None:
        """forward(x) with the leading 1x1 convolutions merged, or None when there are none to merge."""
        outs = self.branch_outputs_merged(x)
        return None if outs is None else torch.cat(outs, 1)


def is_plain_1x1(conv: nn.Conv2d) -> bool:
    """A 1x1 convolution, stride 1, no padding, one group: a GEMM over the channels."""
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1 \
        and conv.dilation == (1, 1) and conv.padding_mode == "zeros"


def _bn_signature(bn: nn.Module):
    """What two BatchNorms must share for one bn_relu call over their concatenated channels."""
    if type(bn) is not nn.BatchNorm2d or getattr(bn, "_inception_fast_sync", False):
        return None  # SyncBatchNorm / synchronised statistics: left to the per-layer path
    counted = bn.momentum is None and bn.track_running_stats and bn.num_batches_tracked is not None
    return (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.running_mean is None, bn.training,
            int(bn.num_batches_tracked) if counted else None)


def mergeable_1x1(steps) -> bool:
    """Whether these ConvBNReLU layers (all reading the same input) can run as one merged 1x1 GEMM +
    one bn_relu on the fused path: plain 1x1 convs of one dtype and device, BatchNorms that agree on
    eps, momentum, affine, running statistics and mode."""
    if len(steps) < 2 or not _merge_1x1.get():
        return False
    first = steps[0]
    sig = _bn_signature(first.bn)
    if sig is None:
        return False
    for s in steps:
        if not isinstance(s, ConvBNReLU) or not s._use_fused() or not is_plain_1x1(s.conv) or s.conv.bias is not None \
                or s.conv.weight.dtype != first.conv.weight.dtype or s.conv.weight.device != first.conv.weight.device \
                or _bn_signature(s.bn) != sig:
            return False
    return True


def conv_bn_relu_merged(steps, x: torch.Tensor) -> list[torch.Tensor]:
    """[step(x) for step in steps] for 1x1 ConvBNReLU layers (mergeable_1x1(steps)) as ONE conv1x1
    over their concatenated weights and ONE bn_relu over the concatenated channels: the input is read
    once, one GEMM instead of several narrow ones (and one in the backward for grad_x, which the
    separate layers would each compute and add up). Same statistics, same running-statistics update
    and num_batches_tracked, same gradients; each output is the layer's channel slice (a view)."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    bns = [s.bn for s in steps]
    sizes = [bn.num_features for bn in bns]
    y = conv1x1(x, torch.cat([s.conv.weight for s in steps]), None)
    first = bns[0]
    factor, use_batch_stats, track = _bn_bookkeeping(bns, first.training)
    track = track and first.running_mean is not None
    weight = torch.cat([bn.weight for bn in bns]) if first.affine else None
    bias = torch.cat([bn.bias for bn in bns]) if first.affine else None
    running_mean = torch.cat([bn.running_mean for bn in bns]) if track else None
    running_var = torch.cat([bn.running_var for bn in bns]) if track else None
    y = bn_relu(y, weight, bias, running_mean, running_var, use_batch_stats, factor, first.eps)
    if track and use_batch_stats:  # the running statistics were updated in the concatenated copies
        with torch.no_grad():
            for bn, m, v in zip(bns, running_mean.split(sizes), running_var.split(sizes)):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
    return list(y.split(sizes, 1))


def has_hooks(module: nn.Module, recurse: bool = True) -> bool:
    """Whether module (or, with recurse, one inside it) has hooks, or any global module hook is set:
    a forward that does not call the modules one by one would skip them."""
    from torch.nn.modules import module as _m

    if _m._global_forward_hooks or _m._global_forward_pre_hooks or _m._global_backward_hooks \
            or _m._global_backward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in (module.modules() if recurse else (module,)))


def apply_layer(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x), with every Inception block in it (the module itself, or the blocks of an
    nn.Sequential) running its leading 1x1 convolutions merged on the fused path
    (BranchBlock.forward_merged). A module with hooks runs as module(x), so the hooks see what they
    hooked."""
    if isinstance(module, BranchBlock) and not has_hooks(module):
        y = module.forward_merged(x)
        if y is not None:
            return y
    elif type(module) is nn.Sequential and not has_hooks(module, recurse=False):
        for m in module:
            x = apply_layer(m, x)
        return x
    return module(x)


def run_branch(steps, x: torch.Tensor) -> torch.Tensor:
    """A branch description applied to x (the reference semantics of BranchBlock.branches())."""
    for step in steps:
        x = torch.cat([run_branch(b, x) for b in step.branches], 1) if isinstance(step, Fork) else step(x)
    return x


def run_branches(branches, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([run_branch(b, x) for b in branches], 1)


class ResidualBlock(_PathMixin, BranchBlock):
    """Base of the Inception-ResNet blocks (Block35/17/8 of timm's and facenet-pytorch's models):
    the branches, concatenated, go through the up-projection `self.conv2d` (a 1x1 conv with a bias),
    and the block ends in `self.residual`, a ScaledResidual computing act(x + scale * up-projection); `scale`
    reads and sets its factor and `no_relu` tells whether the ReLU is left out, as the peers' blocks
    expose them."""

    def forward_merged(self, x: torch.Tensor) -> torch.Tensor | None:
        outs = self.branch_outputs_merged(x)
        return None if outs is None else self.residual(x, self.project(torch.cat(outs, 1)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The up-projection self.conv2d(x), on this block's path (a GEMM on the fused path)."""
        if torch.jit.is_scripting():
            return self.conv2d(x)
        else:
            return conv2d_fast(self.conv2d, x) if self._use_fused() else self.conv2d(x)

    @property
    def scale(self) -> float:
        return self.residual.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.residual.scale = float(value)

    @property
    def no_relu(self) -> bool:
        return not self.residual.relu


# -- the units optimize() compiles: a model lists them (`inference_units()`) and replaces them
# (`replace_unit(name, module)`) with the two functions below, or its own (BN-Inception's flat blocks)
UNIT_TYPES = (ConvBNReLU, BranchBlock, nn.MaxPool2d, GlobalPool2d, nn.Linear)


def inference_units(module: nn.Module, prefix: str = ""):
    """(dotted name, module) of every submodule of a UNIT_TYPES type that is not inside another one,
    in module order."""
    for name, child in module.named_children():
        if isinstance(child, UNIT_TYPES):
            yield prefix + name, child
        else:
            yield from inference_units(child, prefix + name + ".")


def replace_unit(module: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule of dotted `name` was."""
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, new)
