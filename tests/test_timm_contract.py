"""timm's model contract, as code that speaks timm meets it: the builders' timm arguments
(pretrained_cfg tags and overlays, device, dtype, features_only and its options), head_hidden_size,
the registration with timm's registry (tags, cfgs, data config) and torch.fx through timm's leaf rules.

timm's own test suite runs on the six in CI (.ci/timm_suite.sh, tools/pytest_timm_suite.py); its
tests that select models by family run here on ours when INCEPTION_FAST_TIMM_TESTS names timm's
tests/test_models.py."""
import importlib.util
import os

import pytest
import torch

from inception_fast import models

timm = pytest.importorskip("timm")
NAMES = models.list_models()
TIMM_NAMES = models.register_timm()


def test_tags_select_timm_cfgs():
    assert models.Inception3.tags() == ["tv_in1k", "tf_in1k", "tf_adv_in1k", "gluon_in1k"]
    assert models.InceptionResnetV2.tags() == ["tf_in1k", "tf_ens_adv_in1k"]
    for name, tag in [("inception_v3", "tf_in1k"), ("inception_v3", "gluon_in1k"),
                      ("inception_resnet_v2", "tf_ens_adv_in1k"), ("inception_v4", "tf_in1k")]:
        ours = models.create_model(f"{name}.{tag}", device="meta").pretrained_cfg
        theirs = timm.models.get_pretrained_cfg(f"{name}.{tag}").to_dict()
        assert ours["tag"] == tag and ours["hf_hub_id"] == f"timm/{name}.{tag}" and tag in ours["url"]
        for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier"):
            assert tuple(ours[key]) == tuple(theirs[key]) if isinstance(ours[key], (tuple, list)) \
                else ours[key] == theirs[key], (name, tag, key)
    # the default tag: torchvision's weights and transforms
    assert models.create_model("inception_v3", device="meta").pretrained_cfg["interpolation"] == "bilinear"
    with pytest.raises(ValueError, match="no pretrained tag 'nope'.*'tv_in1k'"):
        models.create_model("inception_v3.nope")


def test_pretrained_cfg_overlay_and_dict():
    m = models.inception_v4(pretrained_cfg="tf_in1k", pretrained_cfg_overlay={"crop_pct": 1.0}, device="meta")
    assert m.pretrained_cfg["crop_pct"] == 1.0 and m.pretrained_cfg["tag"] == "tf_in1k"
    cfg = timm.models.get_pretrained_cfg("inception_v3.gluon_in1k")
    m = models.inception_v3(pretrained_cfg=cfg, num_classes=5, device="meta")
    assert m.pretrained_cfg["mean"] == cfg.mean and m.pretrained_cfg["num_classes"] == 5
    with pytest.raises(TypeError, match="pretrained_cfg takes"):
        models.googlenet(pretrained_cfg=3)


@pytest.mark.parametrize("name", NAMES)
def test_device_and_dtype(name):
    m = models.create_model(name, device="meta", num_classes=3)
    assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {"meta"}
    m = getattr(models, name)(dtype=torch.float64, num_classes=3)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    with pytest.raises(TypeError, match="floating-point"):
        getattr(models, name)(dtype=torch.int32)
    with pytest.raises(TypeError):
        getattr(models, name)(not_an_argument=1)


@pytest.mark.parametrize("name", NAMES)
def test_head_hidden_size_is_pre_logits_width(name):
    for pool in ("avg", "catavgmax"):
        m = models.create_model(name, num_classes=4, global_pool=pool).eval()
        side = m.pretrained_cfg["input_size"][-1]
        with torch.no_grad():
            pre = m.forward_head(m.forward_features(torch.randn(1, 3, side, side)), pre_logits=True)
        assert pre.shape[1] == m.head_hidden_size
    # a classifier over an unpooled map says what to do when called, not when built
    m.reset_classifier(0, "")
    m.reset_classifier(2)
    with pytest.raises(ValueError, match="no global pooling"):
        m(torch.randn(1, 3, side, side))


