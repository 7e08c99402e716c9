"""Whole models: inference (eval) and a training step (forward + backward + SGD step), the reference
path ("eager": plain Conv2d/BatchNorm2d/ReLU/cat), the fused path and the peer (torchvision / timm /
facenet-pytorch / pretrainedmodels), side by side in one run, with each contestant's error.

CPU: fp32, NCHW, inference at batch 8 at the native size, training at batch 8 at 75x75 (the seeds'
fine-tuning size; BN-Inception at 64, a side it takes). pytest-benchmark runs the contestants one after
the other: on a 2-core machine the allocator's and the caches' history moves a contestant by up to
~25%, so read ratios under 1.3x as "about even" unless a re-run agrees. GPU: bf16 channels_last inference at batch 1 and 256, AMP (bf16) training at batch
128. INCEPTION_FAST_BENCH_COMPILE=1 adds torch.compile of the reference path.
"""
import copy
import functools
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import QUICK, WITH_COMPILE, devices, run
from inception_fast import models

# The peer of each model, built with random weights and the configuration ours copies.
PEERS = {
    "googlenet": ("torchvision", lambda m: m.models.googlenet(weights=None, aux_logits=False, init_weights=False),
                  dict(aux_logits=False, init_weights=False)),
    "bn_inception": ("pretrainedmodels", lambda m: m.bninception(num_classes=1000, pretrained=None), {}),
    "inception_v3": ("torchvision", lambda m: m.models.inception_v3(weights=None, aux_logits=False, init_weights=False),
                     dict(aux_logits=False, init_weights=False)),
    "inception_v4": ("timm", lambda m: m.create_model("inception_v4"), {}),
    "inception_resnet_v1": ("facenet_pytorch", lambda m: m.InceptionResnetV1(pretrained=None, classify=True,
                                                                             num_classes=1000),
                            dict(embedding_size=512)),
    "inception_resnet_v2": ("timm", lambda m: m.create_model("inception_resnet_v2"), {}),
}
# Quick mode (CI): every model and contestant runs once on a tiny batch, so a broken benchmark fails.
MODEL_NAMES = list(PEERS)
CONTESTANTS = ["eager", "fused", "peer"] + (["compile"] if WITH_COMPILE else [])


def _peer(name):
    """The peer with random weights, or None (with the reason) when it cannot be imported."""
    module, build, _ = PEERS[name]
    try:
        return build(importlib.import_module(module)), None
    except Exception as e:  # noqa: BLE001 - an uninstallable peer is reported, not fatal
        return None, f"peer {module} not available: {type(e).__name__}: {e}"


