"""conv1x1 (a 1x1 convolution as one GEMM) vs the float64 F.conv2d reference: every device of this
machine, fp32/fp16/bf16, NCHW and channels_last, odd shapes and 1x1 maps, with and without bias,
forward and every gradient; opcheck; autocast; the strided weight of a k x k kernel's tap; bad
input; NaN."""
import pytest
import torch
import torch.nn.functional as F

from _helpers import LAYOUTS, assert_close, rand_act
from conftest import DEVICE_BACKEND_IDS, DEVICE_BACKENDS
from inception_fast import _ext, ops

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

DEVICES = sorted({d for d, _ in DEVICE_BACKENDS})
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, H, W, O): odd channel counts, a 1x1 map (the last grid at 75x75), a single image, the
# shapes of an Inception-ResNet block at 75x75.
SHAPES = [(3, 13, 5, 7, 11), (2, 9, 1, 1, 17), (1, 6, 4, 3, 5), (8, 1088, 3, 3, 192), (4, 448, 1, 1, 2080)]


def _op():
    return torch.ops.inception_fast.conv1x1.default


def _case(shape, dtype, layout, device, bias):
    n, c, h, w, o = shape
    x = rand_act((n, c, h, w), dtype, layout, device, 1.0, 0.1).requires_grad_()
    weight = (torch.randn(o, c, 1, 1, dtype=torch.float64) / c ** 0.5).to(device, dtype).requires_grad_()
    b = torch.randn(o, dtype=torch.float64).to(device, dtype).requires_grad_() if bias else None
    return x, weight, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference(device, dtype, layout, shape, bias):
    x, w, b = _case(shape, dtype, layout, device, bias)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    y = ops.conv1x1(x, w, b)
    ref = F.conv2d(x64, w64, b64)
    assert y.dtype == dtype and y.shape == ref.shape
    # channels_last in, channels_last out (a 1x1 map is both); NCHW in, NCHW out: no layout copy.
    assert y.is_contiguous(memory_format=LAYOUTS[layout])
    assert_close(y, ref, dtype, "forward")
    g = rand_act(tuple(ref.shape), dtype, layout, device, 1.0, 0.1)
    y.backward(g)
    ref.backward(g.double())
    assert_close(x.grad, x64.grad, dtype, "grad x")
    assert_close(w.grad, w64.grad, dtype, "grad weight")
    assert w.grad.shape == w.shape
    if bias:
        assert_close(b.grad, b64.grad, dtype, "grad bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("need", ["x", "weight", "bias"])
def test_only_the_needed_gradients(device, need):
    # The backward computes (and the forward saves) only what is asked for, and gets it right.
    x, w, b = _case((2, 7, 3, 3, 5), torch.float32, "cl", device, True)
    for t, name in ((x, "x"), (w, "weight"), (b, "bias")):
        t.requires_grad_(name == need)
    y = ops.conv1x1(x, w, b)
    g = rand_act(tuple(y.shape), torch.float32, "cl", device)
    y.backward(g)
    got = {"x": x, "weight": w, "bias": b}
    for name, t in got.items():
        assert (t.grad is not None) == (name == need), name
    ref_inputs = {name: t.detach().double().requires_grad_(name == need) for name, t in got.items()}
    F.conv2d(ref_inputs["x"], ref_inputs["weight"], ref_inputs["bias"]).backward(g.double())
    assert_close(got[need].grad, ref_inputs[need].grad, torch.float32, f"grad {need}")


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    for layout in LAYOUTS:
        x, w, b = _case((2, 5, 3, 2, 4), torch.float64, layout, device, True)
        assert torch.autograd.gradcheck(lambda x, w, b: _op()(x, w, b), (x, w, b))
        assert torch.autograd.gradcheck(lambda x, w: _op()(x, w, None), (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "cl")])
def test_opcheck(device, dtype, layout):
    x, w, b = _case((3, 5, 4, 6, 7), dtype, layout, device, True)
    for args in [(x, w, b), (x, w, None), (x.detach(), w, None), (x, w.detach(), b.detach())]:
        torch.library.opcheck(_op(), args)
    g = rand_act((3, 7, 4, 6), dtype, layout, device)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(torch.ops.inception_fast.conv1x1_backward.default, (g, x.detach(), w.detach(), mask))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_in_the_autocast_dtype(device):
    dtype = torch.bfloat16
    x, w, b = _case((2, 8, 3, 3, 6), torch.float32, "cl", device, True)
    with torch.autocast(device, dtype=dtype):
        y = ops.conv1x1(x, w, b)
        ref = F.conv2d(x, w, b)
    assert y.dtype == ref.dtype == dtype
    assert_close(y, ref.double(), dtype, "autocast forward")
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_strided_tap_of_a_kxk_weight(device):
    # What the fused path feeds it on a 1x1 map: the centre tap of a channels_last 3x3 weight, a
    # [O, C, 1, 1] view whose rows are 9*C apart. Its gradient lands in that tap only.
    x = rand_act((4, 6, 1, 1), torch.float32, "cl", device).requires_grad_()
    k = torch.randn(5, 6, 3, 3, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = ops.conv1x1(x, k[:, :, 1:2, 1:2])
    ref = F.conv2d(x.detach().double(), k.detach().double(), padding=1)
    assert_close(y, ref, torch.float32, "forward")
    y.sum().backward()
    assert k.grad[:, :, 1, 1].abs().sum() > 0
    assert (k.grad.sum((0, 1)) != 0).sum() == 1  # no other tap received anything


def test_bad_input_is_named():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="weight must be"):
        ops.conv1x1(x, torch.randn(5, 3, 1, 1))
    with pytest.raises(ValueError, match="weight must be"):
        ops.conv1x1(x, torch.randn(5, 4, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        ops.conv1x1(torch.randn(4, 3, 3), torch.randn(5, 4, 1, 1))
    with pytest.raises(TypeError, match="floating point"):
        ops.conv1x1(x.long(), torch.randn(5, 4, 1, 1))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.conv1x1(x, torch.randn(5, 4, 1, 1), torch.randn(4))
    # The C++ kernel checks again when called directly.
    with pytest.raises(RuntimeError, match="weight is"):
        _op()(x, torch.randn(5, 4, 1, 1, dtype=torch.float64), None)


def test_nan_in_nan_out():
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    x[1, 2, 0, 1] = float("nan")
    y = ops.conv1x1(x, torch.randn(5, 4, 1, 1))
    assert y[1, :, 0, 1].isnan().all() and not y[0].isnan().any()


def test_reference_backend_is_f_conv2d():
    x, w, b = _case((2, 5, 3, 3, 4), torch.float32, "cl", "cpu", True)
    with ops.use_backend("reference"):
        y = ops.conv1x1(x, w, b)
    assert torch.equal(y, F.conv2d(x, w, b))
