"""Triton implementations of the inception_fast ops (schemas in csrc/ops.cpp).

The kernels live in ``bn_relu``, ``scaled_residual_add`` and ``branch_conv``; import those modules explicitly.
This package itself imports nothing, so that ``import inception_fast`` keeps working where
Triton is not installed.
"""

__all__ = ["bn_relu", "scaled_residual_add", "branch_conv"]
