"""torch.library.opcheck on every op of every namespace this machine can run: schema, fake
kernel, autograd registration and AOT dispatch (what torch.compile relies on)."""
import pytest
import torch
import torch.nn.functional as F

from _helpers import rand_act
from conftest import DEVICE_BACKEND_IDS, DEVICE_BACKENDS
from inception_fast.ops._library import namespace

KERNEL_BACKENDS = [(d, b) for d, b in DEVICE_BACKENDS if b != "reference"]
KERNEL_IDS = [i for (d, b), i in zip(DEVICE_BACKENDS, DEVICE_BACKEND_IDS) if b != "reference"]


def _samples(device, dtype, layout):
    C = 5
    x = rand_act((3, C, 4, 6), dtype, layout, device)
    g = rand_act((3, C, 4, 6), dtype, layout, device, 1.0, 0.1)
    f = dict(device=device, dtype=torch.float32)
    w, b = torch.rand(C, **f) + 0.5, torch.randn(C, **f)
    mean, invstd = torch.randn(C, **f), torch.rand(C, **f) + 0.5
    s1, s2 = torch.randn(C, **f), torch.randn(C, **f)
    rg = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    return {
        "bn_stats": [(x,)],
        "bn_relu_apply": [(rg(x), rg(w), rg(b), mean, invstd, True), (rg(x), None, None, mean, invstd, False),
                          (rg(x), rg(w), None, mean, invstd, False)],
        "bn_relu_backward_reduce": [(g, x, w, b, mean, invstd), (g, x, None, None, mean, invstd)],
        "bn_relu_backward_elemt": [(g, x, w, b, mean, invstd, s1, s2, 72), (g, x, w, b, mean, invstd, None, None, 0)],
        "scaled_residual_add": [(rg(x), rg(g), 0.17, True), (rg(x), rg(g), 0.2, False)],
        "scaled_residual_add_backward": [(g, x.relu(), 0.1, True), (g, x, 0.1, False)],
    }


@pytest.mark.parametrize("device,backend", KERNEL_BACKENDS, ids=KERNEL_IDS)
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "cl")])
@pytest.mark.parametrize("op", ["bn_stats", "bn_relu_apply", "bn_relu_backward_reduce", "bn_relu_backward_elemt",
                                "scaled_residual_add", "scaled_residual_add_backward"])
def test_opcheck(device, backend, dtype, layout, op):
    overload = getattr(namespace(backend), op)  # the .default OpOverload
    for args in _samples(device, dtype, layout)[op]:
        torch.library.opcheck(overload, args)


@pytest.mark.parametrize("device", sorted({d for d, b in KERNEL_BACKENDS if b != "triton"}))
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "cl")])
def test_opcheck_bn_relu_train(device, dtype, layout):
    # The C++ namespace's one-call training forward (the running statistics mutated in place).
    C = 5
    x = rand_act((3, C, 4, 6), dtype, layout, device)
    f = dict(device=device, dtype=torch.float32)
    w, b = torch.rand(C, **f) + 0.5, torch.randn(C, **f)
    rm, rv = torch.randn(C, **f), torch.rand(C, **f) + 0.5
    overload = namespace("cpu").bn_relu_train
    for args in [(x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(), rm.clone(),
                  rv.clone(), 0.1, 1e-5),
                 (x.clone().requires_grad_(), None, None, None, None, 0.1, 1e-3)]:
        torch.library.opcheck(overload, args)


@pytest.mark.parametrize("device", sorted({d for d, b in KERNEL_BACKENDS if b != "triton"}))
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "cl"),
                                          (torch.float64, "cl")])
@pytest.mark.parametrize("stats_dtype", [None, torch.bfloat16], ids=["stats-acc", "stats-bf16"])
def test_bn_stats_train(device, dtype, layout, stats_dtype):
    # The statistics step of bn_relu_train (one call on the CPU): what nn.BatchNorm2d computes --
    # batch mean, rsqrt(var + eps), running statistics moved by momentum towards the batch's (the
    # variance unbiased) -- also with running statistics in another dtype than the arithmetic's; and
    # opcheck (schema, fake kernel, the in-place mutation).
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels take float16, bfloat16 and float32, not float64 (ops/_backend.py)")
    C, momentum, eps = 5, 0.1, 1e-3
    x = rand_act((3, C, 4, 6), dtype, layout, device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    f = dict(device=device, dtype=stats_dtype or acc)
    rm, rv = torch.randn(C, **f), torch.rand(C, **f) + 0.5
    ref_m, ref_v = rm.clone().to(acc), rv.clone().to(acc)
    F.batch_norm(x.to(acc), ref_m, ref_v, None, None, True, momentum, eps)
    mean, invstd = namespace("cpu").bn_stats_train(x, rm, rv, momentum, eps)
    xd = x.double()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(mean.double(), xd.mean((0, 2, 3)), rtol=tol, atol=tol)
    torch.testing.assert_close(invstd.double(), (xd.var((0, 2, 3), unbiased=False) + eps).rsqrt(), rtol=tol, atol=tol)
    stol = 1e-2 if stats_dtype == torch.bfloat16 else tol
    torch.testing.assert_close(rm.to(acc), ref_m.to(stats_dtype or acc).to(acc), rtol=stol, atol=stol)
    torch.testing.assert_close(rv.to(acc), ref_v.to(stats_dtype or acc).to(acc), rtol=stol, atol=stol)
    torch.library.opcheck(namespace("cpu").bn_stats_train, (x, rm.clone(), rv.clone(), momentum, eps))
    torch.library.opcheck(namespace("cpu").bn_stats_train, (x, None, None, momentum, eps))
