"""winograd_conv1d (a 1 x r or r x 1 stride-1 convolution, r = 7 or 3, as F(4, r), float32, CPU) vs conv2d in
float64: both axes, both kernel lengths, every padding, odd maps and maps shorter than a tile, channel counts
off the 16-lane vectors, NCHW, channels_last and channel-slice inputs, batches, maps split into several
chunks of tiles, bias and ReLU; NaN and inf reach at least every output they reach in the direct
convolution; winograd_weight1d; opcheck; where optimize() uses it (and where not); bad input."""
import copy
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import _ext, models, ops, optimize
from inception_fast.ops.winograd_conv1d import worth_it_axis

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

OPT = sys.modules["inception_fast.optimize"]
CL = torch.channels_last


def _case(n, c, h, w, k, r, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    shape = (k, c, 1, r) if dim == 3 else (k, c, r, 1)
    weight = torch.randn(shape, generator=g) / (r * c) ** 0.5
    bias = torch.randn(k, generator=g)
    return x, weight, bias


def _ref(x, weight, bias, dim, padding, relu):
    pad = (0, padding) if dim == 3 else (padding, 0)
    y = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), 1, pad)
    return y.relu() if relu else y


def _rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# F(4, 7) rounds ~4e-6 relative, F(4, 3) ~8e-7 (the direct float32 convolution ~2e-7)
TOL = {7: 2e-5, 3: 4e-6}
SHAPES = [(1, 64, 17, 17, 96), (2, 17, 9, 8, 33), (1, 3, 5, 7, 5), (3, 48, 8, 11, 64), (1, 32, 1, 13, 16)]
# every (shape, r, dim, padding) whose map the kernel fits along its axis
CASES = [(s, r, d, p) for s in SHAPES for r in (7, 3) for d in (2, 3) for p in sorted({0, r // 2, r - 1})
         if s[d] + 2 * p >= r]


def _id(v):
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape, r, dim, padding", CASES, ids=_id)
def test_matches_conv2d(shape, r, dim, padding, relu):
    n, c, h, w, k = shape
    x, weight, bias = _case(n, c, h, w, k, r, dim, seed=sum(shape) + 10 * r + dim + padding)
    ref = _ref(x, weight, bias, dim, padding, relu)
    u = ops.winograd_weight1d(weight)
    wide = torch.randn(n, c + 9, h, w).contiguous(memory_format=CL)
    wide[:, 4:4 + c] = x
    for layout, xi in (("nchw", x), ("cl", x.contiguous(memory_format=CL)), ("slice", wide[:, 4:4 + c])):
        y = ops.winograd_conv1d(xi, u, bias, dim, padding, relu)
        assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
        assert _rel(y, ref) < TOL[r], layout


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_maps_run_in_chunks_of_tiles(threads):
    # 8 x 35 x 9 tiles of 10 x (160 + 192) floats: 6 chunks of equal size; with 2 and 3 threads each chunk
    # in one block of tiles a thread (uneven blocks), with 1 the split form
    x, weight, bias = _case(8, 160, 35, 35, 192, 7, 2, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ops.winograd_conv1d(x.contiguous(memory_format=CL), ops.winograd_weight1d(weight), bias, 2, 3, True)
    finally:
        torch.set_num_threads(before)
    assert _rel(y, _ref(x, weight, bias, 2, 3, True)) < TOL[7]


def test_without_bias_and_without_input_channels():
    x, weight, _ = _case(1, 20, 6, 9, 24, 3, 3, seed=4)
    y = ops.winograd_conv1d(x, ops.winograd_weight1d(weight), None, 3, 1, False)
    assert _rel(y, _ref(x, weight, None, 3, 1, False)) < TOL[3]
    empty = ops.winograd_conv1d(torch.empty(1, 0, 5, 8), torch.empty(10, 0, 4), torch.tensor([1.0, -2.0, 3.0, -4.0]),
                                3, 3, True)
    assert torch.equal(empty, torch.tensor([1.0, 0.0, 3.0, 0.0]).view(1, 4, 1, 1).expand(1, 4, 5, 8))


@pytest.mark.parametrize("r", [7, 3])
def test_weight_transform(r):
    # U = G g is linear in g:
    # check linearity, the shapes and dtype, and that both orientations give the same U (the values are
    # checked through test_matches_conv2d)
    g = torch.randn(6, 5, 1, r, dtype=torch.float64)
    h = torch.randn(6, 5, 1, r, dtype=torch.float64)
    u = ops.winograd_weight1d(g)
    a = 10 if r == 7 else 6
    assert u.dtype == torch.float32 and u.shape == (a, 5, 6)
    both = ops.winograd_weight1d(2 * g - h).double()
    assert torch.allclose(both, 2 * u.double() - ops.winograd_weight1d(h).double(), atol=1e-5)
    assert torch.equal(ops.winograd_weight1d(g.transpose(2, 3)), u)
    assert torch.equal(ops.winograd_weight1d(g.float()), ops.winograd_weight1d(g.float().double()))  # float64 math


def test_nan_and_inf_reach_every_output_they_reach_directly():
    # (a NaN or inf in a tile's input makes its 4 outputs NaN or inf: more than the direct convolution's
    # window, never fewer)
    for r, dim in ((7, 3), (3, 2)):
        x, weight, bias = _case(1, 20, 13, 13, 18, r, dim, seed=5)
        x[0, 3, 4, 4] = float("nan")
        x[0, 7, 0, 12] = float("inf")
        y = ops.winograd_conv1d(x, ops.winograd_weight1d(weight), bias, dim, r // 2, True)
        direct = F.relu(F.conv2d(x, weight, bias, 1, (0, r // 2) if dim == 3 else (r // 2, 0)))
        assert not torch.isfinite(y[~torch.isfinite(direct)]).any()
        assert torch.isfinite(y).sum() > 0.5 * y.numel()


def test_opcheck():
    x, weight, bias = _case(2, 20, 6, 9, 24, 7, 3, seed=6)
    u = ops.winograd_weight1d(weight)
    x3, weight3, _ = _case(1, 20, 9, 5, 8, 3, 2, seed=7)
    u3 = ops.winograd_weight1d(weight3)
    for args in ((x, u, bias, 3, 3, True), (x.contiguous(memory_format=CL), u, None, 3, 0, False),
                 (x3, u3, None, 2, 1, True)):
        torch.library.opcheck(torch.ops.inception_fast.winograd_conv1d.default, args)
    torch.library.opcheck(torch.ops.inception_fast.winograd_weight1d.default, (weight,))


def test_bad_input_is_named():
    x, weight, bias = _case(1, 8, 9, 9, 4, 7, 3, seed=7)
    u = ops.winograd_weight1d(weight)
    with pytest.raises(TypeError, match="float32"):
        ops.winograd_conv1d(x.bfloat16(), u, bias)
    with pytest.raises(ValueError, match="make it with winograd_weight1d"):
        ops.winograd_conv1d(x, u[:, :4], bias)
    with pytest.raises(ValueError, match="dim must be 2"):
        ops.winograd_conv1d(x, u, bias, 1)
    with pytest.raises(ValueError, match=r"padding must be in \[0, 6\]"):
        ops.winograd_conv1d(x, u, bias, 3, 7)
    with pytest.raises(ValueError, match="shorter than the 7-tap kernel"):
        ops.winograd_conv1d(torch.randn(1, 8, 9, 3), u, bias, 3, 1)
    with pytest.raises(ValueError, match=r"\(K, C, 1, r\)"):
        ops.winograd_weight1d(torch.randn(4, 8, 1, 5))
    with pytest.raises(ValueError, match=r"\(K, C, 1, r\)"):
        ops.winograd_weight1d(torch.randn(4, 8, 3, 3))
    with pytest.raises(RuntimeError, match="bias must be a float32 CPU vector of 4"):
        torch.ops.inception_fast.winograd_conv1d(x, u, torch.randn(5), 3, 3, False)
    with pytest.raises(RuntimeError, match="u must be"):
        torch.ops.inception_fast.winograd_conv1d(x, torch.randn(7, 8, 4), None, 3, 3, False)


def _folded(c, k, kernel, padding):
    conv = nn.Conv2d(c, k, kernel, padding=padding)
    return OPT.FoldedConv(conv.weight.detach(), conv.bias.detach(), conv)


@pytest.mark.parametrize("c, k, kernel, padding, hw, n, dtype, wanted", [
    (192, 224, (1, 7), (0, 3), 17, 1, torch.float32, 3),    # v4's 17x17 blocks: 1.5-1.7x
    (224, 256, (7, 1), (3, 0), 17, 8, torch.float32, 2),
    (128, 128, (1, 7), (0, 3), 17, 1, torch.float32, 3),    # v3's 17x17 blocks
    (192, 224, (1, 3), (0, 1), 8, 1, torch.float32, 3),     # IR-v2's 8x8 blocks: 1.3-1.45x
    (448, 512, (3, 1), (1, 0), 8, 8, torch.float32, 2),     # v4's 8x8 blocks
    (192, 224, (1, 7), (0, 3), 5, 1, torch.float32, None),  # 5 outputs along the axis: less than two tiles
    (16, 32, (1, 7), (0, 3), 17, 1, torch.float32, None),   # narrow
    (192, 224, (1, 7), (3, 3), 17, 1, torch.float32, None),  # padding across the axis
    (192, 224, (1, 7), (0, 7), 17, 1, torch.float32, None),  # padding the op does not take (r or more)
    (192, 224, (1, 7), (0, 3), 17, 1, torch.bfloat16, None),  # float32 only
])
def test_optimize_takes_it_where_it_measured_faster(c, k, kernel, padding, hw, n, dtype, wanted):
    conv = _folded(c, k, kernel, padding)
    x = torch.empty(n, c, hw, hw, dtype=dtype)
    with torch.no_grad():
        assert (conv.algorithm(x) == "winograd_conv1d") is (wanted is not None)
    if dtype == torch.float32:
        assert worth_it_axis(tuple(x.shape), tuple(conv.weight.shape), conv.padding) == wanted


def test_optimize_runs_inception_v3s_1x7s_on_it(monkeypatch):
    calls = []
    real = ops.winograd_conv1d
    monkeypatch.setattr(ops, "winograd_conv1d", lambda x, u, b, dim, *a: calls.append(dim) or real(x, u, b, dim, *a))
    torch.manual_seed(0)
    model = models.create_model("inception_v3", num_classes=10).eval()
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        ref = copy.deepcopy(model).set_fused(False)(x)
    y = optimize(model, replay=False)(x)
    # the four 17x17 blocks' six 1x7 / 7x1 each, the 17x17 -> 8x8 reduction's two, the 8x8 blocks' four
    # 1x3 / 3x1 each: all of them
    assert calls.count(3) == calls.count(2) and len(calls) == 4 * 6 + 2 + 2 * 4
    assert ((y - ref).norm() / ref.norm()).item() < 1e-4
    calls.clear()
    optimize(model, dtype=torch.bfloat16, replay=False)(x)
    assert not calls  # float32 only
    monkeypatch.setattr(OPT.FoldedConv, "use_winograd1d", False)
    optimize(model, replay=False)(x)
    assert not calls
