"""inception_resnet_v1: what is particular to this model (facenet-pytorch's face head beside the paper's
ImageNet head, the normalised embedding, facenet's state_dict and published-checkpoint layout, the
classifier reset in both modes, the 75x75 minimum, the cfg records). The comparisons of outputs and
gradients with facenet-pytorch over all models are in test_models.py."""
import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import inception_fast.layers as layers
from _helpers import rel_err
from inception_fast import ConvBNReLU, ScaledResidual, use_fused
from inception_fast.models._registry import create_model
from inception_fast.models._weights import load_pretrained
from inception_fast.models.inception_resnet_v1 import (Block8, Block17, Block35, InceptionResnetV1,
                                                       inception_resnet_v1)

facenet = pytest.importorskip("facenet_pytorch", reason="facenet-pytorch is the peer of inception_resnet_v1")
# The module itself (inception_fast.models re-exports a builder of the same name).
irv1 = importlib.import_module("inception_fast.models.inception_resnet_v1")


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


@pytest.fixture(scope="module")
def face_pair():
    """facenet's InceptionResnetV1(classify=True, num_classes=10) and ours with its weights: the same
    parameters serve the embedding (classify=False) and the logits (classify=True)."""
    torch.manual_seed(0)
    peer = facenet.InceptionResnetV1(classify=True, num_classes=10)
    _randomise_bn(peer)
    ours = inception_resnet_v1(embedding_size=512, num_classes=10)
    ours.load_state_dict(peer.state_dict(), strict=True)
    return peer.eval(), ours.eval()


def _keys_and_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("classify", [False, True])
def test_state_dict_is_facenets_both_ways(classify):
    # facenet with classify=True has `logits`, without it none: ours with num_classes=N resp. 0.
    peer = facenet.InceptionResnetV1(classify=classify, num_classes=7 if classify else None)
    ours = inception_resnet_v1(embedding_size=512, num_classes=7 if classify else 0)
    assert _keys_and_shapes(ours) == _keys_and_shapes(peer)
    ours.load_state_dict(peer.state_dict(), strict=True)
    back = facenet.InceptionResnetV1(classify=classify, num_classes=7 if classify else None)
    back.load_state_dict(ours.state_dict(), strict=True)
    # Without a classifier, ours keeps `logits` as an nn.Identity (no keys): facenet has no module.
    children = [n for n, _ in peer.named_children()] + ([] if classify else ["logits"])
    assert [n for n, _ in ours.named_children()] == children


def test_blocks_as_facenets():
    model = inception_resnet_v1(embedding_size=512, num_classes=0)
    for name, cls, n, scale in (("repeat_1", Block35, 5, 0.17), ("repeat_2", Block17, 10, 0.10),
                                ("repeat_3", Block8, 5, 0.20)):
        blocks = getattr(model, name)
        assert len(blocks) == n
        for b in blocks:
            assert type(b) is cls and b.scale == scale and not b.noReLU
            assert isinstance(b.residual, ScaledResidual) and b.residual.relu
            assert type(b.conv2d) is nn.Conv2d and b.conv2d.bias is not None and b.conv2d.kernel_size == (1, 1)
    # The last block: facenet's Block8(noReLU=True), scale 1.0.
    assert model.block8.scale == 1.0 and model.block8.noReLU and not model.block8.residual.relu
    bns = [m.bn for m in model.modules() if isinstance(m, ConvBNReLU)]
    assert len(bns) == 6 + 5 * 6 + 4 + 10 * 4 + 7 + 6 * 4  # stem, repeat_1, mixed_6a, repeat_2, mixed_7a, Block8s
    assert {(bn.eps, bn.momentum) for bn in bns} == {(1e-3, 0.1)}
    assert (model.last_bn.eps, model.last_bn.momentum) == (1e-3, 0.1) and model.last_linear.bias is None


