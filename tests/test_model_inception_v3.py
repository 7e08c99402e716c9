"""inception_v3's own checks: the auxiliary head in training (at 299, where it runs) and its
too-small-input errors; the checks against torchvision and timm are in test_models.py."""
import copy

import pytest
import torch
import torch.nn.functional as F

from _helpers import rel_err
from inception_fast import use_fused
from inception_fast.models import InceptionOutputs, inception_v3


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


def test_inception_v3_transform_input_cfg():
    # The Google weights expect (x - 0.5) / 0.5; with transform_input the model does that from
    # ImageNet-normalised input, and its record says which normalisation to feed.
    assert inception_v3(init_weights=False).pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    model = inception_v3(init_weights=False, transform_input=True).eval()
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    x = torch.rand(1, 3, 80, 80)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    plain = copy.deepcopy(model)
    plain.transform_input = False
    with torch.no_grad():
        assert rel_err(model((x - mean) / std), plain((x - 0.5) / 0.5)) < 1e-5


def test_inception_v3_init_is_torchvisions():
    # Same seed, same initial weights as torchvision (its init order and per-module stddev kept).
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    peer = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    torch.manual_seed(0)
    ours = inception_v3()
    for (k, a), b in zip(peer.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), k
