"""max_pool (2-D max pooling without the index tensor, CPU) vs ATen's F.max_pool2d: the output bit
for bit (a maximum is exact in any dtype; on maps of zeros of both signs, the values) and the
gradient routed to the same element (ties, NaN, -inf windows included), fp32/fp16/bf16/fp64, NCHW
and channels_last, channel counts that are not multiples of the vector width, every pool of the six
models and odd ones (ceil_mode, padding, unequal kernels and strides); gradcheck; opcheck; where the
models use it; bad input."""
import pytest
import torch
import torch.nn.functional as F

from _helpers import LAYOUTS, assert_close
from inception_fast import _ext, layers, ops
from inception_fast.ops.max_pool import output_size

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (N, C, H, W, kernel, stride, padding, ceil_mode): GoogLeNet's stem pools (3/2 ceil, 2/2 ceil) and
# branch pool (3/1 pad 1 ceil), v3/v4/IR's 3/2 pools, BN-Inception's; channel counts below, at and
# past the 16-lane vectors and the 64-channel blocks of the backward; ceil_mode windows that would
# start in the padding; unequal kernels, strides and paddings; a window as large as the map.
SHAPES = [
    (2, 37, 13, 11, (3, 3), (2, 2), (0, 0), True),
    (3, 64, 12, 12, (3, 3), (1, 1), (1, 1), True),
    (2, 83, 9, 9, (3, 3), (2, 2), (0, 0), False),
    (1, 5, 7, 8, (2, 3), (1, 2), (1, 1), True),
    (2, 16, 6, 6, (2, 2), (2, 2), (0, 0), True),
    (2, 19, 7, 7, (3, 3), (2, 2), (1, 1), True),
    (1, 130, 5, 5, (5, 5), (1, 1), (2, 2), False),
    (2, 3, 3, 3, (3, 3), (3, 3), (0, 0), False),
]
IDS = ["x".join(map(str, s[:4])) + f"-k{s[4][0]}{s[4][1]}s{s[5][0]}{s[5][1]}p{s[6][0]}{s[6][1]}" + ("c" if s[7] else "")
       for s in SHAPES]


def _x(shape, dtype, layout, relu=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape[:4], generator=g, dtype=torch.float64)
    if relu:  # many exact ties at zero, as after a ReLU
        x = x.relu()
    return x.to(dtype).contiguous(memory_format=LAYOUTS[layout])


def _args(shape):
    return shape[4], shape[5], shape[6], shape[7]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("relu", [False, True], ids=["randn", "relu"])
def test_matches_aten(shape, dtype, layout, relu):
    k, s, p, c = _args(shape)
    x = _x(shape, dtype, layout, relu)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ops.max_pool(xa, k, s, p, c)
    ref = F.max_pool2d(xb, k, s, p, ceil_mode=c)
    assert y.shape == ref.shape == (shape[0], shape[1], *output_size(shape[2:4], k, s, p, c))
    assert y.dtype == dtype and y.is_contiguous(memory_format=LAYOUTS[layout])
    assert torch.equal(y, ref)
    g = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
    y.backward(g)
    ref.backward(g)
    assert xa.grad.is_contiguous(memory_format=LAYOUTS[layout])
    # Same element for every window: against ATen's gradient computed in float64 from the same values.
    x64 = x.double().requires_grad_()
    F.max_pool2d(x64, k, s, p, ceil_mode=c).backward(g.double())
    assert_close(xa.grad, x64.grad, dtype, "grad x")
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(xa.grad != 0, xb.grad != 0)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nan_and_inf(layout, dtype):
    # NaN in a window gives NaN, and its gradient goes where ATen's index points (the last NaN);
    # a window of -inf gives -inf, its gradient to the window's first element.
    x = _x((2, 40, 9, 9), dtype, layout).clone()
    x[0, 3, 2, 2] = float("nan")
    x[0, 3, 2, 3] = float("nan")
    x[1, 33, 5, 5] = float("nan")
    x[1, 7, :3, :3] = float("-inf")
    x[0, 20, 4, 4] = float("inf")
    for k, s, p, c in [(3, 1, 1, True), (3, 2, 0, True), (2, 2, 0, False)]:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, ref = ops.max_pool(xa, k, s, p, c), F.max_pool2d(xb, k, s, p, ceil_mode=c)
        assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()
        assert torch.equal(y.nan_to_num(0.0, 1e30, -1e30), ref.nan_to_num(0.0, 1e30, -1e30))
        g = torch.rand(ref.shape).to(dtype) + 0.5
        y.backward(g)
        ref.backward(g)
        assert torch.equal(xa.grad != 0, xb.grad != 0)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zeros_of_both_signs(layout, dtype):
    # oneDNN's ReLU post-op writes -0 for negative inputs (0 * x), eager's +0: maps of mixed zeros and
    # negatives, whose windows' maximum is a zero held with both signs. The value is ATen's; only the
    # sign of a zero may differ (the 16-bit kernels order -0 below +0, the separable float32 one keeps
    # the first zero of its own scan), and the gradient still goes to one zero of the window.
    g = torch.Generator().manual_seed(5)
    x = -torch.rand(2, 70, 10, 9, generator=g, dtype=torch.float64)
    signs = torch.randint(0, 3, x.shape, generator=g)
    x = torch.where(signs == 0, 0.0, torch.where(signs == 1, -0.0, x)).to(dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    for k, s, p, c in [(3, 1, 1, True), (3, 2, 0, True), (2, 3, 1, False)]:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, ref = ops.max_pool(xa, k, s, p, c), F.max_pool2d(xb, k, s, p, ceil_mode=c)
        assert torch.equal(y, ref) and (ref == 0).float().mean() > 0.5
        y.sum().backward()
        ref.sum().backward()
        assert xa.grad.sum() == xb.grad.sum() == y.numel()


def test_gradcheck():
    for layout in ("nchw", "cl"):
        # Distinct values (no ties: gradcheck's finite differences would straddle them).
        x = torch.randperm(2 * 18 * 7 * 6, dtype=torch.float64).view(2, 18, 7, 6) / 100
        x = x.contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: ops.max_pool(t, 3, 2, 1, True), (x,))
        assert torch.autograd.gradcheck(lambda t: ops.max_pool(t, (2, 3), (1, 2), (1, 1), False), (x,))


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck(layout, dtype):
    x = _x((3, 21, 7, 9), dtype, layout).requires_grad_()
    op = torch.ops.inception_fast.max_pool.default
    torch.library.opcheck(op, (x, [3, 3], [2, 2], [1, 1], True))
    torch.library.opcheck(op, (x, [2, 3], [1, 2], [0, 1], False))
    g = _x((3, 21, 4, 5), dtype, layout, seed=1)
    torch.library.opcheck(torch.ops.inception_fast.max_pool_backward.default,
                          (g, x.detach(), [3, 3], [2, 2], [1, 1], True))


