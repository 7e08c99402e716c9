"""Loading the compiled extension inception_fast._C (the C++/CUDA kernels and the op schemas).

The package works without it -- every op then runs on its eager reference, optimize() on ATen, and
the memory pool and native replay are off -- and says so once, at import, naming the cause.
"""
from __future__ import annotations

import warnings

import torch

LOAD_ERROR: str | None = None
try:
    from inception_fast import _C  # noqa: F401  (registers the ops with the dispatcher)
except ImportError as e:  # not built, or built against another torch
    LOAD_ERROR = f"{type(e).__name__}: {e}"

OPS_NAMESPACE = "inception_fast"
TRITON_NAMESPACE = "inception_fast_triton"


def loaded() -> bool:
    return LOAD_ERROR is None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered a kernel of `inception_fast::op` for `dispatch_key`."""
    if not loaded():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{OPS_NAMESPACE}::{op}", dispatch_key)


# -- inception_fast._onednn: optimize()'s CPU convolutions on kept oneDNN primitives -------------
# Built when oneDNN's wheels (onednn-cpu-gomp, onednn-devel-cpu-gomp) were installed at build time;
# its library, libdnnl.so.3, lives in <prefix>/lib, which the module's rpath names. Where that path
# no longer holds (the environment moved), it is loaded from sys.prefix by hand first.
ONEDNN_ERROR: str | None = None
try:
    try:
        from inception_fast import _onednn
    except ImportError as e:
        if "libdnnl" not in str(e):
            raise
        import ctypes
        import os
        import sys

        ctypes.CDLL(os.path.join(sys.prefix, "lib", "libdnnl.so.3"), mode=ctypes.RTLD_GLOBAL)
        from inception_fast import _onednn
except (ImportError, OSError) as e:
    _onednn = None
    ONEDNN_ERROR = f"{type(e).__name__}: {e}"


def onednn_loaded() -> bool:
    return _onednn is not None


def missing_warning() -> str | None:
    """What the package runs without, and why, when _C did not load (None when it did)."""
    if loaded():
        return None
    onednn = "" if onednn_loaded() else f"; inception_fast._onednn: {ONEDNN_ERROR}"
    return (f"inception_fast: the compiled extension inception_fast._C did not load ({LOAD_ERROR}{onednn}). "
            "Every op runs on its eager PyTorch reference and optimize() on ATen: the same numbers, without the "
            f"fused kernels' speed. Rebuild against this torch ({torch.__version__}) with "
            "`pip install --no-build-isolation -e .` to get them.")


if not loaded():
    warnings.warn(missing_warning(), RuntimeWarning, stacklevel=2)
