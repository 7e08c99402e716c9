"""pytest plugin for the GPU check's test run (`-p tools.pytest_gpucheck`, with tools.pytest_deadline).

- Order: a run cut short by its deadline should already have tested what matters most, so items run
  by tier (TIERS): the kernel cases on the GPU (`cuda-cuda`, `cuda-triton` ids), then opcheck, then
  the models, then optimize(), then the rest. Within a tier the files take turns (the first item of
  each file, then the second, ...), so that every op is reached before any op's long tail of
  parametrizations.
- TF32 off for cuDNN convolutions and cuBLAS matmuls from the session's start: the float32
  comparisons (fused vs reference, ours vs the peer at 1e-4) then measure our kernels, not TF32's
  10-bit mantissa, which cuDNN applies to float32 convolutions by default.
"""
from __future__ import annotations

from collections import defaultdict

TIERS = ("GPU kernels", "opcheck", "models", "optimize", "the rest")


def tier(nodeid: str) -> int:
    """The index in TIERS of a test's node id (`tests/test_bn_relu.py::test_x[cuda-cuda-...]`)."""
    file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if file == "test_opcheck.py":
        return 1
    if file == "test_models.py" or file.startswith("test_model_"):
        return 2
    if file == "test_optimize.py":
        return 3
    if "cuda-cuda" in nodeid or "cuda-triton" in nodeid:
        return 0
    return 4


def ordered(nodeids: list[str]) -> list[int]:
    """The run order of `nodeids` (given in collection order) as indices into it: by tier, then
    round-robin over the files of a tier, collection order otherwise."""
    seen: dict = defaultdict(int)
    keys = []
    for i, nodeid in enumerate(nodeids):
        t, file = tier(nodeid), nodeid.split("::", 1)[0]
        keys.append((t, seen[t, file], i))
        seen[t, file] += 1
    return [k[2] for k in sorted(keys)]


def pytest_collection_modifyitems(session, config, items):
    order = ordered([item.nodeid for item in items])
    items[:] = [items[i] for i in order]


def pytest_sessionstart(session):
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
