"""bn_inception: what is particular to it (the comparisons with pretrainedmodels on both paths are in
the tests over all the models): the peer's flat module names, the BGR 0..255 record, the published
checkpoint's old BatchNorm shapes, the input sizes the network takes."""
import warnings

import pytest
import torch

from _helpers import rel_err
from inception_fast import use_fused
from inception_fast.models.bn_inception import MIN_INPUT_SIZE, BNInception, bn_inception
from inception_fast.models._weights import load_weights


def _peer():
    pretrainedmodels = pytest.importorskip("pretrainedmodels", reason="pretrainedmodels is the peer of bn_inception")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrainedmodels.bninception(pretrained=None)


def test_flat_names_in_the_peers_order():
    model = bn_inception()
    names = [n for n, _ in model.named_children()]
    assert names[:8] == ["conv1_7x7_s2", "conv1_7x7_s2_bn", "conv1_relu_7x7", "pool1_3x3_s2",
                         "conv2_3x3_reduce", "conv2_3x3_reduce_bn", "conv2_relu_3x3_reduce", "conv2_3x3"]
    assert names[-3:] == ["global_pool", "head_drop", "last_linear"]
    # the grid reductions: no 1x1, no pool projection
    assert "inception_3c_1x1" not in names and "inception_4e_pool_proj" not in names
    assert isinstance(model.inception_5b_pool, torch.nn.MaxPool2d)  # the paper's max pool in 5b
    assert isinstance(model.inception_5a_pool, torch.nn.AvgPool2d)
    assert model.inception_3a_1x1.bias is not None and model.inception_3a_1x1_bn.eps == 1e-5
    _peer()  # the first import of pretrainedmodels draws random numbers: before seeding
    torch.manual_seed(0)
    peer = _peer()
    torch.manual_seed(0)
    ours = bn_inception()
    peer_children = [(n, repr(m)) for n, m in peer.named_children()]
    ours_children = [(n, repr(m)) for n, m in ours.named_children()]
    assert ours_children[:-3] == peer_children[:-2]  # all but the head print the same
    ps, os_ = peer.state_dict(), ours.state_dict()
    assert list(os_) == list(ps)
    assert all(torch.equal(os_[k], ps[k]) for k in ps)  # same seed, same initial weights


def test_bgr_cfg_and_pretrainedmodels_attributes():
    model = bn_inception()
    cfg = model.pretrained_cfg
    assert cfg["url"] == "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
    assert cfg["input_space"] == "BGR" and cfg["input_range"] == (0, 255)
    assert cfg["mean"] == (104, 117, 128) and cfg["std"] == (1, 1, 1)
    assert cfg["first_conv"] == "conv1_7x7_s2" and cfg["classifier"] == "last_linear"
    assert cfg["min_input_size"] == (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)
    # what pretrainedmodels' TransformImage reads off the model
    assert (model.input_space, model.input_range, model.input_size) == ("BGR", [0, 255], [3, 224, 224])
    assert (model.mean, model.std) == ([104, 117, 128], [1, 1, 1])


def test_features_and_logits_as_pretrainedmodels_names_them():
    model = bn_inception(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, 1024, 2, 2)
        assert torch.equal(model.logits(f), model(x))


def test_set_fused_reaches_the_model():
    model = bn_inception(num_classes=10).eval()
    calls = []
    model.conv1_relu_7x7.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with use_fused(True):
            y_fused = model(x)
        assert calls == []  # the fused path folds the ReLU modules into bn_relu
        model.set_fused(False)
        with use_fused(True):
            y_ref = model(x)
        assert calls == [1] and model.fused is False
    assert rel_err(y_fused, y_ref) < 1e-5


def test_old_checkpoint_with_1xC_batchnorm_tensors(tmp_path):
    # The published file was saved under PyTorch 0.2/0.3: BatchNorm tensors of shape (1, C), no
    # num_batches_tracked. pretrainedmodels' own load_state_dict rejects it today; ours adapts it.
    src = bn_inception()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    old = {k: (v.unsqueeze(0) if k.split(".")[0].endswith("_bn") else v)
           for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert old["conv1_7x7_s2_bn.weight"].shape == (1, 64)
    path = tmp_path / "bn_inception-old.pth"
    torch.save(old, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = src.eval()(x)
        for model in (bn_inception(pretrained=str(path)), load_weights(bn_inception(), str(path))):
            assert torch.equal(model.eval()(x), ref)
            assert int(model.conv1_7x7_s2_bn.num_batches_tracked) == 0
        # in_chans and num_classes other than the checkpoint's still load (first conv adapted, new classifier)
        gray = bn_inception(pretrained=str(path), in_chans=1, num_classes=5)
        assert gray.conv1_7x7_s2.weight.shape == (64, 1, 7, 7) and gray.last_linear.out_features == 5


def test_input_sizes():
    model = bn_inception(num_classes=10).eval()
    assert BNInception.min_input_size == MIN_INPUT_SIZE == 31
    with torch.no_grad():
        for side in (31, 38, 63):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 10)
        assert model(torch.randn(1, 3, 70, 31)).shape == (1, 10)
        with pytest.raises(ValueError, match="at least 31x31"):
            model(torch.randn(1, 3, 30, 30))
        # 39..62 would need the two grid reductions to agree on an odd grid: the peer fails there too
        with pytest.raises(ValueError, match="32k-1 to 32k\\+6.*nearest sides: 38, 63"):
            model(torch.randn(1, 3, 40, 40))
        with pytest.raises(ValueError, match="32k-1 to 32k\\+6"):
            model(torch.randn(1, 3, 224, 200))
