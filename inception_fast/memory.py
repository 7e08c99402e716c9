"""The CPU memory pool: a caching allocator (csrc/runtime/memory_pool.cpp).

glibc returns large freed blocks to the system, so every forward of a model at a real batch size
page-faults its activations in again (13,000 faults per googlenet forward, 87,000 per
inception_resnet_v2 forward, float32, batch 8: 5-9% of the run time on a 2-core Zen 4). Inside
`pooled()` -- which `optimize()`d models enter on the CPU -- blocks of 256 KiB or more come from a
cache of freed blocks instead, and go back to it when freed. Outside the scope allocation is
unchanged. The cache keeps at most `limit()` bytes (2 GiB by default; `set_limit`), and
`empty_cache()` frees it, like torch.cuda.empty_cache().

A model on the fused path runs its CPU forward in the pool (InceptionModel.__call__), and, when the
forward records a graph, the backward that graph runs too (`backward_scope`): a training step of
Inception-v3 at 160x160, batch 8, page-faulted 36,000 times and now none (2-core Zen 4: 1.12x the
step's speed).
"""
from __future__ import annotations

import contextlib
import threading
import warnings

import torch

from inception_fast import _ext

__all__ = ["pooled", "backward_scope", "empty_cache", "set_limit", "limit", "stats", "available"]

_warned = False
_backward = threading.local()  # .entered: this thread's backward is in a pool scope backward_scope opened


def available() -> bool:
    return _ext.loaded() and hasattr(_ext._C, "_pool_enter")


def _unavailable(why: str) -> None:
    global _warned
    if not _warned and _ext.loaded():  # (a missing _C was reported at import)
        _warned = True
        warnings.warn(f"inception_fast: the CPU memory pool is unavailable ({why}); allocations go to "
                      "torch's default CPU allocator", stacklevel=3)


@contextlib.contextmanager
def pooled():
    """Serve this thread's CPU allocations of 256 KiB or more from the pool for the block."""
    if not available():
        _unavailable(_ext.LOAD_ERROR or "the extension predates it")
        yield
        return
    try:
        _ext._C._pool_enter()
    except RuntimeError as e:  # another allocator of higher priority is installed
        _unavailable(str(e))
        yield
        return
    try:
        yield
    finally:
        _ext._C._pool_exit()


class _EnterInBackward(torch.autograd.Function):
    """The identity; its backward, the first node a backward through the outputs runs, enters the
    pool for the rest of that backward."""

    @staticmethod
    def forward(ctx, *xs):
        return xs

    @staticmethod
    def backward(ctx, *grads):
        _enter_backward()
        return grads


def _enter_backward() -> None:
    if getattr(_backward, "entered", False) or not available():
        return
    try:
        _ext._C._pool_enter()
    except RuntimeError as e:
        _unavailable(str(e))
        return
    _backward.entered = True
    # Left when the engine has run the whole graph, on the thread that runs the CPU's nodes (this one).
    torch.autograd.Variable._execution_engine.queue_callback(leave_stale_backward_scope)


def leave_stale_backward_scope() -> None:
    """Leave the scope a backward entered (its end does; so does the next pooled forward, after a
    backward that raised before its end)."""
    if getattr(_backward, "entered", False):
        _backward.entered = False
        _ext._C._pool_exit()


def backward_scope(out):
    """`out` (a tensor, or a tuple / namedtuple of them) behind an identity whose backward enters the
    pool on this thread until the engine has run that backward's whole graph. Outputs that need no
    gradient, and other types, are returned as they are."""
    if isinstance(out, torch.Tensor):
        return _EnterInBackward.apply(out)[0] if out.requires_grad else out
    if isinstance(out, tuple):
        idx = [i for i, o in enumerate(out) if isinstance(o, torch.Tensor) and o.requires_grad]
        if not idx:
            return out
        items = list(out)
        for i, o in zip(idx, _EnterInBackward.apply(*(out[i] for i in idx))):
            items[i] = o
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    return out


def empty_cache() -> None:
    """Free the cached blocks (blocks in use stay; they return to the pool when freed)."""
    if available():
        _ext._C._pool_empty()


def set_limit(nbytes: int) -> None:
    """The most bytes the pool keeps cached; lowering it frees the excess now."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ValueError(f"set_limit takes a byte count >= 0, got {nbytes!r}")
    if not available():
        raise RuntimeError(f"the CPU memory pool is unavailable: {_ext.LOAD_ERROR or 'the extension predates it'}")
    _ext._C._pool_set_limit(nbytes)


def limit() -> int:
    return stats()["limit_bytes"]


def stats() -> dict:
    """live_bytes (pooled blocks in use), cached_bytes, limit_bytes, hits, misses."""
    if not available():
        return {"live_bytes": 0, "cached_bytes": 0, "limit_bytes": 0, "hits": 0, "misses": 0}
    return _ext._C._pool_stats()
