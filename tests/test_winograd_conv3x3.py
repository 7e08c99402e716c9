"""winograd_conv3x3 (a 3x3 stride-1 convolution as Winograd's F(2x2, 3x3), float32, CPU) vs conv2d in
float64: padding 0 and 1, NCHW, channels_last and channel-slice inputs, odd and even maps, 1-pixel outputs, channel counts off the 16-lane vectors,
batches, maps split into several chunks of tiles, bias and ReLU; NaN and inf reach at least every
output they reach in the direct convolution; winograd_weight; opcheck; where optimize() uses it (and where
not); bad input."""
import copy
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import _ext, models, ops, optimize

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

OPT = sys.modules["inception_fast.optimize"]
CL = torch.channels_last


def _case(n, c, h, w, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
    bias = torch.randn(k, generator=g)
    return x, weight, bias


def _rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


SHAPES = [(1, 64, 14, 14, 96), (2, 17, 9, 8, 33), (1, 3, 3, 3, 5), (3, 48, 7, 10, 64), (1, 32, 4, 5, 16),
          (1, 96, 2, 2, 40)]
# every (shape, padding) whose map the 3x3 kernel fits (a 2x2 map only with padding 1: a 2x2 output)
CASES = [(s, p) for s in SHAPES for p in (0, 1) if min(s[2:4]) + 2 * p >= 3]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape, padding", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else f"pad{v}")
def test_matches_conv2d(shape, padding, relu):
    n, c, h, w, k = shape
    x, weight, bias = _case(n, c, h, w, k, seed=sum(shape) + padding)
    wide = torch.randn(n, c + 9, h, w).contiguous(memory_format=CL)
    wide[:, 4:4 + c] = x  # a channel slice of a channels_last tensor, as a merged 1x1 convolution's output
    for layout, xi in (("nchw", x), ("cl", x.contiguous(memory_format=CL)), ("slice", wide[:, 4:4 + c])):
        y = ops.winograd_conv3x3(xi, ops.winograd_weight(weight), bias, padding, relu)
        ref = F.conv2d(x.double(), weight.double(), bias.double(), 1, padding)
        ref = ref.relu() if relu else ref
        assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
        assert _rel(y, ref) < 2e-6, layout  # the direct float32 convolution is ~3e-7 here


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_maps_run_in_chunks_of_tiles(threads):
    # 2 x 36 x 36 tiles of 80 + 96 channels: 5 chunks of up to 6 MiB of transformed input and products,
    # with 2 and 3 threads each chunk in one block of tiles a thread (uneven blocks), with 1 the split form
    x, weight, bias = _case(2, 80, 73, 73, 96, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ops.winograd_conv3x3(x.contiguous(memory_format=CL), ops.winograd_weight(weight), bias, 0, True)
    finally:
        torch.set_num_threads(before)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), 1, 0).relu()
    assert _rel(y, ref) < 2e-6


def test_without_bias_and_without_input_channels():
    x, weight, _ = _case(1, 20, 6, 6, 24, seed=4)
    y = ops.winograd_conv3x3(x, ops.winograd_weight(weight), None, 1, False)
    assert _rel(y, F.conv2d(x.double(), weight.double(), None, 1, 1)) < 2e-6
    empty = ops.winograd_conv3x3(torch.empty(1, 0, 5, 5), torch.empty(16, 0, 4), torch.tensor([1.0, -2.0, 3.0, -4.0]),
                                 1, True)
    assert torch.equal(empty, torch.tensor([1.0, 0.0, 3.0, 0.0]).view(1, 4, 1, 1).expand(1, 4, 5, 5))


def test_weight_transform():
    g = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    u = ops.winograd_weight(g)
    G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    expect = (G @ g @ G.T).permute(2, 3, 1, 0).reshape(16, 5, 7)
    assert u.dtype == torch.float32 and u.shape == (16, 5, 7) and torch.allclose(u.double(), expect, atol=1e-6)


