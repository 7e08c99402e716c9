"""Inception blocks, one of each kind of every model: inference (eval) and a training step (forward +
backward, no optimizer), the reference path ("eager") vs the fused path (and torch.compile of the
reference path for the models INCEPTION_FAST_BENCH_COMPILE names), side by side in one run, each with its
error against the reference path.

Inference also times the block as optimize() compiles it ("optimized": BatchNorm folded, the 1x1s
merged into one GEMM, ReLU and residual add as convolution post-ops, channels_last), and as
optimize(branch_conv=True) runs it where it is of the op's forms ("branch_conv": the C++ kernel on the
CPU, the Triton kernels on a GPU, against the oneDNN / cuDNN convolutions of "optimized").

Each block is timed on the input it gets inside its model at the model's native size (quick mode:
75x75, BN-Inception 64) with the peer's random weights: CPU fp32 NCHW at batch 8, GPU bf16
channels_last at batch 64 (training under bf16 autocast). These are the places branch_conv and the
merged 1x1 GEMMs act on, so this is where their gains and losses show first.
"""
import contextlib
import copy
import functools

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import QUICK, WITH_COMPILE, compile_wanted, devices, run
from zoo import MODEL_NAMES, contestant_of, pair, rel_err, size_of

from inception_fast import ops
from inception_fast.layers import apply_layer  # a block as its model runs it (1x1s merged on the fused path)

# (model, module path or "block:<name>" for BN-Inception's flat blocks, what kind of block it is)
BLOCKS = [
    ("googlenet", "inception3a", "Inception 28x28"),
    ("googlenet", "inception4e", "Inception 14x14"),
    ("bn_inception", "block:inception_3a", "Inception avg-pool"),
    ("bn_inception", "block:inception_3c", "grid reduction"),
    ("inception_v3", "Mixed_5b", "InceptionA"),
    ("inception_v3", "Mixed_6a", "InceptionB (reduction)"),
    ("inception_v3", "Mixed_6b", "InceptionC (7x1/1x7)"),
    ("inception_v3", "Mixed_7a", "InceptionD (reduction)"),
    ("inception_v3", "Mixed_7b", "InceptionE"),
    ("inception_v4", "features.6", "InceptionA"),
    ("inception_v4", "features.10", "ReductionA"),
    ("inception_v4", "features.11", "InceptionB"),
    ("inception_v4", "features.18", "ReductionB"),
    ("inception_v4", "features.19", "InceptionC"),
    ("inception_resnet_v1", "repeat_1.0", "Block35"),
    ("inception_resnet_v1", "repeat_2.0", "Block17"),
    ("inception_resnet_v1", "block8", "Block8 (no ReLU)"),
    ("inception_resnet_v2", "mixed_5b", "Mixed_5b"),
    ("inception_resnet_v2", "repeat.0", "Block35"),
    ("inception_resnet_v2", "mixed_6a", "Mixed_6a (reduction)"),
    ("inception_resnet_v2", "repeat_1.0", "Block17"),
    ("inception_resnet_v2", "mixed_7a", "Mixed_7a (reduction)"),
    ("inception_resnet_v2", "repeat_2.0", "Block8"),
]
BLOCKS = sorted((b for b in BLOCKS if b[0] in MODEL_NAMES), key=lambda b: MODEL_NAMES.index(b[0]))  # as the models
CONTESTANTS = ["eager", "fused"] + (["compile"] if WITH_COMPILE else [])


class _FlatBlock(nn.Module):
    """One of BN-Inception's blocks as a module (the peer keeps its layers flat on the model)."""

    def __init__(self, model, name):
        super().__init__()
        from inception_fast.models.bn_inception import BLOCKS as SPECS

        self.model = model
        self.spec = next(b for b in SPECS if b.name == name)

    def forward(self, x):
        return self.model._block(x, self.spec)


def _module(name, path):
    ours = pair(name)[0]
    return _FlatBlock(ours, path.split(":")[1]) if path.startswith("block:") else ours.get_submodule(path)


@functools.lru_cache(maxsize=None)
def _input_shape(name, path, side):
    """The shape of the block's input (batch 1) inside its model at side x side."""
    ours = copy.deepcopy(pair(name)[0]).set_fused(False)
    seen = {}
    if path.startswith("block:"):
        block_name, run_block = path.split(":")[1], ours._block

        def record(x, spec):
            seen.setdefault(spec.name, tuple(x.shape))
            return run_block(x, spec)

        ours._block = record
        key = block_name
    else:
        def hook(module, args):
            seen.setdefault(path, tuple(args[0].shape))

        ours.get_submodule(path).register_forward_pre_hook(hook)
        key = path
    with torch.no_grad():
        ours.forward_features(torch.randn(1, 3, side, side))
    return tuple(seen[key])


