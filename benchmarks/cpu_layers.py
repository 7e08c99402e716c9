"""optimize()'s convolutions against another runtime's, class by class: each forward's convolutions
grouped by kernel, stride and output size, with the time a forward spends in each group and the
GFLOP/s it runs at (direct-convolution FLOPs, so a Winograd layer can read above the machine's peak),
ours from timed replays of the recorded forward (OptimizedModel.step_times), OpenVINO's from its own
per-layer profile (PERF_COUNT), ONNX Runtime's from its profiler; then what is not convolution, op by
op. Where both run every group at the same GFLOP/s, a whole forward cannot be faster than the other's
by more than what the rest takes. Each side runs in a process of its own.

    python benchmarks/cpu_layers.py --models inception_v3 --batch 8 --dtype bfloat16 [--against openvino]
"""
import argparse
import collections
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import attainable_peak  # noqa: E402
from zoo import onnx_export, pair  # noqa: E402

from inception_fast import optimize  # noqa: E402
from inception_fast.ops.winograd_conv1d import _TAPS  # noqa: E402  (transformed length -> kernel taps)


def _add(groups, key, flops, seconds):
    g = groups.setdefault(key, [0, 0.0, 0])
    g[0] += flops
    g[1] += seconds
    g[2] += 1


def _conv_key(kh, kw, stride, out_hw):
    return f"conv {kh}x{kw} s{stride} -> {out_hw[0]}x{out_hw[1]}"


def ours(model, x, dtype, runs):
    """{group: [FLOPs, seconds a forward, layers]} of optimize(model)'s forward on x."""
    om = optimize(model, dtype=None if dtype == torch.float32 else dtype)
    for _ in range(3):
        om(x)
    groups = {}
    for name, args, outs, sec in om.step_times(x, runs=runs):
        op = name.split("::")[-1].split(".")[0]
        out = outs[0] if outs else None
        if op == "onednn_conv":
            k, c, kh, kw = args[2]
            _add(groups, _conv_key(kh, kw, args[4][0], out[2:]), 2 * out.numel() * c * kh * kw, sec)
        elif op == "winograd_conv3x3":
            _add(groups, _conv_key(3, 3, 1, out[2:]) + " (Winograd)", 2 * out.numel() * args[0][1] * 9, sec)
        elif op == "winograd_conv1d":
            r = _TAPS[args[1][0]]
            kh, kw = (r, 1) if args[3] == 2 else (1, r)
            _add(groups, _conv_key(kh, kw, 1, out[2:]) + " (Winograd)", 2 * out.numel() * args[0][1] * r, sec)
        else:
            _add(groups, op, 0, sec)
    return groups


def openvino(model, x, dtype, runs):
    """The same from OpenVINO's per-layer profile, on an ONNX export of the reference path."""
    import openvino as ov

    core = ov.Core()
    hint = "bf16" if dtype == torch.bfloat16 else "f32"
    compiled = core.compile_model(core.read_model(onnx_export(model, x)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True})
    req = compiled.create_infer_request()
    for _ in range(3):
        req.infer({0: x.numpy()})
    times = collections.defaultdict(list)
    for _ in range(runs):
        req.infer({0: x.numpy()})
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                times[p.node_name].append(p.real_time.total_seconds())
    groups = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_friendly_name() not in times:
            continue
        sec = statistics.median(times[op.get_friendly_name()])
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if kind == "Convolution":
            src, wei, dst = (list(op.input(0).get_shape()), list(op.input(1).get_shape()),
                             list(op.output(0).get_shape()))
            kh, kw = wei[-2:]
            stride = max(1, round((src[2] - kh + 1) / dst[2]))
            _add(groups, _conv_key(kh, kw, stride, dst[2:]), 2 * dst[0] * dst[1] * dst[2] * dst[3] * src[1] * kh * kw,
                 sec)
        else:
            _add(groups, kind, 0, sec)
    return groups