def test_features_only_from_the_builders():
    x = torch.randn(1, 3, 160, 160)
    lst = models.inception_resnet_v2(features_only=True, out_indices=(1, 3)).eval()
    dct = models.inception_resnet_v2(features_only=True, out_indices=(1, 3), feature_cls="dict").eval()
    dct.load_state_dict(lst.state_dict())
    with torch.no_grad():
        a, b = lst(x), dct(x)
    assert list(b) == ["conv2d_4a", "repeat_1"] == lst.feature_info.module_name()
    assert all(torch.equal(u, v) for u, v in zip(a, b.values()))
    assert lst.pretrained_cfg is lst.default_cfg and lst.pretrained_cfg["input_size"] == (3, 299, 299)
    with pytest.raises(ValueError, match="feature_cls 'hook' is not supported"):
        models.googlenet(features_only=True, feature_cls="hook")
    with pytest.raises(TypeError, match="features_only=True"):
        models.googlenet(out_indices=(1,))


def test_registered_with_timm():
    assert TIMM_NAMES == ["inception_fast_" + n for n in NAMES]
    assert "inception_fast_inception_v3.tf_adv_in1k" in timm.list_models("inception_fast_*", pretrained=True)
    m = timm.create_model("inception_fast_inception_v3.tf_in1k", num_classes=0, device="meta")
    assert isinstance(m, models.Inception3) and m.AuxLogits is None and m.pretrained_cfg["tag"] == "tf_in1k"
    config = timm.data.resolve_data_config({}, model=m)
    assert config["interpolation"] == "bicubic" and config["input_size"] == (3, 299, 299)
    assert timm.create_model("inception_fast_googlenet", aux_logits=True, device="meta").aux1 is not None


@pytest.mark.parametrize("name", ["googlenet", "inception_v4", "bn_inception"])
def test_fx_with_timm_leaves_runs_fused(name):
    # timm's leaf rules keep our fused layers whole: the traced model calls them, and gives the fused
    # model's numbers bit for bit; plain torch.fx traces the reference path.
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    m = models.create_model(name, num_classes=10).eval()
    side = m.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, side, side)
    # timm's _create_fx_model, as its tests build it
    tracer_kwargs = dict(leaf_modules=timm.models.get_notrace_modules(),
                         autowrap_functions=timm.models.get_notrace_functions(), param_shapes_constant=True)
    gm = create_feature_extractor(m, return_nodes=[get_graph_node_names(m, tracer_kwargs=tracer_kwargs)[1][-1]],
                                  tracer_kwargs=tracer_kwargs)
    calls = {type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"}
    plain = torch.fx.symbolic_trace(m)
    ref = models.create_model(name, num_classes=10).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        got, = gm(x).values()
        if name == "bn_inception":  # the model is its own path switch: traced, it is the reference path
            assert "ConvBNReLU" not in calls and torch.allclose(got, m(x), rtol=1e-4, atol=1e-6)
        else:
            assert "ConvBNReLU" in calls and torch.equal(got, m(x))
        assert torch.allclose(plain(x), ref.set_fused(False)(x), rtol=1e-5, atol=1e-6)
    assert not any("bn_relu" in str(n.target) for n in plain.graph.nodes)


SUITE = os.environ.get("INCEPTION_FAST_TIMM_TESTS")


@pytest.mark.skipif(not SUITE, reason="INCEPTION_FAST_TIMM_TESTS does not name timm's tests/test_models.py (CI sets it)")
@pytest.mark.parametrize("test", ["test_model_forward_intermediates", "test_model_forward_intermediates_features",
                                  "test_prune_intermediate_layers_contract"])
@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_suite_by_family(test, name):
    # timm collects these by model family (its own module names); they run on ours as they are.
    spec = importlib.util.spec_from_file_location("timm_test_models", SUITE)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    fn = getattr(suite, test)
    fn(name) if test == "test_prune_intermediate_layers_contract" else fn(name, 1)
