"""The models the model and block benchmarks time: ours with a peer's random weights (the peer as a
contestant of its own), and each contestant built from them -- the reference path ("eager"), the
fused path, the peer, torch.compile of the reference path; for inference also optimize() (float32 and
bfloat16), torch.compile with freezing, ONNX Runtime and OpenVINO (f32 and bf16), the last two run
on an ONNX export of the reference path and skipped with the reason when not installed
(`pip install -e .[bench]`)."""
import copy
import importlib
import io
import os

import pytest
import torch

from conftest import compiled
from inception_fast import models, optimize
from inception_fast.layers import _PathMixin, set_conv_weight_layout

# The peer of each model, built with random weights, and the configuration ours copies.
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
# INCEPTION_FAST_BENCH_MODELS=inception_v3,googlenet times these models only, in this order (the GPU
# check puts the ones of the targets first, so a spent time budget leaves out the others).
_ONLY = [m for m in os.environ.get("INCEPTION_FAST_BENCH_MODELS", "").replace(" ", "").split(",") if m]
if [m for m in _ONLY if m not in PEERS]:
    raise ValueError(f"INCEPTION_FAST_BENCH_MODELS names unknown models {[m for m in _ONLY if m not in PEERS]}; "
                     f"the models are {list(PEERS)}")
MODEL_NAMES = _ONLY or list(PEERS)
# A small input each model takes (BN-Inception takes sides 32k-1 .. 32k+6 only).
SMALL = {"bn_inception": 64}


def _peer(name):
    """The peer with random weights, or None (with the reason) when it cannot be imported."""
    module, build, _ = PEERS[name]
    try:
        return build(importlib.import_module(module)), None
    except Exception as e:  # noqa: BLE001 - an uninstallable peer is reported, not fatal
        return None, f"peer {module} not available: {type(e).__name__}: {e}"


def randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


_cache = {}


def pair(name):
    """(ours, peer, why) with the same random weights, eval mode, CPU fp32; peer None (and why says
    why) when it is not installed: then only its own contestant is skipped."""
    if name not in _cache:
        torch.manual_seed(0)
        peer, why = _peer(name)
        ours = models.create_model(name, **PEERS[name][2]).eval()
        if peer is not None:
            peer = randomise_bn(peer).eval()
            ours.load_state_dict(peer.state_dict(), strict=True)
        else:
            randomise_bn(ours)
        _cache[name] = (ours, peer, why)
    return _cache[name]


def contestant_of(module, contestant, device, dtype=torch.float32, channels_last=False):
    """A copy of `module` (a model or one of its blocks) as the contestant runs it."""
    net = copy.deepcopy(module)
    for m in net.modules():
        if isinstance(m, _PathMixin):
            m.fused = contestant == "fused"
    set_conv_weight_layout(net, channels_last=contestant == "fused")  # as model.set_fused does
    net = net.to(device=device, dtype=dtype)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return compiled(net, device) if contestant == "compile" else net


def model(name, contestant, device, dtype=torch.float32, channels_last=False):
    ours, peer, why = pair(name)
    if contestant == "peer" and peer is None:
        pytest.skip(why)
    return contestant_of(peer if contestant == "peer" else ours, contestant, device, dtype, channels_last)


def rel_err(y, ref):
    y, ref = y.detach().double().cpu(), ref.detach().double().cpu()
    return ((y - ref).norm() / ref.norm()).item()


def size_of(name, size):
    """The side to time `name` at: its native one for None, else `size` (75 -> a side it takes)."""
    if size is None:
        return pair(name)[0].pretrained_cfg["input_size"][-1]
    return SMALL.get(name, size) if size == 75 else size


# Inference-only contestants: what a user would pick instead of (or on top of) the eager model.
INFER_ONLY = ["optimize", "optimize_bf16", "optimize_graph", "optimize_cudnn_fused", "onnxruntime", "openvino",
              "openvino_bf16"]
GPU_ONLY = {"optimize_graph", "optimize_cudnn_fused"}  # optimize() with CUDA graphs; and cuDNN's fused ReLU


def onnx_export(module, x):
    """The reference path of `module` exported to ONNX (TorchScript exporter, opset 17, dynamic batch)."""
    ref = copy.deepcopy(module).eval()
    for m in ref.modules():
        if isinstance(m, _PathMixin):
            m.fused = False
    f = io.BytesIO()
    torch.onnx.export(ref, (x,), f, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return f.getvalue()


def inference_runner(module, contestant, device, dtype, channels_last, x):
    """A callable x -> output (a tensor) for an inference-only contestant, or pytest.skip with why."""
    if contestant.startswith("optimize"):
        run_dtype = torch.bfloat16 if contestant == "optimize_bf16" else dtype
        if device == "cuda" and contestant == "optimize_bf16":
            pytest.skip("on a GPU the case's dtype is already bf16: see 'optimize'")
        if device != "cuda" and contestant in GPU_ONLY:
            pytest.skip(f"{contestant} is a GPU contestant")
        # a copy: the shared model stays on the CPU for the other contestants and the FLOP count
        return optimize(copy.deepcopy(module).to(device), dtype=run_dtype, channels_last=True,
                        cuda_graph=contestant in GPU_ONLY, cudnn_fused=contestant == "optimize_cudnn_fused")
    if device != "cpu":
        pytest.skip(f"{contestant} is a CPU contestant")
    if contestant == "onnxruntime":
        ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install -e .[bench])")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_export(module, x), so, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    if contestant.startswith("openvino"):
        ov = pytest.importorskip("openvino", reason="OpenVINO not installed (pip install -e .[bench])")
        core = ov.Core()
        hint = "bf16" if contestant == "openvino_bf16" else "f32"
        compiled_model = core.compile_model(core.read_model(onnx_export(module, x)), "CPU",
                                            {"INFERENCE_PRECISION_HINT": hint})
        request = compiled_model.create_infer_request()
        return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())
    raise ValueError(contestant)


def compile_freezing(module, device):
    """torch.compile of the reference path with inductor's freezing (BN folded, weights prepacked:
    the torch.compile a CPU inference user would run), channels_last."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    net = contestant_of(module, "eager", device, channels_last=True)
    return torch.compile(net)