def test_face_heads_match_facenet(face_pair):
    peer, ours = face_pair
    embedder = inception_resnet_v1(embedding_size=512, num_classes=0)
    embedder.load_state_dict({k: v for k, v in peer.state_dict().items() if not k.startswith("logits.")},
                             strict=True)
    embedder.eval()
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        peer.classify = False
        emb_ref = peer(x)
        peer.classify = True
        logits_ref = peer(x)
        feats, feats0 = ours.forward_features(x), embedder.forward_features(x)
        logits, pre = ours.forward_head(feats), ours.forward_head(feats, pre_logits=True)
        emb, pre0 = embedder.forward_head(feats0), embedder.forward_head(feats0, pre_logits=True)
    assert logits.shape == (2, 10) and emb.shape == (2, 512) and pre.shape == (2, 512)
    assert rel_err(logits, logits_ref) < 1e-5 and rel_err(emb, emb_ref) < 1e-5
    # The embedding is unit length; pre_logits is what the classifier takes (last_bn's output), the
    # same whatever num_classes is, before the normalisation.
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-6)
    assert rel_err(pre0, pre) < 1e-6 and rel_err(F.normalize(pre, dim=1), emb) < 1e-6
    assert rel_err(ours.get_classifier()(pre), logits) < 1e-6


def test_fused_path_adds_through_the_op(face_pair, monkeypatch):
    peer, ours = face_pair
    calls = []
    real = layers.scaled_residual_add

    def counting(x, residual, scale, relu=True):
        calls.append((scale, relu))
        return real(x, residual, scale, relu)

    monkeypatch.setattr(layers, "scaled_residual_add", counting)
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad(), use_fused(True):
        y = ours(x)
    assert calls == [(0.17, True)] * 5 + [(0.10, True)] * 10 + [(0.20, True)] * 5 + [(1.0, False)]
    peer.classify = True
    with torch.no_grad():
        assert rel_err(y, peer(x)) < 1e-5


def test_imagenet_head_is_the_papers():
    model = inception_resnet_v1()
    assert model.embedding_size is None and model.num_features == 1792 and model.num_classes == 1000
    assert not hasattr(model, "last_linear") and not hasattr(model, "last_bn")
    assert isinstance(model.logits, nn.Linear) and model.logits.bias is not None
    assert (model.logits.in_features, model.logits.out_features) == (1792, 1000)
    assert model.dropout.p == 0.2  # the paper's keep-prob 0.8
    assert list(model.state_dict())[-2:] == ["logits.weight", "logits.bias"]
    model.eval()
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        feats = model.forward_features(x)
        y, pre = model.forward_head(feats), model.forward_head(feats, pre_logits=True)
    assert y.shape == (2, 1000) and pre.shape == (2, 1792)
    assert rel_err(model.logits(pre), y) < 1e-6


def test_face_defaults_and_cfgs():
    face = inception_resnet_v1(embedding_size=512, num_classes=0)
    assert face.dropout.p == 0.6 and isinstance(face.logits, nn.Identity) and face.num_features == 1792
    assert face.head_hidden_size == 512
    cfg = face.pretrained_cfg
    assert cfg["input_size"] == (3, 160, 160) and cfg["pool_size"] == (3, 3)
    assert cfg["mean"] == (0.5,) * 3 and cfg["std"] == (128 / 255,) * 3
    assert cfg["url"].endswith("20180402-114759-vggface2.pt") and cfg["num_classes"] == 0
    ref = inception_resnet_v1().pretrained_cfg
    assert ref["input_size"] == (3, 299, 299) and ref["pool_size"] == (8, 8) and ref["num_classes"] == 1000
    for c in (cfg, ref):
        assert c["first_conv"] == "conv2d_1a.conv" and c["classifier"] == "logits"
        assert c["min_input_size"] == (3, 75, 75)
    assert InceptionResnetV1.min_input_size == 75
    # facenet's fixed_image_standardization, (pixel - 127.5) / 128, on inputs in [0, 1].
    pixels = torch.tensor([0.0, 100.0, 255.0])
    mean, std = cfg["mean"][0], cfg["std"][0]
    assert torch.allclose((pixels / 255 - mean) / std, facenet.fixed_image_standardization(pixels))


