"""googlenet: what is particular to it (the comparisons with torchvision on both paths are in the
tests over all the models): its output tuple, the auxiliary heads, pretrained= from a file, the
smallest input."""
import warnings

import pytest
import torch

from _helpers import rel_err
from inception_fast import use_fused
from inception_fast.models.googlenet import MIN_INPUT_SIZE, GoogLeNet, GoogLeNetOutputs, googlenet


def _tv_googlenet(**kwargs):
    torchvision = pytest.importorskip("torchvision", reason="torchvision is the peer of googlenet (test extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy-era init warnings
        return torchvision.models.googlenet(weights=None, **kwargs)


def test_training_returns_torchvisions_namedtuple():
    model = googlenet(num_classes=10).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, GoogLeNetOutputs)
    assert out._fields == ("logits", "aux_logits2", "aux_logits1")
    assert all(t.shape == (2, 10) for t in out)
    out.logits.sum().backward()  # the tuple is differentiable as a whole


def test_aux_heads_do_not_run_in_eval():
    model = googlenet(num_classes=10).eval()
    calls = []
    for head in (model.aux1, model.aux2):
        head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 64))
        feats = model.forward_features(torch.randn(2, 3, 224, 224))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 10)
    assert feats.shape == (2, 1024, 7, 7)
    assert calls == []


def test_without_aux_heads_training_returns_the_logits():
    model = googlenet(num_classes=10, aux_logits=False).train()
    assert model.aux1 is None and model.aux2 is None
    assert not any(k.startswith(("aux1.", "aux2.")) for k in model.state_dict())
    y = model(torch.randn(2, 3, 64, 64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 10)


def test_same_seed_same_initial_weights_as_torchvision():
    # Same registration order and the same init: the state_dicts agree key for key, in order.
    torch.manual_seed(0)
    peer = _tv_googlenet(init_weights=True).state_dict()
    torch.manual_seed(0)
    ours = googlenet().state_dict()
    assert list(ours) == list(peer)
    assert all(torch.equal(ours[k], peer[k]) for k in peer)


def test_pretrained_file_without_aux_heads(tmp_path):
    # torchvision's checkpoint holds aux1/aux2; pretrained= (as torchvision's weights=) builds the model
    # without them unless asked, with transform_input on, and drops their keys.
    peer = _tv_googlenet(init_weights=True, transform_input=True).eval()
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "googlenet.pth"
    torch.save(peer.state_dict(), path)
    model = googlenet(pretrained=str(path)).eval()
    assert model.aux1 is None and model.transform_input
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert len(model.state_dict()) < len(peer.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), use_fused(False):
        assert rel_err(model(x), peer(x)) < 1e-6
    with_aux = googlenet(pretrained=str(path), aux_logits=True)
    assert torch.equal(with_aux.aux2.fc2.weight, peer.aux2.fc2.weight)


def test_cfg():
    cfg = googlenet().pretrained_cfg
    assert cfg["url"] == "https://download.pytorch.org/models/googlenet-1378be20.pth"
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["first_conv"] == "conv1.conv" and cfg["classifier"] == "fc"
    assert cfg["min_input_size"] == (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)
    assert googlenet(transform_input=True).pretrained_cfg["std"] == (0.229, 0.224, 0.225)
    assert GoogLeNet.optional_prefixes == ("aux1.", "aux2.")


def test_smallest_input():
    # 15 -> 8 -> 4 -> 2 -> 1: the ceil-mode pools keep a 1x1 map from maxpool3 on (torchvision's
    # weights record min_size 15 too); the aux heads pool adaptively and need nothing more.
    model = googlenet(num_classes=10)
    assert model.min_input_size == MIN_INPUT_SIZE == 15
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
        assert all(t.shape == (2, 10) for t in model.train()(x))
    with pytest.raises(ValueError, match="at least 15x15"):
        model.eval()(torch.randn(2, 3, 14, 14))
    with pytest.raises(ValueError, match="at least 15x15"):
        model.train()(torch.randn(2, 3, 15, 14))


def test_torchvision_fails_below_the_same_minimum():
    peer = _tv_googlenet(init_weights=False).eval()
    with torch.no_grad():
        assert peer(torch.randn(1, 3, 15, 15)).shape == (1, 1000)
        with pytest.raises(RuntimeError):
            peer(torch.randn(1, 3, 14, 14))


def test_transform_input_needs_rgb():
    with pytest.raises(ValueError, match="in_chans=3"):
        googlenet(transform_input=True, in_chans=1)
    model = googlenet(in_chans=1, num_classes=10, drop_rate=0.0).eval()
    assert model.dropout.p == 0.0
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
