"""global_avg_pool (the classifier's pooling as optimize() runs it) vs x.mean((2, 3)), and KeptLinear
(the classifier on a kept oneDNN primitive) vs F.linear: every dtype, NCHW, channels_last and other
strides, channel counts around the vector width, maps larger than a summation chunk, 1-pixel and
empty maps; NaN and inf; opcheck; gradients through the reference; where optimize() uses them; bad
input."""
import copy
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import _ext, models, ops, optimize
from inception_fast.models import GlobalPool2d

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

CL = torch.channels_last
OPT = sys.modules["inception_fast.optimize"]
# |ours - exact| within this share of the largest |mean| (one rounding to the dtype, plus float32 sums)
TOL = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def _x(n, c, h, w, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) + 0.25).to(dtype)  # a non-zero mean: relative errors mean something
    if layout == "cl":
        return x.contiguous(memory_format=CL)
    if layout == "transposed":  # neither layout: H and W swapped in memory
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "slice":  # channels [2, 2 + c) of a wider channels_last map
        wide = torch.randn(n, c + 5, h, w, generator=g).to(dtype).contiguous(memory_format=CL)
        wide[:, 2:2 + c] = x
        return wide[:, 2:2 + c]
    return x


def _check(y, x):
    exact = x.double().mean((2, 3))
    assert y.dtype == x.dtype and y.shape == exact.shape and y.is_contiguous()
    scale = exact.abs().max().clamp_min(1e-30)
    assert ((y.double() - exact).abs().max() / scale).item() <= TOL[x.dtype]


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("layout", ["cl", "nchw", "transposed", "slice"])
@pytest.mark.parametrize("shape", [(1, 1024, 7, 7), (3, 37, 5, 3), (2, 80, 1, 1), (2, 16, 19, 17), (1, 7, 8, 8),
                                   (2, 65, 23, 29)], ids=lambda s: "x".join(map(str, s)))
def test_matches_mean(dtype, layout, shape):
    x = _x(*shape, dtype, layout, seed=sum(shape))
    y = ops.global_avg_pool(x)
    _check(y, x)
    if dtype in (torch.bfloat16, torch.float16):  # one rounding of a float32 sum: ATen's mean, but for rare ties
        assert (y != x.mean((2, 3))).float().mean().item() < 0.01


def test_chunked_sums_stay_accurate():
    # 90,000 pixels (hundreds of summation chunks) of a large offset: float32 sums without chunks drift
    x = _x(1, 48, 300, 300, torch.float32, "cl", 0) + 1000.0
    _check(ops.global_avg_pool(x), x)
    _check(ops.global_avg_pool(x.contiguous()), x.contiguous())


def test_nan_and_inf_stay_in_their_channel():
    x = _x(2, 40, 6, 6, torch.bfloat16, "cl", 1)
    x[1, 3, 2, 4] = float("nan")
    x[0, 33, 0, 0] = float("inf")
    y = ops.global_avg_pool(x)
    assert torch.isnan(y[1, 3]) and torch.isposinf(y[0, 33])
    assert torch.isfinite(y).sum().item() == y.numel() - 2


def test_empty():
    assert ops.global_avg_pool(torch.empty(0, 8, 3, 3)).shape == (0, 8)
    assert ops.global_avg_pool(torch.empty(2, 0, 3, 3)).shape == (2, 0)
    y = ops.global_avg_pool(torch.empty(2, 20, 0, 3).contiguous(memory_format=CL))
    assert y.shape == (2, 20) and torch.isnan(y).all()  # 0 / 0, as ATen's mean


def test_opcheck():
    for x in (_x(2, 40, 5, 7, torch.float32, "cl", 0), _x(2, 40, 5, 7, torch.bfloat16, "nchw", 1)):
        torch.library.opcheck(torch.ops.inception_fast.global_avg_pool.default, (x,))


def test_gradients_go_through_the_reference():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    ops.global_avg_pool(x).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 1 / 20))


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="must be a tensor"):
        ops.global_avg_pool([1.0])
    with pytest.raises(ValueError, match="4-D"):
        ops.global_avg_pool(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="floating point"):
        ops.global_avg_pool(torch.ones(1, 2, 3, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.inception_fast.global_avg_pool(torch.randn(2, 3))


# ---- KeptLinear --------------------------------------------------------------------------------

@pytest.mark.skipif(not _ext.onednn_loaded(), reason="inception_fast._onednn not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_kept_linear_matches_linear(dtype, bias, batch):
    torch.manual_seed(batch)
    lin = nn.Linear(200, 77, bias=bias).to(dtype)
    kept = OPT.KeptLinear(lin)
    assert list(kept.state_dict()) == list(lin.state_dict())
    x = torch.randn(batch, 200).to(dtype)
    with torch.no_grad():
        y, ref = kept(x), F.linear(x.double(), lin.weight.double(), None if lin.bias is None else lin.bias.double())
        y2 = kept(x)  # the packed weight, kept
    assert y.dtype == dtype and y.shape == (batch, 77) and torch.equal(y, y2)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((y.double() - ref).norm() / ref.norm()).item() < tol
    with torch.no_grad():
        lin.weight.mul_(2)
        kept.weight.mul_(2)  # a changed weight is packed again
        assert torch.allclose(kept(x).double(), 2 * (y.double() - (0 if lin.bias is None else lin.bias.double())) +
                              (0 if lin.bias is None else lin.bias.double()), rtol=tol, atol=tol)


def test_kept_linear_with_gradients_is_linear():
    lin = nn.Linear(10, 4)
    kept = OPT.KeptLinear(lin)
    x = torch.randn(3, 10, requires_grad=True)
    kept(x).sum().backward()
    assert kept.weight.grad is not None and torch.allclose(x.grad, lin.weight.sum(0).expand(3, 10))


@pytest.mark.parametrize("name", ["googlenet", "inception_v4", "bn_inception"])
def test_optimize_runs_the_head_on_them(monkeypatch, name):
    calls = []
    real = ops.global_avg_pool
    monkeypatch.setattr(ops, "global_avg_pool", lambda x: calls.append(tuple(x.shape)) or real(x))
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 75, 75) if name != "bn_inception" else torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = copy.deepcopy(model).set_fused(False)(x)
    om = optimize(model, replay=False)
    y = om(x)
    assert calls and isinstance(om.model.get_classifier(), OPT.KeptLinear)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-4
    # pre_logits still gives the pooled features
    with torch.no_grad():
        feats = om.forward_head(om.forward_features(x), pre_logits=True)
        ref_feats = copy.deepcopy(model).set_fused(False).forward_head(
            copy.deepcopy(model).set_fused(False).forward_features(x), pre_logits=True)
    assert ((feats - ref_feats).norm() / ref_feats.norm()).item() < 1e-4


def test_other_pool_types_are_left():
    model = models.create_model("inception_v3", num_classes=5, global_pool="max").eval()
    om = optimize(model, replay=False)
    pool = om.model.global_pool if hasattr(om.model, "global_pool") else om.model.avgpool
    assert type(pool) is GlobalPool2d and pool.pool_type == "max"
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        ref = copy.deepcopy(model).set_fused(False)(x)
    assert ((om(x) - ref).norm() / ref.norm()).item() < 1e-4