def test_facenet_checkpoint_loads_without_its_logits(tmp_path, face_pair):
    # facenet's published checkpoints hold `logits` for their training identities (8631 for VGGFace2).
    peer, _ = face_pair
    published = facenet.InceptionResnetV1(classify=True, num_classes=8631)
    published.load_state_dict({k: v for k, v in peer.state_dict().items() if not k.startswith("logits.")},
                              strict=False)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(published.state_dict(), path)
    model = load_pretrained(inception_resnet_v1(embedding_size=512, num_classes=0), str(path)).eval()
    assert isinstance(model.logits, nn.Identity)
    with_logits = load_pretrained(inception_resnet_v1(embedding_size=512, num_classes=8631), str(path)).eval()
    assert torch.equal(with_logits.logits.weight, published.logits.weight)
    # A file given to the builder: a checkpoint with last_linear builds the face model (embedding).
    built = inception_resnet_v1(pretrained=str(path)).eval()
    assert built.embedding_size == 512 and built.num_classes == 0
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), model.state_dict().values()))
    x = torch.randn(2, 3, 75, 75)
    published.eval().classify = False
    with torch.no_grad():
        assert rel_err(model(x), published(x)) < 1e-5


@pytest.mark.parametrize("name,identities", [(True, 8631), ("vggface2", 8631), ("casia-webface", 10575)])
def test_pretrained_names_are_facenets(monkeypatch, name, identities):
    sources = []
    monkeypatch.setattr(irv1, "load_pretrained", lambda model, source: sources.append(source) or model)
    model = inception_resnet_v1(pretrained=name)
    file = "20180408-102900-casia-webface.pt" if name == "casia-webface" else "20180402-114759-vggface2.pt"
    assert sources[0].endswith(file) and model.pretrained_cfg["url"].endswith(file)
    assert model.embedding_size == 512 and model.num_classes == 0
    assert irv1.FACENET_WEIGHTS["casia-webface" if name == "casia-webface" else "vggface2"][1] == identities
    assert inception_resnet_v1(pretrained=name, num_classes=identities).logits.out_features == identities
    with pytest.raises(ValueError, match="embedding_size"):
        inception_resnet_v1(pretrained=name, embedding_size=None)


def test_reset_classifier_imagenet_model():
    model = inception_resnet_v1(num_classes=5).eval()
    x = torch.randn(2, 3, 75, 75)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 1792)
    model.reset_classifier(10, global_pool="catavgmax")
    assert model.logits.in_features == 3584
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_reset_classifier_face_model():
    model = inception_resnet_v1(embedding_size=512, num_classes=0).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 75, 75)
    model.reset_classifier(10)
    assert (model.logits.in_features, model.logits.out_features) == (512, 10) and model.logits.bias is not None
    # The classifier goes where facenet has it: last in the state_dict.
    assert list(model.state_dict()) == keys + ["logits.weight", "logits.bias"]
    with torch.no_grad():
        feats = model.forward_features(x)
        logits, pre = model(x), model.forward_head(feats, pre_logits=True)
    assert logits.shape == (2, 10) and rel_err(model.logits(pre), logits) < 1e-6
    model.reset_classifier(0, global_pool="max")
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        emb = model.forward_head(feats)
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-6)
    for pool in ("catavgmax", ""):
        with pytest.raises(ValueError, match="last_linear"):
            model.reset_classifier(10, global_pool=pool)
    # A classifier replacing nn.Identity takes the model's dtype.
    model.double().reset_classifier(3)
    assert model.logits.weight.dtype == torch.float64


@pytest.mark.parametrize("shape", [(1, 3, 74, 74), (1, 3, 160, 74)])
def test_too_small_input_says_the_minimum(shape):
    model = inception_resnet_v1(embedding_size=512, num_classes=0).eval()
    with pytest.raises(ValueError, match="at least 75x75"):
        model(torch.randn(shape))


def test_registered():
    model = create_model("inception_resnet_v1", embedding_size=512, num_classes=0, in_chans=1)
    assert isinstance(model, InceptionResnetV1) and model.conv2d_1a.conv.in_channels == 1
