import os

# The Triton kernels run on CPU tensors through the interpreter where there is no GPU; the flag
# must be set before triton is first imported.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import inception_fast  # noqa: E402
from inception_fast import _ext  # noqa: E402
from inception_fast.ops import _backend  # noqa: E402


def pytest_report_header(config):
    lines = [f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}",
             f"inception_fast._C: {'loaded' if _ext.loaded() else _ext.LOAD_ERROR}",
             f"backends (cpu tensors): {_backend.available_backends('cpu')}"]
    if torch.cuda.is_available():
        lines.append(f"backends (cuda tensors): {_backend.available_backends('cuda')}")
    return lines


def pytest_sessionstart(session):
    # CI sets this so that a missing build or a missing Triton fails the run instead of
    # quietly testing less.
    if os.environ.get("INCEPTION_FAST_REQUIRE_BACKENDS"):
        required = os.environ["INCEPTION_FAST_REQUIRE_BACKENDS"].split(",")
        have = _backend.available_backends("cpu") + (_backend.available_backends("cuda") if torch.cuda.is_available() else [])
        missing = [b for b in required if b not in have]
        if missing:
            raise pytest.UsageError(f"required backends not available: {missing} (have {have}; "
                                    f"_C: {_ext.LOAD_ERROR or 'loaded'})")


def device_backends():
    """(device, backend) pairs this machine can run, the reference included."""
    pairs = [("cpu", b) for b in _backend.available_backends("cpu")]
    if torch.cuda.is_available():
        pairs += [("cuda", b) for b in _backend.available_backends("cuda")]
    return pairs


DEVICE_BACKENDS = device_backends()
DEVICE_BACKEND_IDS = [f"{d}-{b}" for d, b in DEVICE_BACKENDS]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