def onnxruntime(model, x, dtype, runs):
    """The same from ONNX Runtime's profiler (float32 only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    sess = ort.InferenceSession(onnx_export(model, x), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"x": x.numpy()})
    for _ in range(runs):
        sess.run(None, {"x": x.numpy()})
    with open(sess.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_node = collections.defaultdict(list)
    meta = {}
    for e in events:
        per_node[e["name"]].append(e["dur"] * 1e-6)
        meta[e["name"]] = e["args"]
    groups = {}
    for node, durs in per_node.items():
        durs = durs[-runs:]  # the warm-up calls' first
        sec = statistics.median(durs)
        args = meta[node]
        kind = args.get("op_name", "?")
        if kind in ("Conv", "FusedConv"):
            shapes = [list(d.values())[0] for d in args["input_type_shape"]]
            src, wei = shapes[0], shapes[1]
            dst = list(args["output_type_shape"][0].values())[0]
            kh, kw = wei[-2:]
            stride = max(1, round((src[2] - kh + 1) / dst[2]))
            _add(groups, _conv_key(kh, kw, stride, dst[2:]),
                 2 * dst[0] * dst[1] * dst[2] * dst[3] * wei[1] * kh * kw, sec)
        else:
            _add(groups, kind, 0, sec)
    return groups


SIDES = {"optimize": ours, "openvino": openvino, "onnxruntime": onnxruntime}


def _worker(side, name, batch, dtype, runs, queue):
    warnings.filterwarnings("ignore")
    model = pair(name)[0]
    side_px = model.pretrained_cfg["input_size"][-1]
    torch.manual_seed(1)
    x = torch.randn(batch, 3, side_px, side_px)
    with torch.no_grad():
        queue.put(SIDES[side](model, x, dtype, runs))


def profile(side, name, batch, dtype, runs):
    """SIDES[side]'s groups, in a process of its own (no other runtime's thread pool in it)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(side, name, batch, dtype, runs, queue), daemon=True)
    proc.start()
    while True:  # (a worker that raised never puts: stop waiting when it is gone)
        try:
            groups = queue.get(timeout=1)
            break
        except Exception:
            if not proc.is_alive() and queue.empty():
                raise RuntimeError(f"the {side} worker for {name} died (its traceback is above)") from None
    proc.join()
    return groups


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["inception_v3"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--against", choices=["openvino", "onnxruntime"], default="openvino")
    p.add_argument("--runs", type=int, default=10, help="timed forwards (medians per layer)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.against == "onnxruntime" and dtype != torch.float32:
        p.error("ONNX Runtime's CPU provider runs float32 here: use --dtype float32 with --against onnxruntime")
    peak = attainable_peak("cpu", dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch}; attainable "
          f"peak {peak / 1e9:.0f} GFLOP/s; medians of {args.runs} forwards a layer; optimize() against "
          f"{args.against}, each in a process of its own", flush=True)
    for name in args.models:
        a = profile("optimize", name, args.batch, dtype, args.runs)
        b = profile(args.against, name, args.batch, dtype, args.runs)
        for side, groups in (("optimize", a), (args.against, b)):
            if not any(k.startswith("conv") for k in groups):  # a profile format this script does not read
                raise RuntimeError(f"{name}: no convolution found in {side}'s profile (groups: {sorted(groups)})")
        total_a, total_b = (sum(g[1] for g in s.values()) for s in (a, b))
        print(f"\n{name}: optimize() {total_a * 1e3:.1f} ms of steps a forward, {args.against} {total_b * 1e3:.1f} ms of "
              f"layers ({total_b / total_a:.3f}x)")
        print(f"{'group':34s} {'ours ms':>8s} {'GFLOP/s':>8s} {'% peak':>7s} {'n':>3s} | {'theirs ms':>9s} "
              f"{'GFLOP/s':>8s} {'% peak':>7s} {'n':>3s} | {'theirs/ours':>11s}")
        convs = sorted({k for k in (*a, *b) if k.startswith("conv")},
                       key=lambda k: -max(a.get(k, [0, 0])[1], b.get(k, [0, 0])[1]))
        rest = sorted({k for k in (*a, *b) if not k.startswith("conv")},
                      key=lambda k: -max(a.get(k, [0, 0])[1], b.get(k, [0, 0])[1]))

        def cells(g, width):
            if g is None:
                return " " * (width + 21)
            rate = f"{g[0] / g[1] / 1e9:8.0f}" if g[0] else " " * 8
            share = f"{100 * g[0] / g[1] / peak:6.0f}%" if g[0] else " " * 7
            return f"{g[1] * 1e3:{width}.2f} {rate} {share} {g[2]:3d}"

        for k in convs + rest:
            ga, gb = a.get(k), b.get(k)
            ratio = f"{gb[1] / ga[1]:11.2f}" if ga and gb else ""
            print(f"{k:34s} {cells(ga, 8)} | {cells(gb, 9)} | {ratio}")
        conv_a = sum(g[1] for k, g in a.items() if k.startswith("conv"))
        conv_b = sum(g[1] for k, g in b.items() if k.startswith("conv"))
        print(f"{'all convolutions':34s} {conv_a * 1e3:8.2f} {'':20s} | {conv_b * 1e3:10.2f} {'':20s} | {conv_b / conv_a:11.2f}")
        print(f"{'the rest':34s} {(total_a - conv_a) * 1e3:8.2f} {'':20s} | {(total_b - conv_b) * 1e3:10.2f}", flush=True)


if __name__ == "__main__":
    main()
