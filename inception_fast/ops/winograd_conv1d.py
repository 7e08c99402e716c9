"""winograd_conv1d: a 1 x r or r x 1 convolution (r = 7 or 3, stride 1, padding along the kernel's axis) as
Winograd's F(4, r) on the CPU, in float32 -- 10 multiplies per 4 outputs along the axis and channel pair
instead of 28 for r = 7, 6 instead of 12 for r = 3 (csrc/cpu/winograd_conv1d.cpp):

    u = winograd_weight1d(weight)                     # (10 or 6, C, K), once per weight
    y = winograd_conv1d(x, u, bias, dim, padding, relu)  # dim 3 for 1 x r, 2 for r x 1

Inference: no autograd. optimize() runs the float32 convolutions where it measured faster on it
(worth_it_axis, below).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from inception_fast.ops import _library
from inception_fast.ops.winograd_conv3x3 import _check_input

__all__ = ["winograd_weight1d", "winograd_conv1d", "winograd_conv1d_reference"]

# winograd_conv1d's transformed length A for each kernel length r (F(4, r): A = 4 + r - 1), and back
_LENGTH = {7: 10, 3: 6}
_TAPS = {a: r for r, a in _LENGTH.items()}


def _fake1d(x, u, bias, dim, padding, relu):
    n, _, h, w = x.shape
    r = _TAPS[int(u.shape[0])]  # (the transformed length is static: it fixes the kernel)
    oh, ow = (h + 2 * padding - r + 1, w) if dim == 2 else (h, w + 2 * padding - r + 1)
    return x.new_empty((n, u.shape[2], oh, ow)).contiguous(memory_format=torch.channels_last)


def _fake_weight1d(weight):
    r = int(weight.shape[2] * weight.shape[3])
    return weight.new_empty((_LENGTH[r], weight.shape[1], weight.shape[0]), dtype=torch.float32)


if _library._ext.loaded():
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::winograd_conv1d", _fake1d)
    torch.library.register_fake(f"{_library._ext.OPS_NAMESPACE}::winograd_weight1d", _fake_weight1d)


def _kernel_1d(weight: torch.Tensor) -> tuple[int, int] | None:
    """(r, dim) of a (K, C, 1, r) or (K, C, r, 1) weight with r = 7 or 3, else None."""
    if weight.dim() != 4:
        return None
    kh, kw = weight.shape[2:]
    if kh == 1 and kw in (3, 7):
        return kw, 3
    if kw == 1 and kh in (3, 7):
        return kh, 2
    return None


def winograd_weight1d(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 1, r) or (K, C, r, 1), r = 7 or 3 -> (A, C, K) float32 (A = 10 or 6): u[e, c, k] = (G g)[e] of the
    filter g = weight[k, c] along its axis, in float64 then rounded once. On the CPU."""
    if not isinstance(weight, torch.Tensor) or _kernel_1d(weight) is None:
        raise ValueError(f"winograd_weight1d: the weight must be (K, C, 1, r) or (K, C, r, 1) with r = 7 or 3, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"winograd_weight1d: the weight must be floating point, got {weight.dtype}")
    return _library.namespace("cpu").winograd_weight1d(weight.detach().cpu())


def winograd_conv1d_reference(x, weight, bias=None, padding: int | None = None, relu: bool = False) -> torch.Tensor:
    r, dim = _kernel_1d(weight)
    p = r // 2 if padding is None else padding
    y = F.conv2d(x, weight, bias, 1, (p, 0) if dim == 2 else (0, p)).contiguous(memory_format=torch.channels_last)
    return torch.relu(y) if relu else y


def winograd_conv1d(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None, dim: int = 3,
                    padding: int = 3, relu: bool = False) -> torch.Tensor:
    """act(conv2d(x, weight, bias, stride 1, padding along dim)) for u = winograd_weight1d(weight): dim 3 for a
    1 x r weight (padding (0, p)), 2 for r x 1 ((p, 0)); CPU, float32."""
    _check_input("winograd_conv1d", x, u)
    if u.dim() != 3 or u.shape[0] not in _TAPS or u.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv1d: u must be (10, C, K) or (6, C, K) with C = {x.shape[1]} (x's channels), "
                         f"got {tuple(u.shape)}: make it with winograd_weight1d")
    if dim not in (2, 3):
        raise ValueError(f"winograd_conv1d: dim must be 2 (an r x 1 kernel) or 3 (1 x r), got {dim}")
    r = _TAPS[u.shape[0]]
    if not 0 <= padding < r:
        raise ValueError(f"winograd_conv1d: padding must be in [0, {r - 1}] for a {r}-tap kernel, got {padding}")
    if x.shape[dim] + 2 * padding < r:
        raise ValueError(f"winograd_conv1d: a map of {x.shape[dim]} pixels along dim {dim} with padding {padding} is "
                         f"shorter than the {r}-tap kernel")
    return _library.namespace("cpu").winograd_conv1d(x, u, bias, int(dim), int(padding), bool(relu))


# -- where optimize() runs it (its cost rule) --------------------------------------------------
def worth_it_axis(x_shape, weight_shape, padding) -> int | None:
    """The axis (2 for r x 1, 3 for 1 x r) along which a float32 CPU stride-1 convolution of
    weight_shape (1x7 / 7x1 / 1x3 / 3x1) on x_shape runs faster as this op (F(4, r)), or
    None: zero padding along its axis only (less than r), 10 MFLOP or more, C K / (C + K) >= 20, and
    8 outputs or more along the axis. Where it applies it measured 1.3-1.95x the direct convolution
    on the 17x17 and 8x8 maps of Inception-v3 / v4 / ResNet-v2."""
    kh, kw = weight_shape[2:]
    if kh == 1 and kw in (3, 7) and padding[0] == 0:
        dim, r = 3, kw
    elif kw == 1 and kh in (3, 7) and padding[1] == 0:
        dim, r = 2, kh
    else:
        return None
    k, c = weight_shape[:2]
    out = x_shape[dim] + 2 * padding[dim - 2] - r + 1
    flops = 2 * x_shape[0] * c * k * r * out * x_shape[5 - dim]
    return dim if padding[dim - 2] < r and c * k >= 20 * (c + k) and flops >= 10e6 and out >= 8 else None
