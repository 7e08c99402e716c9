"""winograd_conv3x3: a 3x3 convolution (stride 1, padding 0 or 1) as Winograd's F(2x2, 3x3) on the CPU, in
float32 -- 16 multiplies per 2x2 block of outputs and channel pair instead of 36 (2.25x fewer), the
input and the products each through a small transform pass (csrc/cpu/winograd_conv3x3.cpp says how and why).

    u = winograd_weight(weight)            # (16, C, K), once per weight
    y = winograd_conv3x3(x, u, bias, padding, relu)  # == act(conv2d(x, weight, bias, 1, padding)), channels_last

Inference: no autograd. optimize() runs the float32 3x3 convolutions where it measured faster on it
(worth_it, below). Its 1-D sibling is winograd_conv1d (ops/winograd_conv1d.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _library

__all__ = ["winograd_weight", "winograd_conv3x3", "winograd_conv3x3_reference"]

# G of F(2x2, 3x3): U = G g G^T
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> (16, C, K) float32: u[4a + b, c, k] = (G weight[k, c] G^T)[a, b], in float64 then
    rounded once."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight: the weight must be (K, C, 3, 3), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3_reference(x, weight, bias=None, padding: int = 1, relu: bool = False) -> torch.Tensor:
    y = F.conv2d(x, weight, bias, 1, padding).contiguous(memory_format=torch.channels_last)
    return torch.relu(y) if relu else y


def _fake(x, u, bias, padding, relu):
    n, _, h, w = x.shape
    return x.new_empty((n, u.shape[2], h + 2 * padding - 2, w + 2 * padding - 2)).contiguous(
        memory_format=torch.channels_last)


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::winograd_conv3x3", _fake)


def _check_input(op: str, x, u) -> None:
    """x and u CPU float32 tensors, x 4-D: else a named error."""
    for name, t in (("x", x), ("u", u)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{op} runs on the CPU: {name} is on {t.device}")
        if t.dtype != torch.float32:
            raise TypeError(f"{op} runs in float32: {name} is {t.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be a 4-D (N, C, H, W) batch, got shape {tuple(x.shape)}")


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 1,
                     relu: bool = False) -> torch.Tensor:
    """act(conv2d(x, weight, bias, stride 1, padding)) for u = winograd_weight(weight), padding 0 or 1;
    CPU, float32."""
    _check_input("winograd_conv3x3", x, u)
    if u.dim() != 3 or u.shape[0] != 16 or u.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3: u must be (16, C, K) with C = {x.shape[1]} (x's channels), got "
                         f"{tuple(u.shape)}: make it with winograd_weight")
    if padding not in (0, 1):
        raise ValueError(f"winograd_conv3x3: padding must be 0 or 1, got {padding}")
    if min(x.shape[2:]) + 2 * padding < 3:
        raise ValueError(f"winograd_conv3x3: a {x.shape[2]}x{x.shape[3]} map with padding {padding} is smaller than "
                         "the 3x3 kernel")
    return _library.namespace("cpu").winograd_conv3x3(x, u, bias, int(padding), bool(relu))


# -- where optimize() runs it (its cost rule) --------------------------------------------------
def worth_it(x_shape, weight_shape, padding) -> bool:
    """Whether a float32 CPU 3x3 stride-1 convolution of weight_shape (K, C, 3, 3) on an input of
    x_shape (N, C, H, W) runs faster as this op (F(2x2, 3x3)) than oneDNN's direct
    convolution: padding 0 or 1, 20 MFLOP or more, channels for which the saved multiply-adds outweigh
    the transforms (C K / (C + K) >= 20), 48 input channels or more or a map of 28x28 or more, and
    more than 16 tiles of 2x2 outputs an image (or 384 input channels or more). Measured in the
    replayed models, it won 1.1-1.5x there and lost (0.6-0.92x) on small maps and on 16-32 channels."""
    if tuple(weight_shape[2:]) != (3, 3) or list(padding) not in ([0, 0], [1, 1]):
        return False
    k, c = weight_shape[:2]
    p = padding[0]
    oh, ow = x_shape[2] + 2 * p - 2, x_shape[3] + 2 * p - 2
    tiles = ((oh + 1) // 2) * ((ow + 1) // 2)
    flops = 2 * x_shape[0] * oh * ow * c * k * 9
    return c * k >= 20 * (c + k) and flops >= 20e6 and (c >= 48 or oh * ow >= 28 * 28) and (tiles > 16 or c >= 384)
