"""Which backend runs an op: reference | cpu | cuda | triton.

The choice comes from, in order: the innermost `use_backend(...)` context, `set_backend(...)`,
the environment variable INCEPTION_FAST_BACKEND, and "auto" (the fastest available for the
tensor's device: C++ on CPU tensors; CUDA C++, then Triton, on CUDA tensors). A requested
backend that cannot run the given tensor is replaced by the next one of its device, with a
warning the first time -- never silently.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from inception_fast import _ext
from inception_fast._settings import Setting

BACKENDS = ("reference", "cpu", "cuda", "triton")
_CHOICES = ("auto",) + BACKENDS
# Fallback order per device type, best first.
_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}

_warned: set = set()


def _validate(name: str) -> str:
    name = str(name).strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"unknown inception_fast backend {name!r}; expected one of {', '.join(_CHOICES)}")
    return name


_setting = Setting("auto", _validate)


def set_backend(name: str) -> None:
    """Set the process-wide backend ("auto", "reference", "cpu", "cuda" or "triton")."""
    _setting.set(name)


def get_backend() -> str:
    """The backend requested now ("auto" unless set); see resolve() for the one an op will use."""
    return _setting.get()


def use_backend(name: str):
    """Context manager: run the ops in this block on `name` (falls back, with a warning, where it cannot)."""
    return _setting.use(name)


@functools.lru_cache(maxsize=None)
def triton_importable() -> str | None:
    """None if Triton can be used, else the reason it cannot."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton cannot be imported ({type(e).__name__}: {e})"
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if `backend` can run an op on a tensor of this device and dtype, else why not."""
    dev = device.type
    if backend == "reference":
        return None
    if not _ext.loaded():
        return f"the compiled extension inception_fast._C is not available ({_ext.LOAD_ERROR})"
    if backend == "cpu":
        return None if dev == "cpu" else f"the cpu backend runs CPU tensors, this one is on {device}"
    if backend == "cuda":
        if dev != "cuda":
            return f"the cuda backend runs CUDA tensors, this one is on {device}"
        if not _ext.has_kernel("bn_stats", "CUDA"):
            return "inception_fast._C was built without CUDA kernels (rebuild with a CUDA toolkit or FORCE_CUDA=1)"
        if dtype == torch.float64:
            return "the cuda kernels take float16, bfloat16 and float32, not float64"
        return None
    if backend == "triton":
        reason = triton_importable()
        if reason:
            return reason
        if dev == "cpu" and not triton_interpret():
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
        if dev not in ("cpu", "cuda"):
            return f"Triton does not run tensors on {device}"
        if dtype == torch.float64:
            return "the triton kernels take float16, bfloat16 and float32, not float64"
        return None
    raise AssertionError(backend)


def warn_once(key, message: str) -> None:
    if key in _warned or torch.compiler.is_compiling():
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


# resolve()'s answers: it runs once per op call (a thousand times in a training step), and its
# answer depends only on this key (the warning, if any, was given when the answer was first found).
_resolved: dict = {}


def resolve(x: torch.Tensor, op: str) -> str:
    """The backend that runs `op` on x: the requested one if it can, else the next, loudly."""
    requested = get_backend()
    if requested == "reference":
        return "reference"
    key = (requested, x.device.type, x.dtype, triton_interpret())
    backend = _resolved.get(key)
    if backend is None:
        backend = _resolved[key] = _resolve(requested, x, op)
    return backend


def _resolve(requested: str, x: torch.Tensor, op: str) -> str:
    order = _ORDER.get(x.device.type, ("reference",))
    candidates = order if requested == "auto" else (requested,) + tuple(b for b in order if b != requested)
    first_reason = None
    for backend in candidates:
        reason = unavailable_reason(backend, x.device, x.dtype)
        if reason is None:
            # (with "auto", a missing _C was reported at import)
            if backend != candidates[0] and (requested != "auto" or _ext.loaded()):
                warn_once((requested, x.device.type, x.dtype, backend),
                          f"inception_fast: backend {candidates[0]!r} cannot run {op} here: {first_reason}; "
                          f"using {backend!r} instead")
            return backend
        first_reason = first_reason or reason
    return "reference"


def available_backends(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """The backends that can run ops on tensors of this device and dtype, best first."""
    device = torch.device(device)
    order = _ORDER.get(device.type, ("reference",))
    extra = ("triton",) if device.type == "cpu" else ()
    return [b for b in order[:-1] + extra + ("reference",) if unavailable_reason(b, device, dtype) is None]


def _init_from_env() -> None:
    env = os.environ.get("INCEPTION_FAST_BACKEND")
    if env:
        set_backend(env)


_init_from_env()