def test_nan_and_inf_reach_every_output_they_reach_directly():
    # (a NaN or inf in a 4x4 input tile makes its whole 2x2 block of outputs NaN or inf: more than
    # the direct convolution's 3x3 neighbourhood, never fewer)
    x, weight, bias = _case(1, 20, 9, 9, 18, seed=5)
    x[0, 3, 4, 4] = float("nan")
    x[0, 7, 0, 8] = float("inf")
    y = ops.winograd_conv3x3(x, ops.winograd_weight(weight), bias, 1, True)
    direct = F.relu(F.conv2d(x, weight, bias, 1, 1))
    assert not torch.isfinite(y[~torch.isfinite(direct)]).any()
    assert torch.isfinite(y).sum() > 0.5 * y.numel()


def test_opcheck():
    x, weight, bias = _case(2, 20, 6, 7, 24, seed=6)
    u = ops.winograd_weight(weight)
    for args in ((x, u, bias, 1, True), (x.contiguous(memory_format=CL), u, None, 0, False)):
        torch.library.opcheck(torch.ops.inception_fast.winograd_conv3x3.default, args)


def test_bad_input_is_named():
    x, weight, bias = _case(1, 8, 5, 5, 4, seed=7)
    u = ops.winograd_weight(weight)
    with pytest.raises(TypeError, match="float32"):
        ops.winograd_conv3x3(x.bfloat16(), u, bias)
    with pytest.raises(ValueError, match="make it with winograd_weight"):
        ops.winograd_conv3x3(x, u[:, :4], bias)
    with pytest.raises(ValueError, match="padding must be 0 or 1"):
        ops.winograd_conv3x3(x, u, bias, 2)
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        ops.winograd_conv3x3(torch.randn(1, 8, 2, 5), u, bias, 0)
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        ops.winograd_weight(torch.randn(4, 8, 5, 5))
    with pytest.raises(RuntimeError, match="bias must be a float32 CPU vector of 4"):
        torch.ops.inception_fast.winograd_conv3x3(x, u, torch.randn(5), 1, False)


def _folded(c, k, padding=1):
    conv = nn.Conv2d(c, k, 3, padding=padding)
    return OPT.FoldedConv(conv.weight.detach(), conv.bias.detach(), conv)


@pytest.mark.parametrize("c, k, hw, n, dtype, wanted", [
    (64, 192, 56, 1, torch.float32, True),      # googlenet's conv3: 1.4-1.55x
    (32, 64, 147, 1, torch.float32, True),      # the v3 / v4 / IR-v2 stems: 1.2x
    (448, 384, 8, 1, torch.float32, True),      # v3's 8x8 blocks, 384+ channels: 1.1-1.2x
    (160, 320, 7, 1, torch.float32, False),     # 7x7 maps of fewer channels: 0.85-0.9x
    (160, 320, 7, 8, torch.float32, False),     # ... at batch 8 too: 0.97x
    (32, 96, 28, 8, torch.float32, True),       # 32 channels on 28x28: 1.08x
    (32, 128, 14, 8, torch.float32, False),     # 32 channels on 14x14: 0.86x
    (16, 32, 28, 1, torch.float32, False),      # narrow: 0.6x
    (24, 64, 14, 1, torch.float32, False),
    (64, 192, 56, 1, torch.bfloat16, False),    # float32 only
])
def test_optimize_takes_it_where_it_measured_faster(c, k, hw, n, dtype, wanted):
    conv = _folded(c, k)
    with torch.no_grad():
        assert (conv.algorithm(torch.empty(n, c, hw, hw, dtype=dtype)) == "winograd_conv3x3") is wanted


def test_optimize_runs_googlenets_3x3s_on_it(monkeypatch):
    calls = []
    real = ops.winograd_conv3x3
    monkeypatch.setattr(ops, "winograd_conv3x3", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a))
    torch.manual_seed(0)
    model = models.create_model("googlenet", num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = copy.deepcopy(model).set_fused(False)(x)
    y = optimize(model, replay=False)(x)
    assert len(calls) >= 8 and all(s[1] >= 32 and s[2] >= 14 for s in calls)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-4
    calls.clear()
    optimize(model, dtype=torch.bfloat16, replay=False)(x)
    assert not calls  # float32 only
    monkeypatch.setattr(OPT.FoldedConv, "use_winograd", False)
    optimize(model, replay=False)(x)
    assert not calls