def test_compile():
    x = _x((2, 24, 11, 11), torch.float32, "cl")
    fn = torch.compile(lambda t: ops.max_pool(t, 3, 2, 0, True) * 2, fullgraph=True, backend="aot_eager")
    assert torch.equal(fn(x), F.max_pool2d(x, 3, 2, 0, ceil_mode=True) * 2)


def test_bad_input():
    x = _x((2, 8, 7, 7), torch.float32, "cl")
    with pytest.raises(TypeError, match="floating point"):
        ops.max_pool(torch.ones(2, 8, 7, 7, dtype=torch.int32), 3, 2)
    with pytest.raises(ValueError, match="4-D"):
        ops.max_pool(x[0], 3, 2)
    with pytest.raises(ValueError, match="half the kernel"):
        ops.max_pool(x, 3, 1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        ops.max_pool(x[:, :, :2, :2], 3, 2)
    with pytest.raises(ValueError, match="positive"):
        ops.max_pool(x, 3, 0)
    with pytest.raises(ValueError, match="two ints"):
        ops.max_pool(x, (3, 3, 3), 2)
    # The C++ op itself names the problem too.
    with pytest.raises(RuntimeError, match="does not fit"):
        torch.ops.inception_fast.max_pool(torch.randn(2, 8, 2, 2), [3, 3], [2, 2], [0, 0], False)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.inception_fast.max_pool(x[:, :, ::2], [3, 3], [1, 1], [1, 1], False)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.inception_fast.max_pool_backward(x, x, [3, 3], [2, 2], [0, 0], False)


def test_empty_batch():
    x = torch.randn(0, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    assert ops.max_pool(x, 3, 2).shape == (0, 8, 3, 3)


def test_reference_backend():
    x = _x((2, 8, 7, 7), torch.float32, "cl")
    with ops.use_backend("reference"):
        assert torch.equal(ops.max_pool(x, 3, 2, 0, True), F.max_pool2d(x, 3, 2, 0, ceil_mode=True))


def _count_op_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "inception_fast::max_pool")


def test_layer_uses_op_for_inference_only():
    pool = layers.MaxPool2d(3, stride=2, ceil_mode=True)
    x = _x((2, 24, 11, 11), torch.float32, "cl")
    with torch.no_grad():
        assert _count_op_calls(lambda: pool(x)) == 1
        pool.fused = False
        assert _count_op_calls(lambda: pool(x)) == 0
        pool.fused = None
    xr = x.clone().requires_grad_()
    assert _count_op_calls(lambda: pool(xr)) == 0  # a training step keeps ATen's (see _max_pool_fast)
    with torch.no_grad():
        assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 0, ceil_mode=True))
        assert _count_op_calls(lambda: layers.max_pool2d(x, 3, 2, fused=False)) == 0
        assert _count_op_calls(lambda: layers.max_pool2d(x, 3, 2)) == 1
    assert isinstance(pool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3", "inception_resnet_v2", "bn_inception"])
def test_models_and_optimize_use_it(name):
    from inception_fast import models, optimize

    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        calls = _count_op_calls(lambda: model(x))
        assert calls > 0
        ref = model.set_fused(False)(x)
    fast = optimize(model)
    assert _count_op_calls(lambda: fast(x)) == calls
    assert_close(fast(x), ref, torch.float32, "optimize()")
