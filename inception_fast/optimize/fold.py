"""BatchNorm folding: a conv -> BN (running statistics) -> scale as one convolution's weight and bias,
computed in float64 and rounded once to the run dtype."""
from __future__ import annotations

import torch
import torch.nn as nn


def is_conv_bn_relu(step) -> bool:
    """Whether step is a conv -> BN -> ReLU unit (layers.ConvBNReLU, or a view with `conv` and `bn`)."""
    return isinstance(getattr(step, "conv", None), nn.Conv2d) and isinstance(getattr(step, "bn", None),
                                                                              nn.BatchNorm2d)


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, scale: float = 1.0):
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


def fold_step(step, scale: float = 1.0):
    """fold() of a conv -> BN -> ReLU unit."""
    return fold(step.conv, step.bn, scale)
