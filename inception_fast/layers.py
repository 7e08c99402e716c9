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
from inception_fast.ops import bn_relu, scaled_residual_add

_fused = Setting(True, bool)


def set_fused(enabled: bool) -> None:
    """Choose the path of every layer whose own `fused` is None."""
    _fused.set(enabled)


def fused_enabled() -> bool:
    return _fused.get()


def use_fused(enabled: bool = True):
    """Context manager: run layers whose own `fused` is None on the fused (True) or reference (False) path."""
    return _fused.use(enabled)


class _PathMixin:
    fused: bool | None = None

    def _use_fused(self) -> bool:
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
        if not self._use_fused():
            # In place, as the peers' BasicConv2d: the BatchNorm output is this layer's own tensor.
            return F.relu(self.bn(self.conv(x)), inplace=True)
        return bn_relu_module(self.bn, conv2d_fast(self.conv, x), self.training)


def _single_tap(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int] | None:
    """The one kernel tap a conv uses when x is a 1x1 map and the output is 1x1 too, else None."""
    if x.dim() != 4 or x.shape[-2] != 1 or x.shape[-1] != 1 or conv.groups != 1 or conv.dilation != (1, 1) \
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    if ph >= kh or pw >= kw or (1 + 2 * ph - kh) // sh != 0 or (1 + 2 * pw - kw) // sw != 0:
        return None
    return ph, pw


def conv2d_fast(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), with the case of a 1x1 map (the last grid of an Inception at the seeds' 75x75
    input) as the matrix product it is: on a 1x1 map a stride-1 "same" conv touches only its centre
    tap, and oneDNN's convolution backward on such maps runs at a few % of the machine's peak
    (3x slower than the product). Same parameters, same gradients."""
    tap = _single_tap(conv, x)
    if tap is None:
        return conv(x)
    k = conv.weight
    # A 1x1 kernel is a view; another kernel's centre tap a slice (whose backward zero-fills the rest).
    w = k.view(k.shape[0], k.shape[1]) if k.shape[-2:] == (1, 1) else k[:, :, tap[0], tap[1]]
    return F.linear(x.flatten(1), w, conv.bias).view(x.shape[0], w.shape[0], 1, 1)


def bn_relu_module(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, training: bool) -> torch.Tensor:
    """relu(bn(x)) through the fused op, with exactly nn.BatchNorm2d's bookkeeping."""
    # As nn.modules.batchnorm._BatchNorm.forward: momentum None means a cumulative moving average.
    factor = 0.0 if bn.momentum is None else bn.momentum
    if training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = training or (bn.running_mean is None and bn.running_var is None)
    track = not training or bn.track_running_stats
    process_group = None
    if isinstance(bn, nn.SyncBatchNorm) and use_batch_stats:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            group = bn.process_group if bn.process_group is not None else dist.group.WORLD
            if dist.get_world_size(group) > 1:
                process_group = group
    return bn_relu(x, bn.weight, bn.bias, bn.running_mean if track else None, bn.running_var if track else None,
                   use_batch_stats, factor, bn.eps, process_group=process_group)


class ScaledResidual(_PathMixin, nn.Module):
    """act(shortcut + scale * branch): the Inception-ResNet residual (Block35/17/8's `scale` and
    `no_relu` as constructor arguments). No parameters."""

    def __init__(self, scale: float = 1.0, relu: bool = True, fused: bool | None = None):
        super().__init__()
        self.scale = float(scale)
        self.relu = bool(relu)
        self.fused = fused

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if not self._use_fused():
            # timm's / facenet's order of operations (out * scale + x), ReLU in place on the sum.
            y = branch * self.scale + shortcut
            return F.relu(y, inplace=True) if self.relu else y
        return scaled_residual_add(shortcut, branch, self.scale, self.relu)

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


def run_branch(steps, x: torch.Tensor) -> torch.Tensor:
    """A branch description applied to x (the reference semantics of BranchBlock.branches())."""
    for step in steps:
        x = torch.cat([run_branch(b, x) for b in step.branches], 1) if isinstance(step, Fork) else step(x)
    return x


def run_branches(branches, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([run_branch(b, x) for b in branches], 1)


class ResidualBlock(BranchBlock):
    """Base of the Inception-ResNet blocks (Block35/17/8 of timm's and facenet-pytorch's models):
    the branches, concatenated, go through the up-projection `self.conv2d` (a 1x1 conv with a bias),
    and the block ends in `self.residual`, a ScaledResidual computing act(x + scale * up-projection); `scale`
    reads and sets its factor and `no_relu` tells whether the ReLU is left out, as the peers' blocks
    expose them."""

    conv2d: nn.Conv2d
    residual: ScaledResidual

    @property
    def scale(self) -> float:
        return self.residual.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.residual.scale = float(value)

    @property
    def no_relu(self) -> bool:
        return not self.residual.relu
