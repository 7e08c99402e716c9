"""The backend switch: environment variable, context, process-wide setting, loud fallback."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from inception_fast import ops
from inception_fast.ops import _backend


def test_use_backend_nests_and_restores():
    assert ops.get_backend() == "auto"
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
        with ops.use_backend("cpu"):
            assert ops.get_backend() == "cpu"
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "auto"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown inception_fast backend 'tpu'"):
        ops.set_backend("tpu")
    with pytest.raises(ValueError, match="expected one of"):
        with ops.use_backend("fast"):
            pass


def test_auto_picks_the_compiled_kernel_on_cpu():
    x = torch.randn(2, 3, 4, 4)
    assert ops.resolve(x, "bn_relu") == ("cpu" if "cpu" in ops.available_backends("cpu") else "reference")


def _forget_choices(monkeypatch):
    # As in a fresh process: no warning given yet, no backend chosen yet (resolve caches its answers).
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setattr(_backend, "_resolved", {})


def test_unavailable_backend_warns_once_and_falls_back(monkeypatch):
    _forget_choices(monkeypatch)
    x = torch.randn(2, 3, 4, 4)
    with ops.use_backend("cuda"):
        with pytest.warns(RuntimeWarning, match="backend 'cuda' cannot run bn_relu here"):
            chosen = ops.resolve(x, "bn_relu")
        assert chosen == ops.available_backends("cpu")[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ops.resolve(x, "bn_relu") == chosen  # the second time: no warning


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    _forget_choices(monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 3, 4, 4)
    with ops.use_backend("triton"), pytest.warns(RuntimeWarning, match="TRITON_INTERPRET=1"):
        assert ops.resolve(x, "bn_relu") != "triton"


def test_missing_extension_falls_back_to_reference_loudly(monkeypatch):
    from inception_fast import _ext

    _forget_choices(monkeypatch)
    monkeypatch.setattr(_ext, "LOAD_ERROR", "ImportError: pretend the build failed")
    x = torch.randn(2, 3, 4, 4)
    # "auto": the import said it once (tests/test_no_extension.py); a backend asked for by name says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.resolve(x, "bn_relu") == "reference"
    with ops.use_backend("cpu"), pytest.warns(RuntimeWarning, match="pretend the build failed"):
        assert ops.resolve(x, "bn_relu") == "reference"
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    y = ops.bn_relu(x, w, b, None, None, True, 0.1, 1e-5)
    torch.testing.assert_close(y, ops.bn_relu_reference(x, w, b, None, None, True, 0.1, 1e-5))


def test_environment_variable_sets_the_default():
    code = "import inception_fast.ops as o; print(o.get_backend())"
    env = dict(os.environ, INCEPTION_FAST_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["INCEPTION_FAST_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown inception_fast backend 'bogus'" in bad.stderr
