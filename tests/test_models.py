"""The six models against their peers, on both paths.

- the peer's random weights (BN running stats and affine parameters randomised too) load into ours
  with strict=True, the key order is the peer's, and ours loads back into the peer;
- eval outputs equal the peer's (rel. err < 1e-5, fp32) at the native input and at a small one, on
  the reference and on the fused path;
- a training step on the fused path gives the reference path's loss and gradients;
- channels_last and bf16 autocast inputs, torch.compile (no graph break) and torch.export work.

A peer that cannot be imported skips its cases with the reason (facenet-pytorch and pretrainedmodels
pin ancient torch versions: install them with `pip install --no-deps facenet-pytorch pretrainedmodels`).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from _helpers import rel_err
from _peers import CASE_IDS, CASES, MODEL_CASES, MODEL_IDS, pair, randomise
from inception_fast import models, use_fused


def test_list_models():
    assert models.list_models() == sorted(["googlenet", "bn_inception", "inception_v3", "inception_v4",
                                           "inception_resnet_v1", "inception_resnet_v2"])
    assert models.list_models("inception_resnet*") == ["inception_resnet_v1", "inception_resnet_v2"]
    with pytest.raises(ValueError, match="unknown model 'inception_v5'.*googlenet"):
        models.create_model("inception_v5")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_is_the_peers(case):
    peer, ours = pair(case)
    assert list(ours.state_dict()) == list(peer.state_dict())
    for k, v in peer.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k
    back = copy.deepcopy(peer)
    back.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("size", ["native", "small"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_peer(case, size, fused):
    peer, ours = pair(case)
    side = case.native if size == "native" else case.small
    if side is None:
        pytest.skip(f"{case.name}'s peer runs only at {case.native}x{case.native} (see test_small_input_paths_agree)")
    x = torch.randn(2, 3, side, side)
    with torch.no_grad(), use_fused(fused):
        y, ref = ours(x), peer(x)
    assert y.shape == ref.shape
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_small_input_paths_agree(case):
    # At the model's smallest input: the fused path gives the reference path's numbers.
    _, ours = pair(case)
    side = ours.min_input_size
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        with use_fused(False):
            ref = ours(x)
        with use_fused(True):
            y = ours(x)
    assert torch.isfinite(ref).all()
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_too_small_input_names_the_minimum(case):
    _, ours = pair(case)
    m = ours.min_input_size
    assert ours.pretrained_cfg["min_input_size"][-1] == m
    with pytest.raises(ValueError, match=f"at least {m}x{m}"):
        ours(torch.randn(1, 3, m - 1, m + 10))
    with pytest.raises(ValueError, match="4-D"):
        ours(torch.randn(3, m, m))
    with pytest.raises(ValueError, match="input channels"):
        ours(torch.randn(1, 1, m, m))
    with pytest.raises(TypeError, match="floating-point"):
        ours(torch.randint(0, 255, (1, 3, m, m), dtype=torch.uint8))


def _train_step(model, x, target, fused):
    model.train()
    with use_fused(fused):
        out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    loss = F.cross_entropy(logits, target)
    if isinstance(out, tuple):  # the auxiliary heads, with the papers' weight
        loss = loss + sum(0.3 * F.cross_entropy(a, target) for a in out[1:] if a is not None)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _train_setup(case, dtype):
    torch.manual_seed(0)
    kwargs = {**case.kwargs, **case.train_kwargs, "num_classes": 10}
    model = randomise(models.create_model(case.name, **kwargs)).to(dtype)
    for m in model.modules():  # dropout would draw different masks on the two runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.randn(4, 3, case.own_small, case.own_small, dtype=dtype)
    return model, x, torch.randint(0, 10, (4,))


def _grad_errors(grads, ref):
    """Per-parameter ||g - ref||, relative to the parameter's gradient norm or, for a gradient that is
    zero in exact arithmetic (Inception-ResNet-v2's block8.conv2d.bias: a per-channel constant that
    the next training-mode BatchNorm removes), to 1e-6 of the largest gradient."""
    floor = 1e-6 * max(g.norm().item() for g in ref.values())
    return {n: (grads[n] - g).norm().item() / max(g.norm().item(), floor) for n, g in ref.items()}


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_training_step_fused_matches_reference_float64(case):
    # In float64 rounding is too small to flip a ReLU mask, so the two paths must agree closely on
    # the loss, every gradient and the updated BN running statistics: a wrong backward shows at once.
    ref, x, target = _train_setup(case, torch.float64)
    fused = copy.deepcopy(ref)
    loss_r, g_r = _train_step(ref, x, target, False)
    loss_f, g_f = _train_step(fused, x, target, True)
    assert rel_err(loss_f, loss_r) < 1e-9
    assert all(g is not None for g in g_r.values()) and all(g is not None for g in g_f.values())
    errors = _grad_errors(g_f, g_r)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: {errors[worst]:.2e}"
    for (name, b), b_f in zip(ref.named_buffers(), fused.buffers()):
        assert rel_err(b_f.double(), b.double()) < 1e-9, name


def _flat(grads):
    return torch.cat([g.reshape(-1).double() for g in grads.values()])


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_training_step_fused_matches_reference_float32(case):
    # In float32 a training step of ~100 batch-statistics BatchNorms is ill-conditioned at a small
    # input: a ReLU input within rounding of zero flips its mask, and the change runs back through
    # every layer (a 1e-7 change of the input moves eager gradients by percents; Inception-v4 from
    # its default init by tens of percents). So the yardstick is measured here: the eager float32
    # path's distance from a float64 run, on the input and on two inputs perturbed at rounding level;
    # the fused path must be within 3x of the largest of those (float64 checks exactness, above).
    ref, x, target = _train_setup(case, torch.float32)
    fused, exact = copy.deepcopy(ref), copy.deepcopy(ref).double()
    loss_e, g_e = _train_step(exact, x.double(), target, False)
    loss_f, g_f = _train_step(fused, x, target, True)
    noise_loss, noise_grad = [], []
    for eps in (0.0, 1e-7, -1e-7):
        model = copy.deepcopy(ref)
        loss_r, g_r = _train_step(model, x * (1 + eps * torch.randn_like(x)), target, False)
        noise_loss.append(rel_err(loss_r, loss_e))
        noise_grad.append(rel_err(_flat(g_r), _flat(g_e)))
    assert rel_err(loss_f, loss_e) <= 3 * max(noise_loss) + 1e-5
    assert rel_err(_flat(g_f), _flat(g_e)) <= 3 * max(noise_grad) + 1e-5


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_channels_last(case, fused):
    _, ours = pair(case)
    side = case.own_small
    x = torch.randn(2, 3, side, side)
    net = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    with torch.no_grad(), use_fused(fused):
        ref = ours(x)
        y = net(x.contiguous(memory_format=torch.channels_last))
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_bf16_autocast(case, fused):
    _, ours = pair(case)
    side = case.own_small
    x = torch.randn(2, 3, side, side)
    with torch.no_grad(), use_fused(fused):
        ref = ours(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = ours(x)
    assert torch.isfinite(y).all()
    assert rel_err(y.float(), ref) < 5e-2
    # and a bf16 training step runs and gives finite gradients
    model, x, target = _train_setup(case, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _train_step(model, x, target, fused)
    assert torch.isfinite(loss)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_set_fused_per_model(case):
    _, ours = pair(case)
    net = copy.deepcopy(ours)
    side = case.own_small
    x = torch.randn(1, 3, side, side)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: calls.append(type(m).__name__) if isinstance(m, torch.nn.BatchNorm2d) else None)
    try:
        with torch.no_grad(), use_fused(True):
            net.set_fused(False)
            net(x)  # the model's own choice wins over the global one: BatchNorm2d modules run
            n_ref = len(calls)
            net.set_fused(None)
            net(x)  # back to the global choice: the fused op, no BatchNorm2d forward
    finally:
        handle.remove()
    assert n_ref > 0 and len(calls) == n_ref


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_torch_compile_fused_no_graph_break(case):
    # fullgraph=True fails on any graph break; aot_eager traces the custom ops through their fake
    # kernels and autograd formulas, as inductor does, in a fraction of the compile time.
    torch._dynamo.reset()
    _, ours = pair(case)
    side = case.own_small
    x = torch.randn(2, 3, side, side)
    net = copy.deepcopy(ours).set_fused(True)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), net(x)) < 1e-5


def test_torch_compile_inductor_googlenet():
    # One model through inductor end to end, eval, fused path (CPU inductor compiles take minutes
    # for the bigger models; the graph-capture check above covers all six).
    torch._dynamo.reset()
    _, ours = pair(MODEL_CASES[0])
    net = copy.deepcopy(ours).set_fused(True)
    x = torch.randn(2, 3, 96, 96)
    compiled = torch.compile(net, fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), net(x)) < 1e-4


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_torch_export(case, fused):
    _, ours = pair(case)
    side = case.own_small
    x = torch.randn(2, 3, side, side)
    net = copy.deepcopy(ours).set_fused(fused)
    ep = torch.export.export(net, (x,))
    with torch.no_grad():
        assert rel_err(ep.module()(x), net(x)) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_matches_peer_cuda(case, fused):
    peer, ours = pair(case)
    x = torch.randn(4, 3, case.native, case.native, device="cuda")
    peer_c, ours_c = copy.deepcopy(peer).cuda(), copy.deepcopy(ours).cuda()
    with torch.no_grad(), use_fused(fused):
        y, ref = ours_c(x), peer_c(x)
        y_cl = ours_c.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert rel_err(y, ref) < 1e-4  # cuDNN picks different algorithms for the two models
    assert rel_err(y_cl, ref) < 1e-4