@functools.lru_cache(maxsize=None)
def _flops_per_image(name, path, side):
    block = contestant_of(_module(name, path), "eager", "cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        block(torch.randn(_input_shape(name, path, side)))
    return counter.get_total_flops()


def _cases():
    out = []
    for device in devices():
        if device == "cpu":
            out.append((device, "float32", False, 2 if QUICK else 8))
        else:
            out.append((device, "bfloat16", True, 64))
    return out


def _case_id(case):
    device, dtype, cl, batch = case
    return f"{device}-{dtype}-{'cl' if cl else 'nchw'}-b{batch}"


def _setup(name, path, case, contestant, train):
    device, dtype_name, channels_last, batch = case
    side = size_of(name, 75 if QUICK else None)
    shape = (batch,) + _input_shape(name, path, side)[1:]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # Training keeps float32 weights under autocast; inference runs the weights in the dtype.
    wdtype = torch.float32 if train else getattr(torch, dtype_name)
    mode = (lambda m: m.train()) if train else (lambda m: m.eval())
    net = mode(contestant_of(_module(name, path), contestant, device, wdtype, channels_last))
    ref = mode(contestant_of(_module(name, path), "eager", device, torch.float32, channels_last))
    extra = dict(model=name, block=path, batch=batch, size=side, layout="channels_last" if channels_last else "nchw",
                 images=batch, flops=(3 if train else 1) * _flops_per_image(name, path, side) * batch)
    return device, dtype_name, x, net, ref, extra


def _ids(block):
    return f"{block[0]}.{block[1].split(':')[-1]}"


def _optimized(name, path, device, dtype, x):
    """The block as optimize() compiles it (BN folded, 1x1s merged, post-ops), channels_last."""
    from inception_fast.optimize import FusedBranches, compile_unit

    block = _module(name, path)
    net = FusedBranches(block.model.branches(block.spec)) if isinstance(block, _FlatBlock) else \
        compile_unit(copy.deepcopy(block).eval())
    net = net.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    return net, x.to(dtype).contiguous(memory_format=torch.channels_last)


# On a GPU, also branch_conv's CUDA C++ kernels (the fused reduce + k x k tile), which the op runs
# under use_backend("cuda") until timed here against the Triton ones (its default).
BRANCH_CONV = ["branch_conv"] + (["branch_conv_cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("contestant", CONTESTANTS + ["optimized"] + BRANCH_CONV)
@pytest.mark.parametrize("case", _cases(), ids=_case_id)
@pytest.mark.parametrize("block", BLOCKS, ids=_ids)
def test_block_inference(benchmark, block, case, contestant):
    name, path, kind = block
    if contestant == "compile" and not compile_wanted(name):
        pytest.skip("torch.compile is timed for the models INCEPTION_FAST_BENCH_COMPILE names")
    if contestant == "branch_conv_cuda" and case[0] != "cuda":
        pytest.skip("branch_conv's CUDA C++ kernels run on CUDA tensors")
    device, dtype_name, x, net, ref, extra = _setup(name, path, case, "eager" if contestant in ["optimized"] + BRANCH_CONV
                                                    else contestant, train=False)
    benchmark.group = f"block infer {_ids(block)} [{kind}] {_case_id(case)} in {tuple(x.shape[1:])}"
    with torch.no_grad():
        expected = ref(x)
        del ref
        xd = x.to(getattr(torch, dtype_name))
        if contestant in ["optimized"] + BRANCH_CONV:
            net, xd = _optimized(name, path, device, getattr(torch, dtype_name), x)
            if contestant in BRANCH_CONV:
                if getattr(net, "_bc_args", None) is None:
                    pytest.skip("not a block of branch_conv's forms (a grid reduction or a forking block)")
                net.use_branch_conv = True
        backend = ops.use_backend("cuda") if contestant == "branch_conv_cuda" else contextlib.nullcontext()
        with backend:
            err = rel_err(apply_layer(net, xd), expected)
            run(benchmark, lambda: apply_layer(net, xd), device, rounds=1 if QUICK else (20 if device == "cuda" else 10),
                contestant=contestant, kind="inference", dtype=dtype_name, rel_err=err, **extra)


@pytest.mark.parametrize("contestant", CONTESTANTS)
@pytest.mark.parametrize("case", _cases(), ids=_case_id)
@pytest.mark.parametrize("block", BLOCKS, ids=_ids)
def test_block_training(benchmark, block, case, contestant):
    name, path, kind = block
    if contestant == "compile" and not compile_wanted(name):
        pytest.skip("torch.compile is timed for the models INCEPTION_FAST_BENCH_COMPILE names")
    device, dtype_name, x, net, ref, extra = _setup(name, path, case, contestant, train=True)
    benchmark.group = f"block train {_ids(block)} [{kind}] {_case_id(case)} in {tuple(x.shape[1:])}"
    amp = device == "cuda"
    grad_out = None

    def step(module):
        nonlocal grad_out
        xr = x.detach().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            y = apply_layer(module, xr)
        if grad_out is None:
            grad_out = torch.randn_like(y, dtype=torch.float32)
        y.backward(grad_out.to(y.dtype))
        return xr.grad

    # The error beside the speed: the input gradient of the first step against the reference path's.
    expected = step(ref)
    del ref
    err = rel_err(step(net), expected)
    for p in net.parameters():
        p.grad = None
    run(benchmark, lambda: step(net), device, rounds=1 if QUICK else (20 if device == "cuda" else 10),
        contestant=contestant, kind="training step", dtype="bf16 autocast" if amp else "float32",
        rel_err=err, **extra)
