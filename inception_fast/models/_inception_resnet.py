"""The blocks Inception-ResNet-v1 and -v2 share (Szegedy et al., "Inception-v4, Inception-ResNet
and the Impact of Residual Connections on Learning", 2016): the same schemas with the widths of
each network, as the paper draws them (v1: Figures 10-12, 7; v2: Figures 16-18, 7 with Table 1's
k, l, m, n). Each model file fixes its widths in thin subclasses that keep its peer's class names.

A residual block concatenates its branches, projects them back to the trunk's width with a 1x1
conv that has a bias (`conv2d`, the peers' name) and ends in act(x + scale * projection) (a
ScaledResidual; the paper scales residuals by 0.1-0.3 to keep deep networks training).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from inception_fast.layers import BranchBlock, ConvBNReLU, MaxPool2d, ResidualBlock, ScaledResidual


def add_stem(model: nn.Module, in_chans: int) -> None:
    """The stem both networks share as TensorFlow-Slim builds them (and their peers name them), up to
    the 71x71x192 map: conv2d_1a (3x3/2), conv2d_2a, conv2d_2b, maxpool_3a, conv2d_3b (1x1), conv2d_4a."""
    model.conv2d_1a = ConvBNReLU(in_chans, 32, kernel_size=3, stride=2)
    model.conv2d_2a = ConvBNReLU(32, 32, kernel_size=3)
    model.conv2d_2b = ConvBNReLU(32, 64, kernel_size=3, padding=1)
    model.maxpool_3a = MaxPool2d(3, stride=2)
    model.conv2d_3b = ConvBNReLU(64, 80, kernel_size=1)
    model.conv2d_4a = ConvBNReLU(80, 192, kernel_size=3)


class Block35(ResidualBlock):
    """Inception-ResNet-A (35x35 grid): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3."""

    def __init__(self, channels: int, branch0: int, branch1: tuple[int, int], branch2: tuple[int, int, int],
                 scale: float = 1.0):
        super().__init__()
        self.branch0 = ConvBNReLU(channels, branch0, kernel_size=1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(channels, branch1[0], kernel_size=1),
            ConvBNReLU(branch1[0], branch1[1], kernel_size=3, padding=1),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(channels, branch2[0], kernel_size=1),
            ConvBNReLU(branch2[0], branch2[1], kernel_size=3, padding=1),
            ConvBNReLU(branch2[1], branch2[2], kernel_size=3, padding=1),
        )
        self.conv2d = nn.Conv2d(branch0 + branch1[-1] + branch2[-1], channels, kernel_size=1)
        self.residual = ScaledResidual(scale, relu=True)

    def forward(self, x):
        out = self.project(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1))
        return self.residual(x, out)


class _Block1xN(ResidualBlock):
    """Inception-ResNet-B / -C: 1x1 | 1x1 -> 1xn -> nx1 (a factorised nxn)."""

    n = 7

    def __init__(self, channels: int, branch0: int, branch1: tuple[int, int, int], scale: float = 1.0,
                 relu: bool = True):
        super().__init__()
        n, p = self.n, self.n // 2
        self.branch0 = ConvBNReLU(channels, branch0, kernel_size=1)
        self.branch1 = nn.Sequential(
            ConvBNReLU(channels, branch1[0], kernel_size=1),
            ConvBNReLU(branch1[0], branch1[1], kernel_size=(1, n), padding=(0, p)),
            ConvBNReLU(branch1[1], branch1[2], kernel_size=(n, 1), padding=(p, 0)),
        )
        self.conv2d = nn.Conv2d(branch0 + branch1[-1], channels, kernel_size=1)
        self.residual = ScaledResidual(scale, relu=relu)

    def forward(self, x):
        out = self.project(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.residual(x, out)


class Block17(_Block1xN):
    """Inception-ResNet-B (17x17 grid): 1x1 | 1x1 -> 1x7 -> 7x1."""

    n = 7


class Block8(_Block1xN):
    """Inception-ResNet-C (8x8 grid): 1x1 | 1x1 -> 1x3 -> 3x1. The network's last one has no ReLU
    (`no_relu`): its sum goes straight into the next convolution."""

    n = 3

    def __init__(self, channels: int, branch0: int, branch1: tuple[int, int, int], scale: float = 1.0,
                 no_relu: bool = False):
        super().__init__(channels, branch0, branch1, scale, relu=not no_relu)


class ReductionA(BranchBlock):
    """Reduction-A, 35x35 -> 17x17 (the paper's Figure 7 and Table 1): 3x3/2 with n filters |
    1x1 (k) -> 3x3 (l) -> 3x3/2 (m) | 3x3/2 max pool."""

    def __init__(self, channels: int, k: int, l: int, m: int, n: int):  # noqa: E741 (the paper's names)
        super().__init__()
        self.branch0 = ConvBNReLU(channels, n, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            ConvBNReLU(channels, k, kernel_size=1),
            ConvBNReLU(k, l, kernel_size=3, padding=1),
            ConvBNReLU(l, m, kernel_size=3, stride=2),
        )
        self.branch2 = MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class ReductionB(BranchBlock):
    """Reduction-B, 17x17 -> 8x8: 1x1 -> 3x3/2 | 1x1 -> 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | 3x3/2 max pool."""

    def __init__(self, channels: int, branch0: tuple[int, int], branch1: tuple[int, int],
                 branch2: tuple[int, int, int]):
        super().__init__()
        self.branch0 = nn.Sequential(
            ConvBNReLU(channels, branch0[0], kernel_size=1),
            ConvBNReLU(branch0[0], branch0[1], kernel_size=3, stride=2),
        )
        self.branch1 = nn.Sequential(
            ConvBNReLU(channels, branch1[0], kernel_size=1),
            ConvBNReLU(branch1[0], branch1[1], kernel_size=3, stride=2),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU(channels, branch2[0], kernel_size=1),
            ConvBNReLU(branch2[0], branch2[1], kernel_size=3, padding=1),
            ConvBNReLU(branch2[1], branch2[2], kernel_size=3, stride=2),
        )
        self.branch3 = MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)
