"""Models against their peers: the peer's random weights (BN running stats randomised too) load into
ours with strict=True and give the peer's outputs, on the reference and on the fused path."""
import copy

import pytest
import torch
import torch.nn.functional as F

from _helpers import rel_err
from inception_fast import use_fused
from inception_fast.models import InceptionOutputs, inception_v3

torchvision = pytest.importorskip("torchvision", reason="torchvision is the peer of inception_v3 (test extra)")


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


@pytest.fixture(scope="module")
def v3_pair():
    torch.manual_seed(0)
    peer = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    _randomise_bn(peer)
    ours = inception_v3(init_weights=False)
    ours.load_state_dict(peer.state_dict(), strict=True)
    return peer.eval(), ours.eval()


@pytest.mark.parametrize("size", [299, 75])
@pytest.mark.parametrize("fused", [False, True])
def test_inception_v3_matches_torchvision(v3_pair, size, fused):
    peer, ours = v3_pair
    x = torch.randn(2, 3, size, size)
    with torch.no_grad(), use_fused(fused):
        y, ref = ours(x), peer(x)
    assert y.shape == (2, 1000)
    assert rel_err(y, ref) < 1e-5


def test_inception_v3_state_dict_round_trip(v3_pair):
    peer, ours = v3_pair
    assert list(ours.state_dict()) == list(peer.state_dict())
    back = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    back.load_state_dict(ours.state_dict(), strict=True)


def _logits_and_grads(model, x, target, fused, aux):
    model.train()
    with use_fused(fused):
        out = model(x)
    if aux:
        assert isinstance(out, InceptionOutputs) and out.aux_logits.shape == (x.shape[0], 10)
        logits = out.logits
        loss = F.cross_entropy(out.logits, target) + 0.4 * F.cross_entropy(out.aux_logits, target)
    else:
        logits = out
        loss = F.cross_entropy(out, target)
    loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("size,aux", [(299, True)])
def test_inception_v3_training_fused_matches_reference(size, aux):
    # ~95 training-mode BatchNorms in a row amplify float32 rounding (at 75x75 the last blocks
    # normalise a handful of values per channel), so fused and eager float32 both drift from the
    # exact result. The check: the fused path is as close to a float64 run of the reference path
    # as the float32 reference path itself is.
    torch.manual_seed(0)
    ref = inception_v3(num_classes=10, dropout=0.0, aux_logits=aux)
    fused, exact = copy.deepcopy(ref), copy.deepcopy(ref).double()
    x = torch.randn(4, 3, size, size)
    target = torch.randint(0, 10, (4,))
    out_r, g_r = _logits_and_grads(ref, x, target, False, aux)
    out_f, g_f = _logits_and_grads(fused, x, target, True, aux)
    out_e, g_e = _logits_and_grads(exact, x.double(), target, False, aux)
    assert rel_err(out_f, out_e) <= 3 * rel_err(out_r, out_e) + 1e-5
    for name, g in g_e.items():
        err_fused, err_ref = rel_err(g_f[name], g), rel_err(g_r[name], g)
        assert err_fused <= 3 * err_ref + 1e-5, f"{name}: fused {err_fused:.2e}, eager float32 {err_ref:.2e}"


def test_inception_v3_trains_at_75_without_aux():
    torch.manual_seed(0)
    model = inception_v3(num_classes=10, aux_logits=False)
    x, target = torch.randn(4, 3, 75, 75), torch.randint(0, 10, (4,))
    logits, grads = _logits_and_grads(model, x, target, True, False)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    for name, g in grads.items():
        assert g is not None and torch.isfinite(g).all(), name


def test_inception_v3_too_small_input_says_the_minimum():
    with pytest.raises(ValueError, match="at least 75x75"):
        inception_v3(init_weights=False).eval()(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="aux_logits=False"):
        inception_v3(init_weights=False).train()(torch.randn(2, 3, 75, 75))
