"""Glue between the C++ schemas and the Python side of every op.

The schemas live once, in csrc/ops.cpp. Triton kernels get a namespace of their own,
`inception_fast_triton`, whose ops copy those schemas at import time, so torch.compile sees every
backend as an opaque custom op (no graph break) and the fake kernels and autograd formulas below
are registered once per namespace from the same Python functions.
"""
from __future__ import annotations

import importlib

import torch

from inception_fast import _ext
from inception_fast.ops import _backend

_triton_lib: torch.library.Library | None = None


class _Overloads:
    """The `.default` overloads of one op namespace, looked up once. Calling an OpOverloadPacket
    (`torch.ops.ns.op(...)`) resolves the overload in Python on every call (~30 us, as much as the
    kernel on a small tensor); calling the OpOverload does not."""

    def __init__(self, ns: str):
        self._ns = ns

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        overload = getattr(getattr(torch.ops, self._ns), name).default
        setattr(self, name, overload)
        return overload


_overloads: dict[str, _Overloads] = {}


def namespace(backend: str):
    """The ops (their `.default` overloads) of the namespace that runs on `backend` ("cpu"/"cuda"
    share the C++ one)."""
    if backend in ("cpu", "cuda"):
        ns = _ext.OPS_NAMESPACE
    elif backend == "triton":
        ns = _ext.TRITON_NAMESPACE
    else:
        raise ValueError(f"backend {backend!r} has no op namespace")
    if ns not in _overloads:
        _overloads[ns] = _Overloads(ns)
    return _overloads[ns]


def _namespaces() -> list[str]:
    """The op namespaces that exist: none without the extension, whose schemas declare them."""
    if not _ext.loaded():
        return []
    return [_ext.OPS_NAMESPACE] + ([_ext.TRITON_NAMESPACE] if _triton_lib is not None else [])


def define_triton_ops(names: list[str], module: str) -> None:
    """Declare `inception_fast_triton::<name>` with the C++ schema of `inception_fast::<name>`;
    its implementation is `<module>.<name>` (imported on first call, so `import triton` is paid
    only by who uses it). Registered for CUDA and, for the Triton interpreter, CPU tensors."""
    global _triton_lib
    if not _ext.loaded():
        return
    if _triton_lib is None:
        _triton_lib = torch.library.Library(_ext.TRITON_NAMESPACE, "DEF")
    for name in names:
        schema = getattr(getattr(torch.ops, _ext.OPS_NAMESPACE), name).default._schema
        _triton_lib.define(str(schema).split("::", 1)[1])

        def impl(*args, _name=name):
            return getattr(importlib.import_module(module), _name)(*args)

        for key in ("CUDA", "CPU"):
            _triton_lib.impl(name, impl, key)


def register_fake(name: str, fn) -> None:
    for ns in _namespaces():
        torch.library.register_fake(f"{ns}::{name}", fn)


def register_autograd(name: str, make_backward, setup_context) -> None:
    """`make_backward(ops)` returns the backward formula that calls the ops of namespace `ops`.
    Registered for the Triton namespace only: the C++ ops carry the same formula in C++
    (csrc/autograd/), registered for the Autograd key with their schemas, because the Python
    autograd machinery costs more than the kernels on small tensors."""
    for ns in _namespaces():
        if ns == _ext.OPS_NAMESPACE:
            continue
        torch.library.register_autograd(f"{ns}::{name}", make_backward(_overloads.setdefault(ns, _Overloads(ns))),
                                        setup_context=setup_context)


def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with exactly ref's strides (what the kernels require of a second operand)."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def dense(x: torch.Tensor) -> torch.Tensor:
    """x contiguous in NCHW or channels_last (kept as it is when it already is one of those)."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of per-channel vectors and statistics for activations of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


__all__ = ["namespace", "define_triton_ops", "register_fake", "register_autograd", "like", "dense",
           "acc_dtype", "_backend"]
