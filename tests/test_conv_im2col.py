"""conv_im2col (a k x k convolution as im2col + GEMM, CPU) vs the float64 F.conv2d reference:
fp32/fp16/bf16, NCHW and channels_last inputs and weights, odd shapes, strides and paddings
(asymmetric ones, kernels wider than the map, 1x1 maps), with and without bias, forward and every
gradient; oneDNN's matmul and ATen's mm under it; opcheck; autocast; where the fused path uses it;
bad input; NaN."""
import pytest
import torch
import torch.nn.functional as F

from _helpers import LAYOUTS, assert_close, rand_act
from inception_fast import _ext, layers, ops
from inception_fast.ops.conv_im2col import worth_it

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, H, W, O, kernel, stride, padding): odd sizes; the 1x7 / 7x1 pairs of Inception-C and
# Block17 on the 3x3 grid (two of seven taps always in the padding); stride-2 reductions with and
# without padding; unequal strides and paddings; a 3x3 on a 1x1 map; Mixed_6a of v3 at 75x75.
SHAPES = [
    (3, 13, 5, 7, 11, (3, 3), (1, 1), (1, 1)),
    (2, 9, 3, 3, 17, (1, 7), (1, 1), (0, 3)),
    (2, 9, 3, 3, 8, (7, 1), (1, 1), (3, 0)),
    (1, 6, 7, 7, 5, (3, 3), (2, 2), (0, 0)),
    (2, 5, 4, 4, 6, (3, 3), (2, 2), (1, 1)),
    (3, 4, 6, 9, 5, (5, 3), (1, 2), (2, 1)),
    (2, 7, 1, 1, 4, (3, 3), (1, 1), (1, 1)),
    (8, 288, 7, 7, 384, (3, 3), (2, 2), (0, 0)),
]
IDS = ["x".join(map(str, s[:5])) + f"-k{s[5][0]}{s[5][1]}s{s[6][0]}{s[6][1]}p{s[7][0]}{s[7][1]}" for s in SHAPES]


def _op():
    return torch.ops.inception_fast.conv_im2col.default


def _case(shape, dtype, layout, bias, weight_layout="cl"):
    n, c, h, w, o, k, _, _ = shape
    x = rand_act((n, c, h, w), dtype, layout, "cpu", 1.0, 0.1).requires_grad_()
    weight = (torch.randn(o, c, *k, dtype=torch.float64) / (c * k[0] * k[1]) ** 0.5).to(dtype)
    weight = weight.contiguous(memory_format=LAYOUTS[weight_layout]).requires_grad_()
    b = torch.randn(o, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    return x, weight, b


def _check(shape, dtype, layout, bias, weight_layout="cl"):
    stride, padding = shape[6], shape[7]
    x, w, b = _case(shape, dtype, layout, bias, weight_layout)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    y = ops.conv_im2col(x, w, b, stride, padding)
    ref = F.conv2d(x64, w64, b64, stride=stride, padding=padding)
    assert y.dtype == dtype and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, ref, dtype, "forward")
    g = rand_act(tuple(ref.shape), dtype, "cl", "cpu", 1.0, 0.1)
    y.backward(g)
    ref.backward(g.double())
    assert_close(x.grad, x64.grad, dtype, "grad x")
    assert_close(w.grad, w64.grad, dtype, "grad weight")
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    if bias:
        assert_close(b.grad, b64.grad, dtype, "grad bias")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference(dtype, layout, shape, bias):
    _check(shape, dtype, layout, bias)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=IDS[:3])
def test_nchw_weight(shape):
    # A weight not in channels_last is reordered inside the op: same numbers, same gradient layout
    # as the parameter's (AccumulateGrad takes whatever comes).
    _check(shape, torch.float32, "cl", True, weight_layout="nchw")


@pytest.mark.parametrize("shape", SHAPES[:6], ids=IDS[:6])
@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_without_onednn(shape):
    # With oneDNN turned off the GEMMs run on ATen's mm: same checks.
    with torch.backends.mkldnn.flags(enabled=False):
        assert not torch.ops.inception_fast._onednn_matmul_available()
        _check(shape, torch.float32, "cl", True)


def test_onednn_matmul_used_where_it_can_be():
    # ATen's AVX-512 level implies the ISA oneDNN's float32 matmul asks for: then it must be in use,
    # not silently replaced by mm.
    if torch.backends.cpu.get_cpu_capability() != "AVX512":  # e.g. AVX2: then mm, with a warning
        pytest.skip(f"CPU capability {torch.backends.cpu.get_cpu_capability()}: oneDNN's fp32 matmul may refuse it")
    assert torch.ops.inception_fast._onednn_matmul_available()


