"""timm's feature-extraction contract for the six models, on both paths: feature_info against what
forward_intermediates returns, forward_intermediates against forward_features and (v3, v4, IR-v2)
against timm's own forward_intermediates on the same weights, prune_intermediate_layers, and
create_model(features_only=True, out_indices=...), with gradients."""
import copy
import math

import pytest
import torch

from _helpers import rel_err
from _peers import CASE_IDS, CASES, MODEL_CASES, MODEL_IDS, pair
from inception_fast import models

PATHS = [True, False]


def _model(case, fused):
    return copy.deepcopy(pair(case)[1]).set_fused(fused)


@pytest.mark.parametrize("fused", PATHS, ids=["fused", "reference"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_feature_info_matches_the_intermediates(case, fused):
    net = _model(case, fused)
    torch.manual_seed(1)
    nominal = 224 if case.native == 224 else 299  # the geometry timm's nominal reductions describe
    for size in (nominal, case.own_small):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            final, inter = net.forward_intermediates(x)
            feats = net.forward_features(x)
        assert rel_err(final, feats) < 1e-6
        assert [t.shape[1] for t in inter] == [f["num_chs"] for f in net.feature_info]
        assert [f["module"] for f in net.feature_info] == [m for m, _, _ in net.feature_taps]
        if size == nominal:  # the nominal reductions 2, 4, 8, 16, 32 (299 -> 149, 71, 35, 17, 8)
            for t, f in zip(inter, net.feature_info):
                assert 2 ** round(math.log2(size / t.shape[-1])) == f["reduction"], (t.shape, f)
        assert inter[-1] is final or torch.equal(inter[-1], final)


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_indices_stop_early_and_intermediates_only(case):
    net = _model(case, True)
    x = torch.randn(1, 3, case.own_small, case.own_small)
    with torch.no_grad():
        _, every = net.forward_intermediates(x)
        last2 = net.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = net.forward_intermediates(x, indices=[0, -2], stop_early=True, intermediates_only=True)
        final, early = net.forward_intermediates(x, indices=[1], stop_early=True)
    assert [torch.equal(a, b) for a, b in zip(last2, every[-2:])] == [True, True]
    assert torch.equal(picked[0], every[0]) and torch.equal(picked[1], every[-2])
    assert torch.equal(early[0], every[1]) and torch.equal(final, every[1])  # stopped at the stage asked for
    with pytest.raises(ValueError, match="out of range"):
        net.forward_intermediates(x, indices=[7])
    with pytest.raises(ValueError, match="output_fmt"):
        net.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("case", [c for c, i in zip(CASES, CASE_IDS) if i in
                                  ("inception_v3-timm", "inception_v4", "inception_resnet_v2")],
                         ids=["inception_v3", "inception_v4", "inception_resnet_v2"])
@pytest.mark.parametrize("fused", PATHS, ids=["fused", "reference"])
def test_same_intermediates_as_timm(case, fused):
    peer, ours = pair(case)
    ours = copy.deepcopy(ours).set_fused(fused)
    assert [(f["module"], f["num_chs"], f["reduction"]) for f in ours.feature_info] == \
        [(f["module"], f["num_chs"], f["reduction"]) for f in peer.feature_info]
    x = torch.randn(2, 3, case.small, case.small)
    with torch.no_grad():
        got = ours.forward_intermediates(x, intermediates_only=True)
        want = peer.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_prune_intermediate_layers(case):
    net = _model(case, True)
    x = torch.randn(1, 3, case.own_small, case.own_small)
    with torch.no_grad():
        _, every = net.forward_intermediates(x)
    kept = net.prune_intermediate_layers((0, 2))
    assert kept == [0, 2]
    assert net.num_features == net.feature_info[2]["num_chs"]
    assert isinstance(net.get_classifier(), torch.nn.Identity)
    assert not getattr(net, "aux_logits", False)
    with torch.no_grad():
        assert torch.equal(net.forward_features(x), every[2])
        out = net(x)  # the head pruned: forward returns the map it ends on
    assert torch.equal(out, every[2])


@pytest.mark.parametrize("fused", PATHS, ids=["fused", "reference"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_features_only(case, fused):
    torch.manual_seed(0)
    full = models.create_model(case.name, **case.kwargs).eval()
    feats = models.create_model(case.name, features_only=True, out_indices=(1, 3, 4), **case.kwargs)
    feats.model.load_state_dict(full.state_dict(), strict=False)
    feats.model.set_fused(fused), full.set_fused(fused)
    assert feats.feature_info.channels() == [full.feature_info[i]["num_chs"] for i in (1, 3, 4)]
    assert feats.feature_info.reduction() == [4, 16, 32]
    x = torch.randn(2, 3, case.own_small, case.own_small)
    with torch.no_grad():
        got = feats.eval()(x)
        want = full.forward_intermediates(x, indices=[1, 3, 4], intermediates_only=True)
    assert len(got) == 3 and all(rel_err(a, b) < 1e-6 for a, b in zip(got, want))
    # training: every parameter of the stages it runs gets a gradient
    feats.train()
    sum(t.float().square().mean() for t in feats(x)).backward()
    missing = [n for n, p in feats.named_parameters() if p.requires_grad and p.grad is None
               and not n.startswith(("model.aux", "model.AuxLogits", "model.fc", "model.last_linear",
                                     "model.classif", "model.logits", "model.last_bn"))]
    assert not missing, missing[:5]


def test_timm_registration_and_helpers():
    timm = pytest.importorskip("timm", reason="timm is a test dependency")
    names = models.register_timm()
    assert sorted(names) == ["inception_fast_" + n for n in models.list_models()]
    assert set(names) <= set(timm.list_models("inception_fast_*"))
    assert models.register_timm() == names  # again: harmless
    assert "inception_v3" in timm.list_models("inception_v3")  # timm's own entries untouched
    assert type(timm.create_model("inception_v3")).__module__.startswith("timm.")
    m = timm.create_model("inception_fast_inception_v3", num_classes=10, aux_logits=False)
    assert isinstance(m, models.Inception3) and m.fc.out_features == 10
    cfg = timm.data.resolve_data_config({}, model=m)  # timm's helpers read our pretrained_cfg
    assert cfg["input_size"] == (3, 299, 299) and cfg["interpolation"] == "bilinear"
    f = timm.create_model("inception_fast_inception_resnet_v2", features_only=True, out_indices=(2, 4))
    with torch.no_grad():
        outs = f.eval()(torch.randn(1, 3, 75, 75))
    assert [o.shape[1] for o in outs] == f.feature_info.channels() == [320, 1536]


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_reference_path_is_fx_traceable(case):
    # torchvision's create_feature_extractor on the reference path (the input checks are FX leaves,
    # run on the real input): the stage maps it extracts are forward_intermediates'.
    fx = pytest.importorskip("torchvision.models.feature_extraction")
    net = _model(case, False)
    train_nodes, eval_nodes = fx.get_graph_node_names(net)
    assert eval_nodes and train_nodes
    x = torch.randn(1, 3, case.own_small, case.own_small)
    with torch.no_grad():
        want = net.forward_intermediates(x, intermediates_only=True)
    if case.name == "bn_inception":  # flat modules, no stage modules: the whole graph's output
        extractor = fx.create_feature_extractor(net, return_nodes={eval_nodes[-1]: "out"})
        with torch.no_grad():
            assert rel_err(extractor(x)["out"], net(x)) < 1e-6
        with pytest.raises(ValueError, match="32k-1"):
            extractor(torch.randn(1, 3, 80, 80))
        return
    taps = [f["module"] for f in net.feature_info]
    extractor = fx.create_feature_extractor(net, return_nodes={t: str(i) for i, t in enumerate(taps)})
    with torch.no_grad():
        got = extractor(x)
    for i, w in enumerate(want):
        assert rel_err(got[str(i)], w) < 1e-6, taps[i]
    with pytest.raises(ValueError, match="at least"):  # the checks still run in the traced module
        extractor(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("name", models.list_models())
def test_pretrained_cfg_claims_hold(name, in_chans):
    # The classifier it names exists with num_classes outputs; first_conv is the conv taking in_chans;
    # pool_size is the final feature map at input_size; num_features its channels.
    kw = {"transform_input": False} if name in ("googlenet", "inception_v3") else {}
    m = models.create_model(name, num_classes=7, in_chans=in_chans, **kw).eval()
    cfg = m.pretrained_cfg
    assert m.get_submodule(cfg["classifier"]) is m.get_classifier() and m.get_classifier().out_features == 7
    assert cfg["num_classes"] == 7
    assert m.get_submodule(cfg["first_conv"]).in_channels == in_chans
    side = cfg["input_size"][-1]
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, in_chans, side, side))
    assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"]) and feats.shape[1] == m.num_features
    for key in ("mean", "std", "crop_pct", "interpolation", "url"):
        assert key in cfg, key
    assert cfg["architecture"] == name and isinstance(cfg["tag"], str)
    timm = pytest.importorskip("timm")
    if name in timm.list_models():  # every field timm's own cfg of the model has
        assert set(timm.create_model(name, pretrained=False).pretrained_cfg) - {"url"} <= set(cfg)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("fused", PATHS, ids=["fused", "reference"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_torch_jit_script(case, fused, tmp_path):
    # torch.jit.script compiles the reference path's inference forward, whatever path the model is
    # set to: the same outputs as the model's reference path in eval mode, the model's own parameters
    # under the model's own state_dict keys, the input checks, a save/load round trip; the model is
    # left as it was. BN-Inception, whose layers are flat modules (its peer does not script), compiles
    # as torch.fx traces its reference path, with the same keys.
    net = _model(case, fused).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scripted = torch.jit.script(net)
    x = torch.randn(2, 3, case.own_small, case.own_small)
    with torch.no_grad():
        want = copy.deepcopy(net).set_fused(False)(x)
        assert rel_err(scripted(x), want) < 1e-5
        assert rel_err(net(x), want) < 1e-5  # the model still runs its own path
    own = net.state_dict()
    got = scripted.state_dict()
    assert set(got) <= set(own) and all(k.startswith(("AuxLogits.", "aux1.", "aux2.")) for k in set(own) - set(got))
    assert all(got[k].data_ptr() == own[k].data_ptr() for k in got)  # shared, not copied
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    side = net.min_input_size
    with pytest.raises(torch.jit.Error, match=f"at least {side}x{side}"):
        scripted(torch.randn(1, 3, side - 1, side - 1))
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(path))(x), scripted(x))


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward of fn() (what activation checkpointing saves)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.parametrize("fused", PATHS, ids=["fused", "reference"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_grad_checkpointing(case, fused):
    # set_grad_checkpointing(): a training step gives exactly the loss, gradients and BatchNorm
    # running statistics (num_batches_tracked + 1, not + 2) of a plain one, keeps less for the
    # backward, and is off in eval / under no_grad.
    plain = _model(case, fused).train()
    if case.name == "inception_v3":  # its auxiliary head needs a 299x299 input
        plain._drop_aux_heads()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    x = torch.randn(2, 3, case.own_small, case.own_small)
    target = torch.randint(0, 10, (2,))
    losses, saved = [], []
    for net in (plain, ckpt):
        torch.manual_seed(3)  # the same dropout masks
        out, nbytes = _saved_bytes(lambda: net(x))
        out = out[0] if isinstance(out, tuple) else out
        loss = out[:, :10].float().logsumexp(1).sub(out[torch.arange(2), target]).mean()
        loss.backward()
        losses.append(loss.item())
        saved.append(nbytes)
    assert losses[0] == losses[1]
    assert saved[1] < 0.75 * saved[0], saved  # each layer keeps its input only
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert rel_err(q.grad, p.grad) < 1e-6, name
    ref = plain.state_dict()
    for k, v in ckpt.state_dict().items():
        assert torch.equal(v, ref[k]), k
    ckpt.eval()
    with torch.no_grad():
        assert rel_err(ckpt(x), plain.eval()(x)) < 1e-6


@pytest.mark.parametrize("fused", PATHS, ids=["fused", "reference"])
@pytest.mark.parametrize("name", models.list_models())
def test_forward_backward_at_cfg_size_and_small(name, fused):
    # Training forward + backward at the cfg's input size (with the auxiliary heads where the model
    # has them) and at a small one: every parameter gets a finite gradient; then the classifier
    # interface's shapes (forward_features, forward_head, reset_classifier(0)).
    torch.manual_seed(0)
    net = models.create_model(name).train().set_fused(fused)
    side = net.pretrained_cfg["input_size"][-1]
    small = 64 if name == "bn_inception" else 75
    for size, batch in ((side, 2), (small, 2)):
        if size == small and getattr(net, "aux_logits", False):
            net._drop_aux_heads()  # v3's auxiliary head needs the 299x299 grid
        net.zero_grad(set_to_none=True)
        out = net(torch.randn(batch, 3, size, size))
        outs = list(out) if isinstance(out, tuple) else [out]
        sum(o.float().square().mean() for o in outs if o is not None).backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
        assert not missing, (size, missing[:5])
    net.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, small, small)
        feats = net.forward_features(x)
        assert feats.shape[:2] == (2, net.num_features)
        assert net.forward_head(feats, pre_logits=True).shape[0] == 2
        assert net.forward_head(feats).shape == (2, net.num_classes)
        net.reset_classifier(0)
        assert net(x).shape[0] == 2 and net.get_classifier() is not None
