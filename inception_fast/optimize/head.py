"""The classifier: its average pool on ops.global_avg_pool, its Linear on a kept oneDNN primitive."""
from __future__ import annotations

import torch
import torch.nn as nn

from inception_fast import ops
from inception_fast._cache import LatestCache
from inception_fast.layers import GlobalPool2d
from inception_fast.optimize.conv import FoldedConv, onednn_kept


class GlobalAvgPool(GlobalPool2d):
    """GlobalPool2d('avg') on ops.global_avg_pool: one pass over the map, the sum in float32 (ATen's
    mean of a channels_last bfloat16 map is several times slower)."""

    def __init__(self, flatten: bool):
        super().__init__("avg", flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.global_avg_pool(x)
        return y if self.flatten else y.view(*y.shape, 1, 1)


class KeptLinear(nn.Linear):
    """nn.Linear (same parameters and state_dict) whose CPU inference runs as a 1x1 convolution on
    inception_fast._onednn's kept primitive, the weight packed once: ATen's CPU linear makes oneDNN's
    primitive again on every call, which at batch 1 costs about as much as the GEMM itself."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.train(linear.training)
        self._packed = LatestCache()  # (not state: dropped on copy, made again on use)

    def __getstate__(self):
        state = super().__getstate__()
        state["_packed"] = LatestCache()
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if x.device.type == "cpu" and x.dim() == 2 and x.dtype in (torch.float32, torch.bfloat16) \
                and w.dtype == x.dtype and (b is None or b.dtype == x.dtype) and not torch.is_grad_enabled() \
                and FoldedConv.use_kept_primitives and onednn_kept():
            n, k = x.shape
            packed = self._packed.get_or_make(
                (n, w.dtype, w.data_ptr(), w._version),
                lambda: ops.onednn_conv_pack(w.detach().view(*w.shape, 1, 1), [n, k, 1, 1], [1, 1], [0, 0], 0,
                                             has_bias=b is not None))
            y = ops.onednn_conv(x.contiguous().view(n, k, 1, 1), packed, [w.shape[0], k, 1, 1], b, [1, 1], [0, 0],
                                0, None)
            return y.view(n, w.shape[0])
        return super().forward(x)


def compile_head(module: nn.Module) -> nn.Module | None:
    """The compiled form of a classifier module, or None when it has none."""
    if type(module) is GlobalPool2d and module.pool_type == "avg":
        return GlobalAvgPool(module.flatten)
    if type(module) is nn.Linear:
        return KeptLinear(module)
    return None
