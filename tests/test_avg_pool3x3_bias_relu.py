"""avg_pool3x3_bias_relu (the tail of optimize()'s average-pool branch in one C++ pass) vs the float64
composition relu(avg_pool2d(r, 3, 1, 1, count_include_pad) + bias): float32/bfloat16/float16, NCHW and
channels_last inputs, odd sizes and 1- and 2-pixel maps (every border case of the window), both
count_include_pad, a bias in float32 or the storage dtype or none; NaN kept; opcheck; where optimize()
uses it; bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F

from inception_fast import _ext, models, ops, optimize

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

SHAPES = [(2, 5, 7, 9), (1, 64, 35, 35), (3, 17, 1, 1), (2, 3, 2, 5), (1, 33, 8, 1), (2, 48, 17, 17)]
TOL = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def _r(shape, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.3).to(dtype)
    return r.contiguous(memory_format=torch.channels_last) if layout == "cl" else r


def _ref(r, bias, include_pad):
    y = F.avg_pool2d(r.double(), 3, 1, 1, count_include_pad=include_pad)
    return F.relu(y + bias.double().view(1, -1, 1, 1)) if bias is not None else F.relu(y)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("include_pad", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("bias", ["fp32", "same", "none"])
def test_matches_the_composition(shape, dtype, layout, include_pad, bias):
    r = _r(shape, dtype, layout)
    b = None if bias == "none" else (torch.randn(shape[1], generator=torch.Generator().manual_seed(1)) * 0.5).to(
        torch.float32 if bias == "fp32" else dtype)
    y = ops.avg_pool3x3_bias_relu(r, b, include_pad)
    ref = _ref(r, b, include_pad)
    assert y.shape == r.shape and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert (y.double() - ref).abs().max().item() <= TOL[dtype] * max(ref.abs().max().item(), 1.0)
    assert (y >= 0).all()  # the ReLU
    # the unfused ATen composition it replaces, in the storage dtype
    torch.testing.assert_close(y, ops.avg_pool3x3_bias_relu_reference(r, b, include_pad), rtol=2 * TOL[dtype],
                               atol=2 * TOL[dtype])


def test_nan_reaches_its_window_and_no_further():
    r = torch.rand(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    r[0, 2, 3, 3] = float("nan")
    y = ops.avg_pool3x3_bias_relu(r, torch.zeros(4), True)
    nan = y.isnan()
    assert nan[0, 2, 2:5, 2:5].all() and nan.sum() == 9  # channel 2's 3x3 neighbourhood only


@pytest.mark.parametrize("include_pad", [True, False])
def test_opcheck(include_pad):
    r = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.inception_fast.avg_pool3x3_bias_relu.default, (r, torch.randn(6), include_pad))
    torch.library.opcheck(torch.ops.inception_fast.avg_pool3x3_bias_relu.default,
                          (r.to(torch.bfloat16), None, include_pad))


def test_optimize_runs_the_pool_branch_on_it(monkeypatch):
    calls = []
    real = ops.avg_pool3x3_bias_relu
    monkeypatch.setattr(ops, "avg_pool3x3_bias_relu",
                        lambda *a: calls.append(a[2]) or real(*a))
    torch.manual_seed(0)
    model = models.create_model("inception_v3", num_classes=10, aux_logits=False).eval()
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        ref = copy.deepcopy(model).set_fused(False)(x)
    y = optimize(model, replay=False)(x)
    assert len(calls) == 9 and all(calls)  # Mixed_5b..7c: torchvision's pools count the padding
    assert ((y - ref).norm() / ref.norm()).item() < 1e-4


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="4-D"):
        ops.avg_pool3x3_bias_relu(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        ops.avg_pool3x3_bias_relu(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 channels"):
        ops.avg_pool3x3_bias_relu(torch.randn(1, 3, 8, 8), torch.randn(4))
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.inception_fast.avg_pool3x3_bias_relu(torch.randn(1, 3, 8, 8), torch.randn(2), True)
