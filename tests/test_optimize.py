"""inception_fast.optimize(): the compiled inference model against the peer, and the block
descriptions it compiles against the blocks' own forward.

- every block's `branches()` (BranchBlock, BN-Inception's flat blocks) computes what its forward does;
- optimize(model) for all six models, with the peer's random weights (randomised BatchNorm), at the
  native input and a small one: fp32 rel. err < 1e-4, bf16 < 1e-2 with the same top-1;
- the compiled model takes NCHW and channels_last float32 input and returns float32; the model given
  is left unchanged; NaN in gives NaN out; training and wrong inputs are refused with clear errors.
"""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

from _helpers import rel_err
from _peers import CASE_IDS, CASES, MODEL_CASES, MODEL_IDS, pair
from inception_fast import models, optimize
from inception_fast.layers import BranchBlock, ResidualBlock, run_branches
from inception_fast.models.bn_inception import BLOCKS as BN_BLOCKS
from inception_fast.optimize import FoldedConv, FusedBranches, FusedResidual, OptimizedModel


def _block_inputs(model, side):
    """{name: (block, its input)} for every BranchBlock of the model at side x side (batch 2)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: seen.setdefault(n, (m, args[0].clone())) and None)
             for n, m in model.named_modules() if isinstance(m, BranchBlock)]
    with torch.no_grad():
        model.forward_features(torch.randn(2, 3, side, side))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_block_descriptions_match_the_forward(case):
    """What optimize() compiles is what the block computes: branches() against forward, reference path."""
    _, ours = pair(case)
    net = copy.deepcopy(ours).set_fused(False)
    if case.name == "bn_inception":
        inputs, run_block = {}, net._block

        def record(x, spec):
            inputs[spec.name] = x.clone()
            return run_block(x, spec)

        net._block = record
        with torch.no_grad():
            net.forward_features(torch.randn(2, 3, case.native, case.native))
        del net._block
        assert len(inputs) == len(BN_BLOCKS) == 10
        for b in BN_BLOCKS:
            with torch.no_grad():
                assert torch.equal(run_branches(net.branches(b), inputs[b.name]), net._block(inputs[b.name], b)), b.name
        return
    blocks = _block_inputs(net, case.native)
    assert len(blocks) >= {"googlenet": 9, "inception_v3": 11, "inception_v4": 17}.get(case.name, 4)
    for name, (block, x) in blocks.items():
        with torch.no_grad():
            mixed = run_branches(block.branches(), x)
            if isinstance(block, ResidualBlock):
                mixed = block.residual(x.clone(), block.conv2d(mixed))
            assert torch.equal(mixed, block(x.clone())), name


def _side(case, size):
    return case.native if size == "native" else (case.small or case.own_small)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("size", ["native", "small"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_optimized_matches_peer(case, size, dtype):
    peer, ours = pair(case)
    side = _side(case, size)
    torch.manual_seed(1)
    x = torch.randn(4, 3, side, side)
    # Where the peer does not run at the small size (BN-Inception's fixed pool), our reference path.
    reference = peer if size == "native" or case.small else copy.deepcopy(ours).set_fused(False)
    with torch.no_grad():
        ref = reference(x)
    net = optimize(ours, dtype=dtype)
    y = net(x)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    if dtype == torch.float32:
        assert rel_err(y, ref) < 1e-4
    else:
        # bf16 rounding grows with depth and with the conditioning of the weights: torchvision's
        # random Inception-v3 init drives activations to 1e9-1e14, where eager bf16 itself is 2-4e-2
        # off. The bound: 1e-2, or the error of the same model cast to bf16 in eager, if larger.
        with torch.no_grad():
            eager_bf16 = copy.deepcopy(reference).to(torch.bfloat16)(x.bfloat16()).float()
        assert rel_err(y, ref) < max(1e-2, rel_err(eager_bf16, ref))
        if ref.dim() == 2 and ref.shape[1] > 1 and case.name != "inception_resnet_v1":
            assert torch.equal(y.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_optimized_structure(case):
    """Every conv-BN-ReLU is folded, the blocks are compiled, the 1x1s of a block are merged."""
    _, ours = pair(case)
    net = optimize(ours)
    mods = list(net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mods)
    assert not any(isinstance(m, BranchBlock) for m in mods)
    fused = [m for m in mods if isinstance(m, FusedBranches)]
    assert fused and all(isinstance(m, FoldedConv) or not isinstance(m, nn.Conv2d) for m in mods)
    merged = [m.merged for m in fused if m.merged is not None and len(m.sizes) > 1]
    assert merged, "no block had its 1x1 convs merged"
    if "resnet" in case.name:
        assert any(isinstance(m, FusedResidual) for m in mods)
    for m in merged:
        assert m.out_channels == sum(next(f for f in fused if f.merged is m).sizes)


# Blocks whose branches all start at the block input (the op's forms), per model.
BRANCH_CONV_BLOCKS = {"googlenet": 9, "bn_inception": 8, "inception_v3": 7, "inception_v4": 12,
                      "inception_resnet_v1": 21, "inception_resnet_v2": 41}


def _branch_conv_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "inception_fast::branch_conv")


@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_blocks_as_branch_conv(case, dtype):
    # optimize(branch_conv=True): each block of the op's forms is one branch_conv call, with the
    # numbers of the composition it replaces (the default).
    _, ours = pair(case)
    net = optimize(ours, dtype=dtype, branch_conv=True)
    plain = optimize(ours, dtype=dtype)
    x = torch.randn(2, 3, case.own_small, case.own_small)
    with torch.no_grad():
        assert _branch_conv_calls(lambda: net(x)) == BRANCH_CONV_BLOCKS[case.name]
        assert _branch_conv_calls(lambda: plain(x)) == 0
        assert rel_err(net(x), plain(x)) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_optimize_leaves_the_model_alone():
    torch.manual_seed(0)
    model = models.inception_v3(aux_logits=False, init_weights=False).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        ref = model(x)
    net = optimize(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert net.pretrained_cfg == model.pretrained_cfg and net.num_classes == model.num_classes
    # NCHW and channels_last inputs, forward_features and forward_head
    y_cl = net(x.contiguous(memory_format=torch.channels_last))
    assert rel_err(net(x), ref) < 1e-4 and rel_err(y_cl, ref) < 1e-4
    feats = net.forward_features(x)
    assert feats.dtype == torch.float32 and feats.shape == (2, 2048, 1, 1)
    assert rel_err(net.forward_head(feats), ref) < 1e-4


def test_nan_in_nan_out():
    """As eager: a NaN in an image makes every output of that image NaN, and only of that image."""
    torch.manual_seed(0)
    model = models.googlenet(init_weights=False, aux_logits=False).eval()
    net = optimize(model)
    x = torch.randn(2, 3, 64, 64)
    x[1, 0, 10, 10] = float("nan")
    with torch.no_grad():
        expected = copy.deepcopy(model).set_fused(False)(x)
    y = net(x)
    assert torch.isfinite(y[0]).all() and torch.isnan(expected[1]).all()
    assert torch.isnan(y[1]).all()
    assert torch.isnan(net.forward_features(x)[1]).all() and torch.isfinite(net.forward_features(x)[0]).all()


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_without_native_support_warns_once_naming_float32(monkeypatch, native):
    """On a CPU without bfloat16 arithmetic oneDNN emulates it, slower than float32: optimize() says so."""
    import sys
    impl = sys.modules["inception_fast.optimize"]
    monkeypatch.setattr(impl, "cpu_has_native_bf16", lambda: native)
    impl._warn_emulated_bf16.cache_clear()
    model = models.googlenet(init_weights=False, aux_logits=False).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimize(model, dtype=torch.bfloat16)
        optimize(model, dtype=torch.bfloat16)
        optimize(model)
    said = [str(w.message) for w in caught if "no bfloat16 arithmetic" in str(w.message)]
    assert len(said) == (0 if native else 1), said
    assert native or "float32" in said[0]
    impl._warn_emulated_bf16.cache_clear()


def test_bad_use_is_refused():
    torch.manual_seed(0)
    model = models.googlenet(init_weights=False, aux_logits=False).eval()
    net = optimize(model)
    assert isinstance(net, OptimizedModel) and not net.training
    with pytest.raises(RuntimeError, match="inference only"):
        net.train()
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 15"):
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="3 input channels"):
        net(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match="float16.*GPU"):
        optimize(model, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        optimize(model, dtype=torch.float64)
    no_stats = models.googlenet(init_weights=False, aux_logits=False)
    no_stats.conv1.bn.running_mean = None
    no_stats.conv1.bn.running_var = None
    with pytest.raises(ValueError, match="running statistics"):
        optimize(no_stats)
    with pytest.raises(ValueError, match="must be on a GPU"):
        optimize(model, cuda_graph=True)


def test_cudnn_fused_is_set_on_every_folded_convolution_and_leaves_the_cpu_path_alone():
    torch.manual_seed(0)
    model = models.create_model("inception_resnet_v2", num_classes=10).eval()
    fused = optimize(model, cudnn_fused=True)
    plain = optimize(model)
    convs = [m for m in fused.modules() if isinstance(m, FoldedConv)]
    assert convs and all(m.cudnn_fused for m in convs)
    assert not any(m.cudnn_fused for m in plain.modules() if isinstance(m, FoldedConv))
    x = torch.randn(2, 3, 75, 75)
    assert torch.equal(fused(x), plain(x))  # a GPU-only switch: the CPU kernels are the same


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("cudnn_fused", [False, True], ids=["conv2d", "cudnn_fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=MODEL_IDS)
def test_optimized_matches_peer_cuda(case, dtype, cudnn_fused):
    peer, ours = pair(case)
    x = torch.randn(4, 3, case.native, case.native, device="cuda")
    with torch.no_grad():
        ref = copy.deepcopy(peer).cuda()(x)
    y = optimize(copy.deepcopy(ours).cuda(), dtype=dtype, cudnn_fused=cudnn_fused)(x)
    assert y.dtype == torch.float32 and y.device == x.device
    # float32 convolutions on cuDNN may run in TF32 (torch's default for cuDNN), in the peer too
    assert rel_err(y, ref) < (5e-3 if dtype == torch.float32 else 2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", ["googlenet", "inception_v3", "inception_resnet_v2"])
def test_cuda_graph_replays_the_model(name):
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10).eval().cuda()
    eager = optimize(model, dtype=torch.bfloat16)
    graphed = optimize(model, dtype=torch.bfloat16, cuda_graph=True)
    for shape in [(2, 3, 96, 96), (2, 3, 96, 96), (3, 3, 107, 107), (2, 3, 96, 96)]:  # replays and a recapture
        x = torch.randn(shape, device="cuda")
        y, ref = graphed(x), eager(x)
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert rel_err(y, ref) < 1e-6  # the same kernels, replayed
    assert len(graphed._graphs.graphs) == 2
    x = torch.randn(2, 3, 96, 96, device="cuda")
    first = graphed(x)
    graphed(torch.randn_like(x))
    assert torch.equal(first, graphed(x))  # the output is the caller's, not the graph's buffer
    x[1, 0, 5, 5] = float("nan")
    assert graphed(x)[1].isnan().all() and not graphed(x)[0].isnan().any()
    assert copy.deepcopy(graphed)(x).shape == first.shape  # a copy captures its own graphs


def test_the_onednn_extension_is_built_where_onednn_is_installed():
    """optimize()'s kept oneDNN primitives (inception_fast._onednn) load wherever oneDNN's wheels are
    installed: a missing build step fails here instead of falling back to ATen's path."""
    import os
    import sys

    from inception_fast import _ext

    if not (os.path.exists(os.path.join(sys.prefix, "include", "dnnl.hpp"))
            and os.path.exists(os.path.join(sys.prefix, "lib", "libdnnl.so.3"))):
        pytest.skip("oneDNN's wheels (onednn-cpu-gomp, onednn-devel-cpu-gomp) are not installed here")
    assert _ext.onednn_loaded(), _ext.ONEDNN_ERROR
