"""Loading checkpoints: files, URLs and state_dicts in the shapes people save them, the errors that
list what does not fit, and load_pretrained's adaptations (classifier size, dropped heads, in_chans)."""
import pytest
import torch

from _helpers import rel_err
from inception_fast import models
from inception_fast.models import load_pretrained, load_weights
from inception_fast.models._weights import adapt_input_conv, read_state_dict

torchvision = pytest.importorskip("torchvision", reason="torchvision's inception_v3 is the checkpoint source")


@pytest.fixture(scope="module")
def tv_v3():
    torch.manual_seed(0)
    return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "ddp", "compiled"])
def test_load_weights_from_file(tmp_path, tv_v3, wrap):
    sd = tv_v3.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd, "optimizer": {}},
           "ddp": {"module." + k: v for k, v in sd.items()},
           "compiled": {"_orig_mod." + k: v for k, v in sd.items()}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = load_weights(models.inception_v3(init_weights=False), path)
    assert _same_weights(model, tv_v3)


def test_load_weights_from_file_url(tmp_path, tv_v3, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path = tmp_path / "v3.pth"
    torch.save(tv_v3.state_dict(), path)
    model = models.create_model("inception_v3", pretrained=path.as_uri())
    assert _same_weights(model, tv_v3)
    assert model.transform_input  # pretrained= follows torchvision: the Google weights' input transform


def test_load_weights_errors_list_the_keys(tmp_path, tv_v3):
    sd = dict(tv_v3.state_dict())
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(ValueError) as info:
        load_weights(models.inception_v3(init_weights=False), sd)
    msg = str(info.value)
    assert "missing keys (1): fc.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "Mixed_5b.branch1x1.conv.weight (3, 3, 1, 1) vs (64, 192, 1, 1)" in msg
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_weights(models.inception_v3(init_weights=False), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_weights(models.inception_v3(init_weights=False), tmp_path / "junk.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pth")
    with pytest.raises(ValueError, match="no state_dict"):
        load_weights(models.inception_v3(init_weights=False), tmp_path / "nostate.pth")


def test_load_weights_non_strict_warns(tv_v3):
    sd = dict(tv_v3.state_dict())
    sd.pop("fc.bias")
    model = models.inception_v3(init_weights=False)
    with pytest.warns(UserWarning, match="fc.bias"):
        load_weights(model, sd, strict=False)
    assert torch.equal(model.fc.weight, tv_v3.fc.weight)


def test_load_pretrained_adapts_to_the_model(tv_v3):
    # Another label set, no aux head, one input channel: what fits loads, the rest is adapted.
    model = models.inception_v3(num_classes=5, aux_logits=False, in_chans=1, init_weights=False)
    fc_before = model.fc.weight.clone()
    load_pretrained(model, tv_v3.state_dict())
    sd = tv_v3.state_dict()
    assert torch.equal(model.Mixed_7c.branch_pool.conv.weight, sd["Mixed_7c.branch_pool.conv.weight"])
    assert torch.equal(model.fc.weight, fc_before)
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, sd["Conv2d_1a_3x3.conv.weight"].sum(1, keepdim=True))
    # A grey image through the adapted conv gives what the RGB conv gives for the same image in all channels.
    rgb = models.inception_v3(aux_logits=False, init_weights=False).eval()
    load_pretrained(rgb, tv_v3.state_dict())
    model.fc = rgb.fc
    x = torch.randn(1, 1, 80, 80)
    with torch.no_grad():
        assert rel_err(model.eval()(x), rgb(x.expand(1, 3, 80, 80))) < 1e-5


def test_adapt_input_conv():
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_input_conv(3, w), w)
    w4 = adapt_input_conv(4, w)
    assert w4.shape == (8, 4, 3, 3)
    assert torch.allclose(w4, torch.cat([w, w[:, :1]], 1) * 0.75)
    # RGB repeated twice: an input whose six channels repeat one RGB image gives the RGB activations.
    x = torch.randn(1, 3, 9, 9)
    y3 = torch.nn.functional.conv2d(x, w)
    assert rel_err(torch.nn.functional.conv2d(x.repeat(1, 2, 1, 1), adapt_input_conv(6, w)), y3) < 1e-6


def test_read_state_dict_rejects_non_state_dicts():
    with pytest.raises(ValueError, match="holds no tensors"):
        read_state_dict({"a": 1})


def test_create_model_checkpoint_path_and_fused(tmp_path, tv_v3):
    path = tmp_path / "v3.pth"
    torch.save({"state_dict": tv_v3.state_dict()}, path)
    model = models.create_model("inception_v3", checkpoint_path=str(path), fused=False, init_weights=False)
    assert _same_weights(model, tv_v3)
    assert all(m.fused is False for m in model.modules() if hasattr(m, "fused"))


def test_load_pretrained_resets_aux_classifiers_too(tv_v3):
    model = models.inception_v3(num_classes=7, aux_logits=True, init_weights=False)
    aux_before = model.AuxLogits.fc.weight.clone()
    load_pretrained(model, tv_v3.state_dict())
    assert torch.equal(model.AuxLogits.fc.weight, aux_before)
    assert torch.equal(model.AuxLogits.conv1.conv.weight, tv_v3.AuxLogits.conv1.conv.weight)
