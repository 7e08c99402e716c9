"""The CPU memory pool: a caching allocator for inference (csrc/cpu/memory_pool.cpp).

glibc returns large freed blocks to the system, so every forward of a model at a real batch size
page-faults its activations in again (13,000 faults per googlenet forward, 87,000 per
inception_resnet_v2 forward, float32, batch 8: 5-9% of the run time on a 2-core Zen 4). Inside
`pooled()` -- which `optimize()`d models enter on the CPU -- blocks of 256 KiB or more come from a
cache of freed blocks instead, and go back to it when freed. Outside the scope allocation is
unchanged. The cache keeps at most `limit()` bytes (2 GiB by default; `set_limit`), and
`empty_cache()` frees it, like torch.cuda.empty_cache().
"""
from __future__ import annotations

import contextlib
import warnings

from inception_fast import _ext

__all__ = ["pooled", "empty_cache", "set_limit", "limit", "stats", "available"]

_warned = False


def available() -> bool:
    return _ext.loaded() and hasattr(_ext._C, "_pool_enter")


def _unavailable(why: str) -> None:
    global _warned
    if not _warned:
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
