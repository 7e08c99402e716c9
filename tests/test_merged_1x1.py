"""The fused path's merged 1x1 convolutions: in every Inception block the 1x1 ConvBNReLU layers that
read the block input run as ONE conv1x1 GEMM + ONE bn_relu over the concatenated channels
(layers.conv_bn_relu_merged, BranchBlock.forward_merged). Checked against the same model with the
merge off: outputs, every gradient, the running statistics and num_batches_tracked after training
steps (momentum 0.1 and None), eval mode; that it is used; and where it must not be (hooks,
synchronised BatchNorm, BatchNorms that disagree)."""
import copy

import pytest
import torch
import torch.nn as nn

from _helpers import rel_err
from inception_fast import _ext, layers, models

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"inception_fast._C not built: {_ext.LOAD_ERROR}")

MODELS = ["googlenet", "inception_v3", "inception_v4", "inception_resnet_v1", "inception_resnet_v2"]


def _model(name, momentum=0.1):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    model = models.create_model(name, num_classes=7, drop_rate=0.0, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
            with torch.no_grad():  # randomised affine parameters and statistics
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.set_fused(True)


def _conv1x1_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "inception_fast::conv1x1")


def _flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
@pytest.mark.parametrize("name", MODELS)
def test_training_steps_match_unmerged(name, momentum):
    # In float64 (rounding too small to flip a ReLU mask), so the two must agree closely; the model
    # tests compare the fused path, merged, with the reference path in float32 and float64 too.
    merged = _model(name, momentum).double().train()
    plain = copy.deepcopy(merged)
    opt_m = torch.optim.SGD(merged.parameters(), lr=0.05)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.05)
    probe = copy.deepcopy(merged)
    x = torch.randn(3, 3, 91, 91, dtype=torch.float64)
    calls = _conv1x1_calls(lambda: probe(x))
    with layers.use_merged_1x1(False):
        assert calls < _conv1x1_calls(lambda: probe(x))  # the merge is taken
    for step in range(2):
        # Each step from the same state (the second one's parameters would otherwise differ by
        # rounding, which batch statistics over 3 images on the last 1x1 grids amplify).
        plain.load_state_dict(merged.state_dict())
        tol = 1e-9
        x = torch.randn(3, 3, 91, 91, dtype=torch.float64)
        target = torch.randint(0, 7, (3,))
        y_m = merged(x)
        with layers.use_merged_1x1(False):
            y_p = plain(x)
        assert rel_err(y_m, y_p) < tol, f"step {step} output"
        opt_m.zero_grad()
        opt_p.zero_grad()
        nn.functional.cross_entropy(y_m, target).backward()
        nn.functional.cross_entropy(y_p, target).backward()
        assert rel_err(_flat_grads(merged), _flat_grads(plain)) < tol, f"step {step} gradients"
        for (k, a), b in zip(merged.state_dict().items(), plain.state_dict().values()):
            if k.endswith("num_batches_tracked"):
                assert torch.equal(a, b), k
            elif "running" in k:
                assert rel_err(a, b) < tol, k
        opt_m.step()
        opt_p.step()


@pytest.mark.parametrize("name", ["inception_v3", "inception_resnet_v2"])
def test_eval_matches_unmerged(name):
    model = _model(name).eval()
    x = torch.randn(2, 3, 107, 107)
    with torch.no_grad():
        y = model(x)
        with layers.use_merged_1x1(False):
            ref = model(x)
        assert rel_err(y, ref) < 1e-5
        assert rel_err(y, copy.deepcopy(model).set_fused(False)(x)) < 1e-5


def test_merged_layers_directly():
    torch.manual_seed(0)
    steps = [layers.ConvBNReLU(12, c, kernel_size=1) for c in (5, 9, 3)]
    for s in steps:
        s.train()
    twins = copy.deepcopy(steps)
    x = torch.randn(4, 12, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    assert layers.mergeable_1x1(steps)
    outs = layers.conv_bn_relu_merged(steps, x)
    refs = [t(x2) for t in twins]
    g = [torch.randn_like(r) for r in refs]
    sum((o * gi).sum() for o, gi in zip(outs, g)).backward()
    sum((r * gi).sum() for r, gi in zip(refs, g)).backward()
    for o, r in zip(outs, refs):
        assert o.shape == r.shape and rel_err(o, r) < 1e-5
    assert rel_err(x.grad, x2.grad) < 1e-5
    for s, t in zip(steps, twins):
        for a, b in zip(list(s.parameters()) + list(s.buffers()), list(t.parameters()) + list(t.buffers())):
            assert rel_err(a.grad if a.grad is not None else a, b.grad if b.grad is not None else b) < 1e-5


def test_not_merged_where_it_must_not_be():
    torch.manual_seed(0)
    steps = [layers.ConvBNReLU(8, c, kernel_size=1) for c in (4, 6)]
    assert layers.mergeable_1x1(steps)
    assert not layers.mergeable_1x1(steps[:1])  # nothing to merge
    with layers.use_merged_1x1(False):
        assert not layers.mergeable_1x1(steps)
    odd = copy.deepcopy(steps)
    odd[1].bn.eps = 1e-5
    assert not layers.mergeable_1x1(odd)
    odd = copy.deepcopy(steps)
    odd[1].fused = False  # one layer on the reference path
    assert not layers.mergeable_1x1(odd)
    odd = copy.deepcopy(steps)
    odd[0].bn.momentum = odd[1].bn.momentum = None
    odd[1].bn.num_batches_tracked += 3  # cumulative averages at different counts
    assert not layers.mergeable_1x1(odd)
    odd = copy.deepcopy(steps)
    layers.sync_batchnorm(odd[0])
    assert not layers.mergeable_1x1(odd)
    odd = copy.deepcopy(steps)
    odd[1] = layers.ConvBNReLU(8, 3, kernel_size=3, padding=1)
    assert not layers.mergeable_1x1(odd)


def test_hooks_still_fire():
    # A block with a hook (on itself or on a layer inside) runs as module(x): the hook sees its call.
    model = _model("inception_v3").eval()
    x = torch.randn(1, 3, 91, 91)
    seen = []
    handle = model.Mixed_5b.branch1x1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        y = model(x)
    handle.remove()
    assert seen == [torch.Size([1, 64, 9, 9])]
    handle = model.Mixed_5b.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        assert rel_err(model(x), y) < 1e-6
    handle.remove()
    assert seen[-1] == torch.Size([1, 256, 9, 9])
