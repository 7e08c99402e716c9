"""Whole models: inference (eval) and a training step (forward + backward + SGD step), the reference
path ("eager": plain Conv2d/BatchNorm2d/ReLU/cat), the fused path and the peer (torchvision / timm /
facenet-pytorch / pretrainedmodels), side by side in one run, with each contestant's error.

CPU: fp32, NCHW, inference at batch 8 at the native size, training at batch 8 at 75x75 (the seeds'
fine-tuning size; BN-Inception at 64, a side it takes). pytest-benchmark runs the contestants one after
the other: on a 2-core machine the allocator's and the caches' history moves a contestant by up to
~25%, so read ratios under 1.3x as "about even" unless a re-run agrees. GPU: bf16 channels_last inference at batch 1 and 256, AMP (bf16) training at batch
128. INCEPTION_FAST_BENCH_COMPILE=1 (or a comma-separated list of models) adds torch.compile of the
reference path (max-autotune on a GPU; on the CPU also with freezing). Inference also times
optimize() (float32 and bf16), ONNX Runtime and OpenVINO (f32 and bf16) on the CPU; on a GPU
optimize() plain, with CUDA graphs ("optimize_graph") and with CUDA graphs and cuDNN's fused ReLU
("optimize_cudnn_fused").
"""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import QUICK, WITH_COMPILE, compile_wanted, devices, run
from inception_fast.bench import without_dropout
from zoo import (INFER_ONLY, MODEL_NAMES, compile_freezing, inference_runner, model, pair, rel_err,
                 size_of)

CONTESTANTS = ["eager", "fused", "peer"] + (["compile"] if WITH_COMPILE else [])
INFER_CONTESTANTS = CONTESTANTS + (["compile_freezing"] if WITH_COMPILE else []) + INFER_ONLY


@functools.lru_cache(maxsize=None)
def _flops_per_image(name, size):
    """Forward FLOPs (2 per multiply-add) of one image, counted on the reference path."""
    ours = pair(name)[0]
    net = copy.deepcopy(ours).set_fused(False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def _flops(name, x):
    return _flops_per_image(name, x.shape[-1]) * x.shape[0]


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


@pytest.mark.parametrize("contestant", INFER_CONTESTANTS)
@pytest.mark.parametrize("case", _cases("infer"), ids=_case_id)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inference(benchmark, name, case, contestant):
    if contestant.startswith("compile") and not compile_wanted(name):
        pytest.skip("torch.compile is timed for the models INCEPTION_FAST_BENCH_COMPILE names")
    device, dtype_name, channels_last, batch, size = case
    dtype = getattr(torch, dtype_name)
    size = size_of(name, size)
    if contestant == "peer" and name == "bn_inception" and size < 223:
        pytest.skip("pretrainedmodels' bninception classifies only 223..230-pixel inputs (a fixed 7x7 pool)")
    benchmark.group = f"model infer {name} {device}-{dtype_name}-{'cl' if channels_last else 'nchw'}-b{batch} {size}px"
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref_net = model(name, "eager", device, torch.float32, channels_last)
    if contestant in INFER_ONLY:  # they take the float32 input, whatever they run in
        net = inference_runner(pair(name)[0], contestant, device, dtype, channels_last, x)
    elif contestant == "compile_freezing":
        if device != "cpu":
            pytest.skip("freezing is inductor's CPU inference mode")
        net = compile_freezing(pair(name)[0], device)
    else:
        net = model(name, contestant, device, dtype, channels_last)
    with torch.no_grad():
        ref = ref_net(x)
        del ref_net
        xd = x if contestant in INFER_ONLY else x.to(dtype)

        def step():
            return net(xd)

        err = rel_err(step(), ref)
        run(benchmark, step, device, rounds=1 if QUICK else (10 if device == "cuda" else 5),
            contestant=contestant, model=name, kind="inference", batch=batch, size=size, dtype=dtype_name,
            layout="channels_last" if channels_last else "nchw", flops=_flops(name, x), images=batch, rel_err=err)


@pytest.mark.parametrize("contestant", CONTESTANTS)
@pytest.mark.parametrize("case", _cases("train"), ids=_case_id)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_step(benchmark, name, case, contestant):
    if contestant == "compile" and not compile_wanted(name):
        pytest.skip("torch.compile is timed for the models INCEPTION_FAST_BENCH_COMPILE names")
    device, dtype_name, channels_last, batch, size = case
    size = size_of(name, size)
    if contestant == "peer" and name == "bn_inception" and size < 223:
        pytest.skip("pretrainedmodels' bninception classifies only 223..230-pixel inputs (a fixed 7x7 pool)")
    benchmark.group = f"model train {name} {device}-{dtype_name}-{'cl' if channels_last else 'nchw'}-b{batch} {size}px"
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    net = model(name, contestant, device, torch.float32, channels_last).train()
    without_dropout(net)
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

    # The error beside the speed: the first step's loss against the reference path's (dropout off).
    ref_net = without_dropout(model(name, "eager", device, torch.float32, channels_last).train())
    torch.manual_seed(1)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
        out = ref_net(x)
    ref_loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, target)
    del ref_net
    torch.manual_seed(1)
    err = rel_err(step(), ref_loss)
    run(benchmark, step, device, rounds=1 if QUICK else (10 if device == "cuda" else 5),
        contestant=contestant, model=name, kind="training step", batch=batch, size=size,
        dtype="bf16 autocast" if amp else "float32", layout="channels_last" if channels_last else "nchw",
        flops=3 * _flops(name, x), images=batch, rel_err=err)
