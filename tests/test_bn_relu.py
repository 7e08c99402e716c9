"""bn_relu on every backend of this machine vs the float64 eager reference (F.batch_norm + relu)."""
import pytest
import torch
import torch.nn.functional as F

from _helpers import LAYOUTS, TOL, assert_close, rand_act, rel_err
from conftest import DEVICE_BACKEND_IDS, DEVICE_BACKENDS
from inception_fast import ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (shape, training): odd channel counts, H*W = 1, N = 1 in eval, batches a kernel splits unevenly.
SHAPES = [((4, 13, 7, 9), True), ((2, 13, 1, 1), True), ((1, 13, 1, 1), False), ((3, 5, 17, 17), True),
          ((2, 64, 9, 9), False), ((5, 3, 31, 33), True), ((1, 13, 6, 6), True)]


def _reference(x, w, b, rm, rv, training, momentum, eps):
    """float64 eager reference; returns output and the updated running stats (copies)."""
    rm = None if rm is None else rm.detach().double().clone()
    rv = None if rv is None else rv.detach().double().clone()
    y = F.relu(F.batch_norm(x, rm, rv, w, b, training, momentum, eps))
    return y, rm, rv


def _leaf(t, dtype=torch.float64):
    return None if t is None else t.detach().to(dtype).requires_grad_()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape,training", SHAPES, ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else str(s))
@pytest.mark.parametrize("affine", [True, False])
def test_bn_relu_matches_reference(device, backend, dtype, layout, shape, training, affine):
    C = shape[1]
    x = rand_act(shape, dtype, layout, device).requires_grad_()
    w = (torch.rand(C, device=device) + 0.5).requires_grad_() if affine else None
    b = torch.randn(C, device=device).requires_grad_() if affine else None
    rm = torch.randn(C, device=device) * 0.1
    rv = torch.rand(C, device=device) + 0.5
    momentum, eps = 0.1, 1e-3
    x64, w64, b64 = _leaf(x), _leaf(w), _leaf(b)
    y_ref, rm_ref, rv_ref = _reference(x64, w64, b64, rm, rv, training, momentum, eps)

    with ops.use_backend(backend):
        y = ops.bn_relu(x, w, b, rm, rv, training, momentum, eps)
    assert y.dtype == dtype and y.shape == x.shape
    if layout == "cl" and shape[2] * shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last), "output must keep the input's layout"
    assert_close(y, y_ref, dtype, "forward")
    assert_close(rm, rm_ref, torch.float32, "running_mean")
    assert_close(rv, rv_ref, torch.float32, "running_var")

    g = rand_act(shape, dtype, layout, device, scale=1.0, shift=0.1)
    y.backward(g)
    y_ref.backward(g.double())
    assert_close(x.grad, x64.grad, dtype, "grad x")
    if affine:
        assert_close(w.grad, w64.grad, dtype, "grad weight")
        assert_close(b.grad, b64.grad, dtype, "grad bias")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
def test_large_mean_small_std(device, backend):
    # |mean| >> std: a naive sum-of-squares variance would lose all its digits here.
    x = rand_act((8, 16, 12, 12), torch.float32, "nchw", device, scale=0.5, shift=300.0)
    for layout in LAYOUTS:
        xl = x.contiguous(memory_format=LAYOUTS[layout])
        with ops.use_backend(backend):
            mean, var = ops.bn_stats(xl)
        x64 = x.double()
        assert_close(mean, x64.mean((0, 2, 3)), torch.float32, "mean")
        assert_close(var, x64.var((0, 2, 3), unbiased=False), torch.float32, "var")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
@pytest.mark.parametrize("training", [True, False])
def test_nan_in_nan_out(device, backend, training):
    x = rand_act((2, 4, 5, 5), torch.float32, "nchw", device)
    x[1, 2, 3, 3] = float("nan")
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    with ops.use_backend(backend):
        y = ops.bn_relu(x, None, None, rm, rv, training, 0.1, 1e-5)
    if training:
        assert y[:, 2].isnan().all(), "a NaN in a channel makes that channel's statistics and outputs NaN"
        assert not y[:, [0, 1, 3]].isnan().any()
    else:
        assert y[1, 2, 3, 3].isnan() and y.isnan().sum() == 1


def test_gradcheck_float64():
    # The C++ kernels run float64 too, so the autograd formula is checked against finite differences.
    x = rand_act((3, 4, 3, 5), torch.float64, "nchw", "cpu").requires_grad_()
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64).requires_grad_()
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    backends = [bk for bk in ops.available_backends("cpu", torch.float64) if bk != "reference"]
    assert backends, "no compiled float64 kernel to check"
    for backend in backends:
        with ops.use_backend(backend):
            assert torch.autograd.gradcheck(lambda x, w, b: ops.bn_relu(x, w, b, None, None, True, 0.1, 1e-5),
                                            (x, w, b))
            assert torch.autograd.gradcheck(lambda x, w, b: ops.bn_relu(x, w, b, rm, rv, False, 0.1, 1e-5),
                                            (x, w, b))
            xl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            assert torch.autograd.gradcheck(lambda x: ops.bn_relu(x, w, b, None, None, True, 0.1, 1e-5), (xl,))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
