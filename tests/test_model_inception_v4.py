"""inception_v4: what is particular to this model (its `features` trunk as timm lays it out, the
padding-excluding average pools, the 75x75 minimum, output_stride, the cfg record, pretrained= from
a file). The comparisons of outputs and gradients with timm over all models are in test_models.py."""
import pytest
import torch
import torch.nn as nn

from _helpers import rel_err
from inception_fast import ConvBNReLU, use_fused
from inception_fast.models._registry import create_model
from inception_fast.models.inception_v4 import InceptionV4, inception_v4

timm = pytest.importorskip("timm", reason="timm is the peer of inception_v4 (test extra)")

BLOCKS = (["ConvNormAct"] * 3 + ["Mixed3a", "Mixed4a", "Mixed5a"] + ["InceptionA"] * 4 + ["ReductionA"]
          + ["InceptionB"] * 7 + ["ReductionB"] + ["InceptionC"] * 3)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    peer = timm.create_model("inception_v4")
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = inception_v4()
    ours.load_state_dict(peer.state_dict(), strict=True)
    return peer.eval(), ours.eval()


def test_features_trunk_is_timms(pair):
    peer, ours = pair
    assert [type(b).__name__ for b in peer.features] == BLOCKS
    ours_names = [type(b).__name__ for b in ours.features]
    assert ours_names == [("ConvBNReLU" if n == "ConvNormAct" else n) for n in BLOCKS]
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in peer.state_dict().items()]
    timm.create_model("inception_v4").load_state_dict(ours.state_dict(), strict=True)


def test_every_conv_is_a_conv_bn_relu_with_tf_eps(pair):
    peer, ours = pair
    convs = [m for m in ours.modules() if isinstance(m, ConvBNReLU)]
    assert len(convs) == len([m for m in ours.modules() if isinstance(m, nn.Conv2d)])
    assert len(convs) == sum(type(m).__name__ == "ConvNormAct" for m in peer.modules())
    assert {m.bn.eps for m in convs} == {1e-3}


def test_average_pools_exclude_padding_as_timm(pair):
    # TF-Slim's 'SAME' average pool; torchvision's inception_v3 counts the padding instead.
    peer, ours = pair
    pools = [m for m in ours.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 4 + 7 + 3
    assert all(not p.count_include_pad and p.padding == 1 for p in pools)


def test_runs_at_the_minimum_size_on_both_paths(pair):
    peer, ours = pair
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        ref = peer.forward_features(x)
        for fused in (False, True):
            with use_fused(fused):
                y = ours.forward_features(x)
            assert y.shape == (2, 1536, 1, 1)
            assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("shape", [(1, 3, 74, 74), (1, 3, 75, 74), (1, 3, 64, 299)])
def test_too_small_input_says_the_minimum(pair, shape):
    _, ours = pair
    with pytest.raises(ValueError, match="at least 75x75"):
        ours(torch.randn(shape))


def test_output_stride_only_32():
    with pytest.raises(ValueError, match="output_stride=32"):
        InceptionV4(output_stride=16)
    assert InceptionV4(output_stride=32, num_classes=0).num_features == 1536


def test_cfg_is_timms(pair):
    peer, ours = pair
    cfg = ours.pretrained_cfg
    for key in ("input_size", "pool_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "first_conv",
                "classifier", "num_classes", "hf_hub_id"):
        assert cfg[key] == peer.pretrained_cfg[key], key
    assert cfg["url"] == "https://huggingface.co/timm/inception_v4.tf_in1k/resolve/main/model.safetensors"
    assert cfg["min_input_size"] == (3, 75, 75) and InceptionV4.min_input_size == 75
    assert ours.get_classifier() is ours.last_linear
    assert ours.pretrained_cfg["first_conv"] + ".weight" in ours.state_dict()


def test_registered_and_head_arguments():
    model = create_model("inception_v4", num_classes=10, in_chans=1, drop_rate=0.2, global_pool="catavgmax")
    assert isinstance(model, InceptionV4) and model.in_chans == 1
    assert model.last_linear.in_features == 2 * 1536 and model.head_drop.p == 0.2
    assert model.features[0].conv.in_channels == 1


def test_pretrained_from_a_timm_checkpoint_file(pair, tmp_path):
    peer, _ = pair
    path = tmp_path / "inception_v4_timm.pth"
    torch.save(peer.state_dict(), path)
    model = inception_v4(pretrained=str(path), num_classes=10)  # another label set: classifier left as built
    assert model.last_linear.out_features == 10
    assert torch.equal(model.features[21].branch3[1].conv.weight, peer.features[21].branch3[1].conv.weight)
