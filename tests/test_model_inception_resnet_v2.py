"""inception_resnet_v2: what is particular to this model (the residual scales and the last block's
missing ReLU as timm's, the adds on the scaled_residual_add op, the 75x75 minimum, output_stride, the
cfg record). The comparisons of outputs and gradients with timm over all models are in test_models.py."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import inception_fast.layers as layers
from _helpers import rel_err
from inception_fast import ConvBNReLU, ScaledResidual, use_fused
from inception_fast.models._registry import create_model
from inception_fast.models.inception_resnet_v2 import (Block8, Block17, Block35, InceptionResnetV2,
                                                       inception_resnet_v2)

timm = pytest.importorskip("timm", reason="timm is the peer of inception_resnet_v2 (test extra)")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    peer = timm.create_model("inception_resnet_v2")
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = inception_resnet_v2()
    ours.load_state_dict(peer.state_dict(), strict=True)
    return peer.eval(), ours.eval()


def test_module_names_are_timms(pair):
    peer, ours = pair
    assert [n for n, _ in ours.named_children()][:15] == [
        "conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a", "mixed_5b",
        "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b"]
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in peer.state_dict().items()]
    timm.create_model("inception_resnet_v2").load_state_dict(ours.state_dict(), strict=True)


def test_residual_scales_and_no_relu_as_timm(pair):
    peer, ours = pair
    for name, cls, n, scale in (("repeat", Block35, 10, 0.17), ("repeat_1", Block17, 20, 0.10),
                                ("repeat_2", Block8, 9, 0.20)):
        ours_blocks, peer_blocks = getattr(ours, name), getattr(peer, name)
        assert len(ours_blocks) == len(peer_blocks) == n
        for b, p in zip(ours_blocks, peer_blocks):
            assert type(b) is cls and b.scale == p.scale == scale
            assert isinstance(b.residual, ScaledResidual) and b.residual.relu
    # The last Block8: the default scale 1.0 and no ReLU before conv2d_7b, in timm as in TF-Slim.
    assert ours.block8.scale == peer.block8.scale == 1.0
    assert ours.block8.no_relu and not ours.block8.residual.relu and peer.block8.relu is None
    assert all(not b.no_relu for b in ours.repeat_2)


def test_up_projections_are_plain_convs_with_bias(pair):
    _, ours = pair
    blocks = [m for m in ours.modules() if isinstance(m, (Block35, Block17, Block8))]
    assert len(blocks) == 40
    for b in blocks:
        assert type(b.conv2d) is nn.Conv2d and b.conv2d.bias is not None and b.conv2d.kernel_size == (1, 1)
    plain = [m for m in ours.modules() if type(m) is nn.Conv2d and not any(m is c.conv for c in ours.modules()
                                                                         if isinstance(c, ConvBNReLU))]
    assert len(plain) == 40  # every other conv is a ConvBNReLU
    assert {m.bn.eps for m in ours.modules() if isinstance(m, ConvBNReLU)} == {1e-3}


def test_scale_attribute_drives_the_residual():
    block = Block35(scale=0.17)
    block.scale = 0.3
    assert block.residual.scale == 0.3


def test_fused_path_adds_through_the_op(pair, monkeypatch):
    peer, ours = pair
    calls = []

    def counting(x, residual, scale, relu=True):
        calls.append((scale, relu))
        return real(x, residual, scale, relu)

    real = layers.scaled_residual_add
    monkeypatch.setattr(layers, "scaled_residual_add", counting)
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        ref = peer(x)
        with use_fused(False):
            y_ref = ours(x)
        assert calls == []
        with use_fused(True):
            y = ours(x)
    assert calls == [(0.17, True)] * 10 + [(0.10, True)] * 20 + [(0.20, True)] * 9 + [(1.0, False)]
    assert rel_err(y_ref, ref) < 1e-5 and rel_err(y, ref) < 1e-5


def test_training_at_the_minimum_size_float64():
    # Float64, where both paths are exact to rounding, so any difference is a bug. Of note:
    # block8.conv2d.bias gets no gradient at all: with no ReLU after the last Block8, a per-channel
    # constant passes linearly through conv2d_7b's 1x1 conv and its training-mode BatchNorm removes it.
    # (Its float32 gradient is rounding noise, so gradient comparisons must leave it out.)
    torch.manual_seed(0)
    ref = inception_resnet_v2(num_classes=10).double().train()
    fused = copy.deepcopy(ref)
    x, target = torch.randn(4, 3, 75, 75, dtype=torch.float64), torch.randint(0, 10, (4,))
    grads = []
    for model, path in ((ref, False), (fused, True)):
        with use_fused(path):
            out = model(x)
        F.cross_entropy(out, target).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    g_ref, g_fused = grads
    scale = max(g.abs().max().item() for g in g_ref.values())
    assert g_ref["block8.conv2d.bias"].abs().max() < 1e-12 * scale
    for name, g in g_ref.items():
        if name != "block8.conv2d.bias":
            assert rel_err(g_fused[name], g) < 1e-9, name


@pytest.mark.parametrize("shape", [(1, 3, 74, 74), (1, 3, 299, 74)])
def test_too_small_input_says_the_minimum(pair, shape):
    _, ours = pair
    with pytest.raises(ValueError, match="at least 75x75"):
        ours(torch.randn(shape))


def test_output_stride_only_32():
    with pytest.raises(ValueError, match="output_stride=32"):
        InceptionResnetV2(output_stride=8)


def test_cfg_is_timms(pair):
    peer, ours = pair
    cfg = ours.pretrained_cfg
    for key in ("input_size", "pool_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "first_conv",
                "classifier", "num_classes", "hf_hub_id"):
        assert cfg[key] == peer.pretrained_cfg[key], key
    assert cfg["crop_pct"] == 0.8975
    assert cfg["url"] == "https://huggingface.co/timm/inception_resnet_v2.tf_in1k/resolve/main/model.safetensors"
    assert cfg["min_input_size"] == (3, 75, 75) and InceptionResnetV2.min_input_size == 75
    assert ours.get_classifier() is ours.classif


def test_registered_and_head_arguments():
    model = create_model("inception_resnet_v2", num_classes=0, global_pool="max").eval()
    assert isinstance(model, InceptionResnetV2) and isinstance(model.classif, nn.Identity)
    assert model(torch.randn(1, 3, 75, 75)).shape == (1, 1536)