def test_momentum_and_no_running_stats(device, backend):
    x = rand_act((4, 6, 5, 5), torch.float32, "cl", device)
    with ops.use_backend(backend):
        y = ops.bn_relu(x, None, None, None, None, True, 0.1, 1e-5)  # track_running_stats=False
        rm, rv = torch.zeros(6, device=device), torch.ones(6, device=device)
        for _ in range(3):
            ops.bn_relu(x, None, None, rm, rv, True, 0.3, 1e-5)
    rm_ref, rv_ref = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    for _ in range(3):
        F.batch_norm(x.double().cpu(), rm_ref, rv_ref, None, None, True, 0.3, 1e-5)
    assert_close(y, F.relu(F.batch_norm(x.double(), None, None, None, None, True, 0.1, 1e-5)), torch.float32)
    assert_close(rm, rm_ref, torch.float32, "running_mean")
    assert_close(rv, rv_ref, torch.float32, "running_var")


def test_combine_stats_matches_whole_batch():
    x = torch.randn(6, 5, 4, 4, dtype=torch.float64) * 3 + 7
    parts = [x[:1], x[1:4], x[4:]]
    mean = torch.stack([p.mean((0, 2, 3)) for p in parts])
    var = torch.stack([p.var((0, 2, 3), unbiased=False) for p in parts])
    count = torch.tensor([p.numel() // 5 for p in parts], dtype=torch.float64)
    m, v, n = ops.combine_stats(mean, var, count)
    assert int(n) == 6 * 16
    assert rel_err(m, x.mean((0, 2, 3))) < 1e-12 and rel_err(v, x.var((0, 2, 3), unbiased=False)) < 1e-12


@pytest.mark.parametrize("device,backend", [p for p in DEVICE_BACKENDS if p[1] != "reference"],
                         ids=[i for p, i in zip(DEVICE_BACKENDS, DEVICE_BACKEND_IDS) if p[1] != "reference"])
def test_with_stats_on_a_sub_batch(device, backend):
    # Statistics of the whole batch applied to half of it: the gradient w.r.t. that half equals the
    # whole-batch gradient's half once the per-channel sums are combined -- here (one process) the
    # halves are run one after the other and the sums of both go into each elementwise pass, which is
    # what the all-reduce does across processes.
    x = rand_act((4, 6, 5, 5), torch.float32, "nchw", device).requires_grad_()
    w = (torch.rand(6, device=device) + 0.5).requires_grad_()
    b = torch.randn(6, device=device).requires_grad_()
    g = rand_act((4, 6, 5, 5), torch.float32, "nchw", device, 1.0, 0.1)
    with ops.use_backend(backend):
        y_full = ops.bn_relu(x, w, b, None, None, True, 0.1, 1e-5)
        mean, var = ops.bn_stats(x)
        invstd = torch.rsqrt(var + 1e-5)
        y_half = ops.bn_relu_with_stats(x[:2], w, b, mean, invstd, 4 * 25)
    assert_close(y_half, y_full[:2], torch.float32, "forward with given stats")


# ---- bad input --------------------------------------------------------------------------------------
def _bad_cases(device):
    C = 4
    x = rand_act((2, C, 3, 3), torch.float32, "nchw", device)
    w, b = torch.ones(C, device=device), torch.zeros(C, device=device)
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    return [
        ("integer input", (x.long(), w, b, rm, rv, True), TypeError, "floating-point"),
        ("weight size", (x, torch.ones(C + 1, device=device), b, rm, rv, True), ValueError, "weight must have shape"),
        ("running_var size", (x, w, b, rm, torch.ones(2, device=device), False), ValueError, "running_var"),
        ("1-D input", (x.flatten(), w, b, rm, rv, True), ValueError, "4-D"),
        ("2-D input", (x.flatten(1), w, b, rm, rv, True), ValueError, "4-D"),
        ("3-D input", (x[0], w, b, rm, rv, True), ValueError, "4-D"),
        ("one value per channel", (x[:1, :, :1, :1], w, b, rm, rv, True), ValueError, "more than 1 value per channel"),
        ("weight on another device", (x, torch.ones(C, device="meta"), b, rm, rv, True), ValueError, "is on meta"),
        ("eval without running stats", (x, w, b, None, None, False), ValueError, "required when training=False"),
    ]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS, ids=DEVICE_BACKEND_IDS)
def test_bad_input_raises_clear_error(device, backend):
    for what, args, exc, msg in _bad_cases(device):
        with ops.use_backend(backend), pytest.raises(exc, match=msg):
            ops.bn_relu(*args, 0.1, 1e-5)


def test_kernels_check_their_inputs():
    # Called directly (torch.ops), the C++ kernels reject what the Python layer would have.
    x = torch.randn(2, 4, 3, 3)
    m, s = torch.zeros(4), torch.ones(4)
    apply = torch.ops.inception_fast.bn_relu_apply
    with pytest.raises(RuntimeError, match="4-D"):
        apply(x[0], None, None, m, s, True)
    with pytest.raises(RuntimeError, match="mean must have shape"):
        apply(x, None, None, torch.zeros(5), s, True)
    with pytest.raises(RuntimeError, match="float32, float16, bfloat16"):
        apply(x.int(), None, None, m, s, True)
    with pytest.raises(RuntimeError, match="invstd must be Float"):
        apply(x, None, None, m, s.double(), True)
    with pytest.raises(RuntimeError, match="contiguous in NCHW or channels_last"):
        apply(x.transpose(2, 3), None, None, m, s, True)
    with pytest.raises(RuntimeError, match="grad_out has shape"):
        torch.ops.inception_fast.bn_relu_backward_reduce(x[:1], x, None, None, m, s)