def _randomise(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


_cache = {}


def _pair(name):
    """(ours, peer) with the same random weights, eval mode, CPU fp32; peer None when it is not
    installed (then only its own contestant is skipped)."""
    if name not in _cache:
        torch.manual_seed(0)
        peer, why = _peer(name)
        ours = models.create_model(name, **PEERS[name][2]).eval()
        if peer is not None:
            peer = _randomise(peer).eval()
            ours.load_state_dict(peer.state_dict(), strict=True)
        else:
            _randomise(ours)
        _cache[name] = (ours, peer, why)
    return _cache[name]


def _model(name, contestant, device, dtype=torch.float32, channels_last=False):
    ours, peer, why = _pair(name)
    if contestant == "peer" and peer is None:
        pytest.skip(why)
    net = copy.deepcopy(peer if contestant == "peer" else ours)
    if contestant in ("eager", "compile"):
        net.set_fused(False)
    elif contestant == "fused":
        net.set_fused(True)
    net = net.to(device=device, dtype=dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if contestant == "compile":
        net = torch.compile(net)
    return net


@functools.lru_cache(maxsize=None)
def _flops_per_image(name, size):
    """Forward FLOPs (2 per multiply-add) of one image, counted on the reference path."""
    ours = _pair(name)[0]
    net = copy.deepcopy(ours).set_fused(False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def _flops(name, x):
    return _flops_per_image(name, x.shape[-1]) * x.shape[0]


def _rel_err(y, ref):
    y, ref = y.detach().double().cpu(), ref.detach().double().cpu()
    return ((y - ref).norm() / ref.norm()).item()


def _cases(kind):
    out = []
    for device in devices():
        if device == "cpu":
            configs = [(2, 75) if QUICK else (8, None)] if kind == "infer" else [(2, 75) if QUICK else (8, 75)]
            out += [(device, "float32", False, b, s) for b, s in configs]
        else:
            configs = [(1, None), (256, None)] if kind == "infer" else [(128, None)]
            out += [(device, "bfloat16", True, b, s) for b, s in configs]
    return out


def _case_id(case):
    device, dtype, cl, batch, size = case
    return f"{device}-{dtype}-{'cl' if cl else 'nchw'}-b{batch}" + (f"-{size}px" if size else "")


# A small input each model takes (BN-Inception takes sides 32k-1 .. 32k+6 only).
SMALL = {"bn_inception": 64}


def _size(name, size):
    if size is None:
        return _native(name)
    return SMALL.get(name, size) if size == 75 else size


def _native(name):
    return _pair(name)[0].pretrained_cfg["input_size"][-1]


@pytest.mark.parametrize("contestant", CONTESTANTS)
@pytest.mark.parametrize("case", _cases("infer"), ids=_case_id)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inference(benchmark, name, case, contestant):
    device, dtype_name, channels_last, batch, size = case
    dtype = getattr(torch, dtype_name)
    size = _size(name, size)
    if contestant == "peer" and name == "bn_inception" and size < 223:
        pytest.skip("pretrainedmodels' bninception classifies only 223..230-pixel inputs (a fixed 7x7 pool)")
    benchmark.group = f"model infer {name} {device}-{dtype_name}-{'cl' if channels_last else 'nchw'}-b{batch} {size}px"
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    net = _model(name, contestant, device, dtype, channels_last)
    ref_net = _model(name, "eager", device, torch.float32, channels_last)
    with torch.no_grad():
        ref = ref_net(x)
        del ref_net
        xd = x.to(dtype)

        def step():
            return net(xd)

        err = _rel_err(step(), ref)
        run(benchmark, step, device, rounds=1 if QUICK else (10 if device == "cuda" else 5),
            contestant=contestant, model=name, kind="inference", batch=batch, size=size, dtype=dtype_name,
            layout="channels_last" if channels_last else "nchw", flops=_flops(name, x), images=batch, rel_err=err)


@pytest.mark.parametrize("contestant", CONTESTANTS)
@pytest.mark.parametrize("case", _cases("train"), ids=_case_id)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_step(benchmark, name, case, contestant):
    device, dtype_name, channels_last, batch, size = case
    size = _size(name, size)
    if contestant == "peer" and name == "bn_inception" and size < 223:
        pytest.skip("pretrainedmodels' bninception classifies only 223..230-pixel inputs (a fixed 7x7 pool)")
    benchmark.group = f"model train {name} {device}-{dtype_name}-{'cl' if channels_last else 'nchw'}-b{batch} {size}px"
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    net = _model(name, contestant, device, torch.float32, channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    amp = device == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, target)
        loss.backward()
        opt.step()
        return loss

    # The error beside the speed: the first step's loss against the reference path's, with the same
    # dropout masks (the peers draw them in the same order as ours).
    ref_net = _model(name, "eager", device, torch.float32, channels_last).train()
    torch.manual_seed(1)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
        out = ref_net(x)
    ref_loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, target)
    del ref_net
    torch.manual_seed(1)
    err = _rel_err(step(), ref_loss)
    run(benchmark, step, device, rounds=1 if QUICK else (10 if device == "cuda" else 5),
        contestant=contestant, model=name, kind="training step", batch=batch, size=size,
        dtype="bf16 autocast" if amp else "float32", layout="channels_last" if channels_last else "nchw",
        flops=3 * _flops(name, x), images=batch, rel_err=err)
