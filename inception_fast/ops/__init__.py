"""The fused ops of inception_fast: one Python function per op, on the backend chosen by
`use_backend` / `set_backend` / INCEPTION_FAST_BACKEND (reference | cpu | cuda | triton)."""
from inception_fast.ops._backend import (BACKENDS, available_backends, get_backend, resolve, set_backend,
                                         use_backend)
from inception_fast.ops.avg_pool3x3_bias_relu import avg_pool3x3_bias_relu, avg_pool3x3_bias_relu_reference
from inception_fast.ops.branch_conv import branch_conv, branch_conv_reference
from inception_fast.ops.channel_cat import channel_cat, channel_cat_reference
from inception_fast.ops.bn_relu import (bn_relu, bn_relu_reference, bn_relu_with_stats, bn_stats,
                                        combine_stats)
from inception_fast.ops.conv1x1 import conv1x1, conv1x1_reference
from inception_fast.ops.conv_im2col import conv_im2col, conv_im2col_reference
from inception_fast.ops.global_avg_pool import global_avg_pool, global_avg_pool_reference
from inception_fast.ops.max_pool import max_pool, max_pool_reference
from inception_fast.ops.onednn_conv import onednn_conv, onednn_conv_pack, onednn_conv_reference
from inception_fast.ops.prepare_input import prepare_input, prepare_input_reference
from inception_fast.ops.winograd_conv1d import winograd_conv1d, winograd_conv1d_reference, winograd_weight1d
from inception_fast.ops.winograd_conv3x3 import winograd_conv3x3, winograd_conv3x3_reference, winograd_weight
from inception_fast.ops.scaled_residual_add import scaled_residual_add, scaled_residual_add_reference

__all__ = [
    "BACKENDS", "available_backends", "get_backend", "resolve", "set_backend", "use_backend",
    "bn_relu", "bn_relu_reference", "bn_relu_with_stats", "bn_stats", "combine_stats",
    "scaled_residual_add", "scaled_residual_add_reference", "conv1x1", "conv1x1_reference",
    "conv_im2col", "conv_im2col_reference", "max_pool", "max_pool_reference", "branch_conv",
    "branch_conv_reference", "prepare_input", "prepare_input_reference", "onednn_conv", "onednn_conv_pack",
    "onednn_conv_reference", "avg_pool3x3_bias_relu", "avg_pool3x3_bias_relu_reference",
    "channel_cat", "channel_cat_reference", "global_avg_pool", "global_avg_pool_reference",
    "winograd_conv3x3", "winograd_conv3x3_reference", "winograd_weight", "winograd_conv1d",
    "winograd_conv1d_reference", "winograd_weight1d",
]
