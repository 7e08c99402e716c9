"""FoldedConv: a convolution with its BatchNorm folded in, and the ordered list of algorithms that
run it. The first algorithm whose rule takes the call runs it; conv2d is the last and takes all."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import _ext, ops
from inception_fast._cache import LatestCache
from inception_fast.optimize.fold import fold_step
from inception_fast.ops.winograd_conv1d import worth_it_axis as winograd1d_axis
from inception_fast.ops.winograd_conv3x3 import worth_it as winograd3x3_worth_it


@functools.lru_cache(maxsize=None)
def onednn_pointwise() -> bool:
    """Whether ATen's oneDNN convolution with fused post-ops (what inductor's freezing uses) is here."""
    ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    if not ok:
        warnings.warn("inception_fast.optimize: this torch has no oneDNN convolution with post-ops "
                      "(torch.ops.mkldnn._convolution_pointwise); CPU convolutions run as conv2d + separate "
                      "bias/ReLU passes", stacklevel=3)
    return ok


@functools.lru_cache(maxsize=None)
def onednn_kept() -> bool:
    """Whether inception_fast._onednn (convolutions on oneDNN primitives created once and kept) is
    here; without it, ATen's oneDNN convolution runs, which makes the primitive's descriptor again
    on every call."""
    if not _ext.onednn_loaded() and _ext.loaded():  # (without _C, the import reported both)
        warnings.warn("inception_fast.optimize: inception_fast._onednn is not available "
                      f"({_ext.ONEDNN_ERROR or 'not built'}; install onednn-cpu-gomp and onednn-devel-cpu-gomp, then "
                      "rebuild); CPU convolutions run through ATen's oneDNN convolution", stacklevel=3)
    return _ext.onednn_loaded()


class Algorithm(NamedTuple):
    """One way to run a FoldedConv: plan(conv, x, other) says whether it takes the call (None: no;
    else what run needs), run(conv, x, other, plan) computes act(conv(x) [+ other])."""

    name: str
    plan: Callable[["FoldedConv", torch.Tensor, torch.Tensor | None], Any]
    run: Callable[["FoldedConv", torch.Tensor, torch.Tensor | None, Any], torch.Tensor]


def _winograd_ok(conv: "FoldedConv", x: torch.Tensor, other) -> bool:
    """The Winograd kernels' domain: CPU float32 inference, stride 1, no dilation, no residual add."""
    return (conv.use_winograd and other is None and not torch.is_grad_enabled() and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and conv.stride == [1, 1] and conv.dilation == [1, 1] and _ext.loaded())


def _plan_winograd3x3(conv, x, other):
    return True if _winograd_ok(conv, x, other) and winograd3x3_worth_it(
        tuple(x.shape), tuple(conv.weight.shape), conv.padding) else None


def _run_winograd3x3(conv, x, other, plan):
    return ops.winograd_conv3x3(x, conv.winograd_weight(), conv.bias, conv.padding[0], conv.relu)


def _plan_winograd1d(conv, x, other):
    if not (conv.use_winograd1d and _winograd_ok(conv, x, other)):
        return None
    return winograd1d_axis(tuple(x.shape), tuple(conv.weight.shape), conv.padding)


def _run_winograd1d(conv, x, other, dim):
    return ops.winograd_conv1d(x, conv.winograd_weight(), conv.bias, dim, conv.padding[dim - 2], conv.relu)


def _plan_onednn_kept(conv, x, other):
    w = conv.weight
    return True if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and w.dtype == x.dtype
                    and not torch.is_grad_enabled() and conv.dilation == [1, 1] and conv.use_kept_primitives
                    and (other is None or other.dtype == x.dtype) and onednn_kept()) else None


def _run_onednn_kept(conv, x, other, plan):
    post_op = (1 if conv.relu else 0) | (0 if other is None else 2)
    return ops.onednn_conv(x, conv.onednn_weight(x, post_op), list(conv.weight.shape), conv.bias,
                           conv.stride, conv.padding, post_op, other)


def _plan_aten_onednn(conv, x, other):
    # (torch 2.11's oneDNN fails to make the add-fused primitive for a 1x1 output map, "could not
    # create a memory": such maps, only met at small inputs, take conv2d)
    return True if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                    and (other is None or other.shape[-2] * other.shape[-1] > 1) and onednn_pointwise()) else None


def _run_aten_onednn(conv, x, other, plan):
    w, b = conv.weight, conv.bias
    if w.dtype == x.dtype and not torch.is_grad_enabled():
        w = conv.aten_packed_weight(x)
    if other is None:
        return torch.ops.mkldnn._convolution_pointwise(x, w, b, conv.padding, conv.stride, conv.dilation, 1,
                                                       "relu" if conv.relu else "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, w, b, conv.padding, conv.stride, conv.dilation, 1, "add", 1.0, "relu" if conv.relu else None,
        [], "")


def _plan_cudnn_fused(conv, x, other):
    return True if (x.is_cuda and conv.cudnn_fused and conv.relu and not torch.is_grad_enabled()
                    and conv.weight.dtype == x.dtype and (other is None or other.dtype == x.dtype)) else None


