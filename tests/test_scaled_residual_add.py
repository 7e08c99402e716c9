"""scaled_residual_add on every backend of this machine vs the float64 eager reference."""
import pytest
import torch

from _helpers import LAYOUTS, assert_close, rand_act
from conftest import DEVICE_BACKEND_IDS, DEVICE_BACKENDS
from inception_fast import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(4, 13, 7, 9), (1, 13, 1, 1), (2, 320, 35, 35), (3, 1088, 17, 17), (1, 7, 3, 1)]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale,relu", [(0.17, True), (0.1, True), (0.2, False)])
def test_matches_reference(device, backend, dtype, layout, shape, scale, relu):
    x = rand_act(shape, dtype, layout, device, 1.0, 0.0).requires_grad_()
    r = rand_act(shape, dtype, layout, device, 3.0, -0.2).requires_grad_()
    x64, r64 = x.detach().double().requires_grad_(), r.detach().double().requires_grad_()
    ref = x64 + scale * r64
    ref = ref.relu() if relu else ref
    # Where x + scale * r is 0 to within the rounding of the scale itself (x = -0.1 * r happens with
    # bf16 inputs), the ReLU gradient is undefined: a kernel taking the scale as float32 and one
    # taking it as float64 legitimately disagree. Those points get no incoming gradient.
    scale32 = float(torch.tensor(scale, dtype=torch.float32))
    z32 = x64.detach() + scale32 * r64.detach()
    knife_edge = (z32 > 0) != (ref.detach() > 0) if relu else torch.zeros_like(z32, dtype=torch.bool)
    with ops.use_backend(backend):
        y = ops.scaled_residual_add(x, r, scale, relu)
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    assert_close(y, ref, dtype, "forward")
    if backend == "reference" and dtype != torch.float32:
        # Eager rounds r * scale and the sum to bf16/fp16 before the ReLU, so its mask flips wherever
        # |x + scale * r| is below that rounding (~5% gradient error here); the fused kernels add in
        # float32 and are held to the tolerance below.
        return
    g = rand_act(shape, dtype, layout, device, 1.0, 0.1).masked_fill(knife_edge.to(device), 0)
    y.backward(g)
    ref.backward(g.double())
    assert_close(x.grad, x64.grad, dtype, "grad x")
    assert_close(r.grad, r64.grad, dtype, "grad residual")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
def test_mixed_layouts_and_views(device, backend):
    # residual in another memory format than x, and a non-contiguous x: still the same numbers.
    x = rand_act((2, 6, 5, 5), torch.float32, "cl", device)
    r = rand_act((2, 6, 5, 5), torch.float32, "nchw", device)
    xt = rand_act((2, 6, 5, 7), torch.float32, "nchw", device)[..., 1:6]
    with ops.use_backend(backend):
        y1 = ops.scaled_residual_add(x, r, 0.17)
        y2 = ops.scaled_residual_add(xt, r, 0.1, False)
    assert_close(y1, (x.double() + 0.17 * r.double()).relu(), torch.float32)
    assert_close(y2, xt.double() + 0.1 * r.double(), torch.float32)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
def test_nan_in_nan_out(device, backend):
    x = rand_act((2, 3, 4, 4), torch.float32, "nchw", device)
    r = rand_act((2, 3, 4, 4), torch.float32, "nchw", device)
    x[0, 1, 2, 2] = float("nan")
    r[1, 0, 0, 3] = float("nan")
    with ops.use_backend(backend):
        for relu in (True, False):
            y = ops.scaled_residual_add(x, r, 0.2, relu)
            assert y[0, 1, 2, 2].isnan() and y[1, 0, 0, 3].isnan() and y.isnan().sum() == 2


def test_gradcheck_float64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    for backend in [b for b in ops.available_backends("cpu", torch.float64) if b != "reference"]:
        with ops.use_backend(backend):
            for relu in (True, False):
                assert torch.autograd.gradcheck(lambda x, r: ops.scaled_residual_add(x, r, 0.17, relu), (x, r))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
def test_bad_input_raises_clear_error(device, backend):
    x = rand_act((2, 4, 3, 3), torch.float32, "nchw", device)
    cases = [
        ((x, x[:, :3]), ValueError, "same shape|must match"),
        ((x, x.half()), TypeError, "dtype"),
        ((x.long(), x.long()), TypeError, "floating-point"),
        ((x, torch.empty_like(x, device="meta")), ValueError, "is on meta"),
        ((x, 1.0), TypeError, "must be a Tensor"),
    ]
    for args, exc, msg in cases:
        with ops.use_backend(backend), pytest.raises(exc, match=msg):
            ops.scaled_residual_add(*args, 0.17)


def test_kernel_checks_its_inputs():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="residual has shape"):
        torch.ops.inception_fast.scaled_residual_add(x, x[:1], 0.1, True)
    with pytest.raises(RuntimeError, match="residual has strides"):
        torch.ops.inception_fast.scaled_residual_add(x, x.contiguous(memory_format=torch.channels_last), 0.1, True)
    with pytest.raises(RuntimeError, match="dense and non-overlapping"):
        torch.ops.inception_fast.scaled_residual_add(x[..., ::2], x[..., ::2], 0.1, True)
