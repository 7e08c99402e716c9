"""inception_fast: the Inception family on fused C++/CUDA/Triton kernels."""
from inception_fast import _ext, ops  # noqa: F401  (_ext loads the compiled kernels)
from inception_fast.layers import ConvBNReLU, ScaledResidual, use_fused
from inception_fast.optimize import optimize  # the function; the module stays importable as inception_fast.optimize

__version__ = "0.1.0"

__all__ = ["ops", "ConvBNReLU", "ScaledResidual", "use_fused", "optimize", "__version__"]