def _run_cudnn_fused(conv, x, other, plan):
    w, b = conv.weight, conv.bias
    if other is None:
        return torch.cudnn_convolution_relu(x, w, b, conv.stride, conv.padding, conv.dilation, 1)
    return torch.cudnn_convolution_add_relu(x, w, other, 1.0, b, conv.stride, conv.padding, conv.dilation, 1)


def _run_conv2d(conv, x, other, plan):
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    if other is not None:
        y = y.add_(other)
    return F.relu_(y) if conv.relu else y


# In order: the first whose plan takes the call runs it.
ALGORITHMS: tuple[Algorithm, ...] = (
    # Winograd F(2x2, 3x3), 2.25x fewer multiply-adds (cost rule: ops/winograd_conv3x3.py, worth_it)
    Algorithm("winograd_conv3x3", _plan_winograd3x3, _run_winograd3x3),
    # Winograd F(4, 7) / F(4, 3) for 1x7 / 7x1 / 1x3 / 3x1 (cost rule: ops/winograd_conv1d.py, worth_it_axis)
    Algorithm("winograd_conv1d", _plan_winograd1d, _run_winograd1d),
    # inception_fast._onednn: the primitive created once per geometry and kept, ReLU and add post-ops
    Algorithm("onednn_conv", _plan_onednn_kept, _run_onednn_kept),
    # ATen's oneDNN convolution with post-ops (the primitive made again on every call)
    Algorithm("mkldnn_convolution_pointwise", _plan_aten_onednn, _run_aten_onednn),
    # cuDNN's convolution with the ReLU (and the add) fused
    Algorithm("cudnn_convolution_relu", _plan_cudnn_fused, _run_cudnn_fused),
    Algorithm("conv2d", lambda conv, x, other: True, _run_conv2d),
)


class FoldedConv(nn.Module):
    """act(conv(x, weight, bias) [+ other]): a convolution with BatchNorm folded in, run by the first
    of ALGORITHMS that takes it (on the CPU the ReLU and the residual add are oneDNN post-ops)."""

    # On the CPU, the kept oneDNN primitives of inception_fast._onednn (False: ATen's; for A/B checks).
    use_kept_primitives: bool = True
    # On a GPU, cuDNN's fused convolution + ReLU (+ add). Set per module by optimize(cudnn_fused=True);
    # off by default until timed on a GPU.
    cudnn_fused: bool = False
    # On the CPU in float32, Winograd where its cost rule says it pays (3x3; and 1-D with use_winograd1d).
    use_winograd: bool = True
    use_winograd1d: bool = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, conv: nn.Conv2d, relu: bool = True):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FoldedConv takes plain zero-padded convolutions, got {conv}")
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.relu = relu
        # The weight in the layouts the algorithms want, made on first use per input shape (not
        # state: dropped on copy, made again on use).
        self._packed = LatestCache()

    def __getstate__(self):
        state = super().__getstate__()
        state["_packed"] = LatestCache()
        return state

    @classmethod
    def from_step(cls, step, relu: bool = True) -> "FoldedConv":
        """From a conv -> BN -> ReLU unit (anything with its `conv` and `bn`)."""
        return cls(*fold_step(step), step.conv, relu)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def aten_packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's layout for ATen's convolution on x."""
        w = self.weight
        return self._packed.get_or_make(
            ("aten", tuple(x.shape), w.dtype, w.data_ptr()),
            lambda: torch.ops.mkldnn._reorder_convolution_weight(w, self.padding, self.stride, self.dilation, 1,
                                                                 list(x.shape)))

    def onednn_weight(self, x: torch.Tensor, post_op: int) -> torch.Tensor:
        """The kept oneDNN primitive (and its packed weight) for x and the post-ops."""
        w, b = self.weight, self.bias
        return self._packed.get_or_make(
            ("onednn", tuple(x.shape), w.dtype, b.dtype, post_op, w.data_ptr(), w._version),
            lambda: ops.onednn_conv_pack(w, x.shape, self.stride, self.padding, post_op))

    def winograd_weight(self) -> torch.Tensor:
        """The weight in the Winograd domain (3x3 or 1-D)."""
        w = self.weight
        return self._packed.get_or_make(
            ("winograd", w.data_ptr(), w._version),
            lambda: ops.winograd_weight(w) if w.shape[2:] == (3, 3) else ops.winograd_weight1d(w))

    def algorithm(self, x: torch.Tensor, other: torch.Tensor | None = None) -> str:
        """The name of the algorithm forward(x, other) runs (under the current grad mode)."""
        return next(a.name for a in ALGORITHMS if a.plan(self, x, other) is not None)

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        for a in ALGORITHMS:
            plan = a.plan(self, x, other)
            if plan is not None:
                return a.run(self, x, other, plan)
        raise AssertionError("conv2d takes every call")

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, padding={tuple(self.padding)}, " \
               f"relu={self.relu}"
