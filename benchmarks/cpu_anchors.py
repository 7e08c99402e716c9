"""optimize() against what a CPU inference user would pick instead, in interleaved rounds (one
process, the contestants taking turns, so a slow spell of a shared machine hits all alike):
eager NCHW and channels_last, optimize() in float32 and bf16, ONNX Runtime (ORT_ENABLE_ALL) and
OpenVINO (f32 and bf16 precision hints) on an ONNX export of the reference path, optionally
torch.compile with freezing. Each with img/s, its share of the fp32 or bf16 attainable peak (best of a large matmul and a 3x3 conv) measured in
this process, and its relative error against eager float32.

    python benchmarks/cpu_anchors.py --models inception_v3 googlenet --batch 8 --rounds 5 [--compile]
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import attainable_peak  # noqa: E402
from zoo import onnx_export, pair  # noqa: E402

from inception_fast import models, optimize  # noqa: E402


def contestants(model, x, with_compile):
    eager = copy.deepcopy(model).set_fused(False)
    cl = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    out = {"eager": eager, "eager_cl": lambda x: cl(x.contiguous(memory_format=torch.channels_last)),
           "optimize": optimize(model), "optimize_bf16": optimize(model, dtype=torch.bfloat16)}
    if with_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(copy.deepcopy(cl))
        out["compile_freezing"] = lambda x: compiled(x.contiguous(memory_format=torch.channels_last))
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_export(model, x), so, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    except ImportError:
        print("onnxruntime not installed: skipped (pip install -e .[bench])")
    try:
        import openvino as ov

        core = ov.Core()
        onnx = onnx_export(model, x)
        for hint in ("f32", "bf16"):
            req = core.compile_model(core.read_model(onnx), "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request()
            out["openvino" + ("_bf16" if hint == "bf16" else "")] = \
                lambda x, req=req: torch.from_numpy(req.infer({0: x.numpy()})[0].copy())
    except ImportError:
        print("openvino not installed: skipped (pip install -e .[bench])")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["googlenet", "inception_v3", "inception_v4", "inception_resnet_v2"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=2, help="timed calls per contestant and round")
    p.add_argument("--compile", action="store_true", help="add torch.compile with freezing (minutes per model)")
    args = p.parse_args()
    peaks = {"fp32": attainable_peak("cpu", torch.float32), "bf16": attainable_peak("cpu", torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak (best of matmul, 3x3 conv) fp32 {peaks['fp32'] / 1e9:.0f}, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; batch {args.batch}, median of {args.rounds} interleaved rounds of "
          f"{args.reps} timed calls each")
    print(f"{'model':22s} {'contestant':17s} {'img/s':>7s} {'% peak':>7s} {'vs eager':>9s} {'rel. err':>9s}")
    for name in args.models:
        model = pair(name)[0] if name in models.list_models() else None
        side = model.pretrained_cfg["input_size"][-1]
        torch.manual_seed(1)
        x = torch.randn(args.batch, 3, side, side)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            ref = copy.deepcopy(model).set_fused(False)(x)
        flops = counter.get_total_flops()
        fns = contestants(model, x, args.compile)
        times = {c: [] for c in fns}
        with torch.no_grad():
            outs = {c: f(x) for c, f in fns.items()}  # warm-up (compilation, packing), and the error
            for r in range(args.rounds):
                for c in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                    # one untimed call first: the previous contestant's worker threads (ONNX
                    # Runtime's and OpenMP's spin after a run) and its cache footprint are gone
                    # by the timed ones, which measure this contestant's steady state
                    fns[c](x)
                    t = time.perf_counter()
                    for _ in range(args.reps):
                        fns[c](x)
                    times[c].append((time.perf_counter() - t) / args.reps)
        med = {c: statistics.median(v) for c, v in times.items()}
        for c in sorted(fns, key=lambda c: med[c]):
            peak = peaks["bf16" if c.endswith("bf16") else "fp32"]
            err = ((outs[c].double() - ref.double()).norm() / ref.double().norm()).item()
            print(f"{name:22s} {c:17s} {args.batch / med[c]:7.1f} {100 * flops / med[c] / peak:6.0f}% "
                  f"{med['eager'] / med[c]:8.2f}x {err:9.1e}", flush=True)


if __name__ == "__main__":
    main()
