"""branch_conv_spec: an Inception block's branches as the arguments of ops.branch_conv."""
from __future__ import annotations

import torch
import torch.nn as nn

from inception_fast.layers import is_plain_1x1
from inception_fast.optimize.fold import fold_step, is_conv_bn_relu


def pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def is_pool3x3_s1(p: nn.Module) -> bool:
    """A 3x3 pool, stride 1, padding 1 (the pool branch of the blocks that keep the map size)."""
    return pair(p.kernel_size) == (3, 3) and pair(p.stride) == (1, 1) and pair(p.padding) == (1, 1) \
        and not p.ceil_mode


def is_1x1_step(step) -> bool:
    return is_conv_bn_relu(step) and is_plain_1x1(step.conv)


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
            if pair(p.kernel_size) != (3, 3) or pair(p.stride) != (1, 1) or pair(p.padding) != (1, 1) \
                    or p.divisor_override is not None:
                return None
            kind, steps = (1 if p.count_include_pad else 2), steps[1:]
        elif steps and isinstance(steps[0], nn.MaxPool2d):
            p = steps[0]
            if pair(p.kernel_size) != (3, 3) or pair(p.stride) != (1, 1) or pair(p.padding) != (1, 1) \
                    or pair(p.dilation) != (1, 1) or p.return_indices:
                return None
            kind, steps = 3, steps[1:]
        if not steps or not is_1x1_step(steps[0]):
            return None
        for step in steps:
            c = getattr(step, "conv", None)
            if not is_conv_bn_relu(step) or c.groups != 1 or c.dilation != (1, 1) or c.padding_mode != "zeros" \
                    or isinstance(c.padding, str):
                return None
        w, b = fold_step(steps[0])
        weights.append(w)
        biases.append(b)
        split.append(w.shape[0])
        pool.append(kind)
        depth.append(len(steps) - 1)
        for step in steps[1:]:
            w, b = fold_step(step)
            conv_weight.append(w)
            conv_bias.append(b)
            conv_stride += list(step.conv.stride)
            conv_padding += list(step.conv.padding)
    dtype = dtype or branches[0][-1].conv.weight.dtype
    cast = lambda t: t.to(dtype).contiguous()  # noqa: E731
    return dict(weight=cast(torch.cat(weights)), bias=cast(torch.cat(biases)), split=split, pool=pool, depth=depth,
                conv_weight=[cast(w) for w in conv_weight], conv_bias=[cast(b) for b in conv_bias],
                conv_stride=conv_stride, conv_padding=conv_padding)