@pytest.mark.parametrize("need", ["x", "weight", "bias"])
def test_only_the_needed_gradients(need):
    shape = SHAPES[1]
    x, w, b = _case(shape, torch.float32, "cl", True)
    for t, name in ((x, "x"), (w, "weight"), (b, "bias")):
        t.requires_grad_(name == need)
    y = ops.conv_im2col(x, w, b, shape[6], shape[7])
    g = rand_act(tuple(y.shape), torch.float32, "cl", "cpu")
    y.backward(g)
    got = {"x": x, "weight": w, "bias": b}
    for name, t in got.items():
        assert (t.grad is not None) == (name == need), name
    ref = {name: t.detach().double().requires_grad_(name == need) for name, t in got.items()}
    F.conv2d(ref["x"], ref["weight"], ref["bias"], stride=shape[6], padding=shape[7]).backward(g.double())
    assert_close(got[need].grad, ref[need].grad, torch.float32, f"grad {need}")


def test_gradcheck_float64():
    for shape in (SHAPES[0], SHAPES[4], SHAPES[5]):
        small = (2,) + shape[1:]
        x, w, b = _case(small, torch.float64, "cl", True)
        s, p = shape[6], shape[7]
        assert torch.autograd.gradcheck(lambda x, w, b: _op()(x, w, b, s, p), (x, w, b))


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "cl")])
def test_opcheck(dtype, layout):
    shape = (3, 5, 4, 6, 7, (3, 3), (2, 1), (1, 1))
    x, w, b = _case(shape, dtype, layout, True)
    s, p = shape[6], shape[7]
    for args in [(x, w, b), (x, w, None), (x.detach(), w, None), (x, w.detach(), b.detach())]:
        torch.library.opcheck(_op(), args + (s, p))
    g = rand_act((3, 7, 2, 6), dtype, "cl", "cpu")
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(torch.ops.inception_fast.conv_im2col_backward.default,
                              (g, x.detach(), w.detach(), s, p, mask))


def test_autocast_runs_in_the_autocast_dtype():
    shape = SHAPES[3]
    x, w, b = _case(shape, torch.float32, "cl", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv_im2col(x, w, b, shape[6], shape[7])
        ref = F.conv2d(x, w, b, stride=shape[6], padding=shape[7])
    assert y.dtype == ref.dtype == torch.bfloat16
    assert_close(y, ref.double(), torch.bfloat16, "autocast forward")
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_where_the_fused_path_uses_it():
    # worth_it's rule, and conv2d_fast following it: a 3x3 on the 3x3 grid and a stride-2 reduction
    # onto it run as conv_im2col, a 3x3 on a 17x17 map stays a convolution; same numbers either way.
    assert worth_it(3, 3, (1, 1)) and worth_it(7, 7, (2, 2)) and worth_it(1, 1, (1, 1))
    assert not worth_it(7, 7, (1, 1)) and not worth_it(17, 17, (2, 2))
    conv = torch.nn.Conv2d(6, 8, 3, padding=1, bias=False)
    layers.set_conv_weight_layout(conv, channels_last=True)
    for size, expect in ((3, True), (17, False)):
        x = torch.randn(2, 6, size, size)
        assert (layers._im2col_args(conv, x) is not None) == expect
        y = layers.conv2d_fast(conv, x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close(y, F.conv2d(x.double(), conv.weight.double(), padding=1), torch.float32, f"{size}x{size}")


def test_bad_input_is_named():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="weight must be"):
        ops.conv_im2col(x, torch.randn(5, 3, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        ops.conv_im2col(torch.randn(4, 3, 3), torch.randn(5, 4, 3, 3))
    with pytest.raises(TypeError, match="floating point"):
        ops.conv_im2col(x.long(), torch.randn(5, 4, 3, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.conv_im2col(x, torch.randn(5, 4, 3, 3), torch.randn(4))
    with pytest.raises(ValueError, match="does not fit"):
        ops.conv_im2col(x, torch.randn(5, 4, 5, 5))
    with pytest.raises(ValueError, match="stride must be"):
        ops.conv_im2col(x, torch.randn(5, 4, 3, 3), stride=(0, 1))
    # The C++ kernel checks again when called directly.
    with pytest.raises(RuntimeError, match="weight is"):
        _op()(x, torch.randn(5, 4, 3, 3, dtype=torch.float64), None, (1, 1), (1, 1))
    with pytest.raises(RuntimeError, match="does not fit"):
        _op()(x, torch.randn(5, 4, 7, 7), None, (1, 1), (1, 1))


def test_nan_in_nan_out():
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    x[1, 2, 0, 0] = float("nan")
    y = ops.conv_im2col(x, torch.randn(5, 4, 3, 3), None, (1, 1), (1, 1))
    assert y[1, :, :2, :2].isnan().all() and not y[1, :, 3:, 3:].isnan().any() and not y[0].isnan().any()


def test_reference_backend_is_f_conv2d():
    x, w, b = _case(SHAPES[0], torch.float32, "cl", True)
    with ops.use_backend("reference"):
        y = ops.conv_im2col(x, w, b, (1, 1), (1, 1))
    assert torch.equal(y, F.conv2d(x, w, b, padding=1))
