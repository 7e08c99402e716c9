"""optimize() against what a CPU inference user would pick instead, in interleaved rounds (one
process, the contestants taking turns, so a slow spell of a shared machine hits all alike):
eager NCHW and channels_last, optimize() in float32 and bf16, ONNX Runtime (ORT_ENABLE_ALL) and
OpenVINO (f32 and bf16 precision hints) on an ONNX export of the reference path, optionally
torch.compile with freezing. Each with img/s, its share of the fp32 or bf16 attainable peak (best of a large matmul and a 3x3 conv) measured in
this process, and its relative error against eager float32.

With --isolate each contestant runs in a process of its own, as a deployment runs one runtime: the
rounds still take turns (the parent asks one worker at a time, with a pause between turns for the
previous one's worker threads to go to sleep), but no runtime's thread pool (OpenMP's, ONNX
Runtime's, OpenVINO's) sits in the process of another. In one process the order of the turns
decides who meets whose spinning threads: at batch 1 on a 2-core VM that moved the ratio of two
contestants by 5-10% between scripts.

    python benchmarks/cpu_anchors.py --models inception_v3 googlenet --batch 8 --rounds 5 [--compile] [--isolate]
"""
import argparse
import copy
import importlib.util
import multiprocessing
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


def contestants(model, x, with_compile, only=None):
    """{name: x -> output} for every contestant, or only for the one named `only`."""

    def wanted(*names):
        return only is None or only in names

    out = {}
    if wanted("eager", "eager_cl"):
        eager = copy.deepcopy(model).set_fused(False)
        cl = copy.deepcopy(eager).to(memory_format=torch.channels_last)
        out["eager"] = eager
        out["eager_cl"] = lambda x: cl(x.contiguous(memory_format=torch.channels_last))
    if wanted("optimize"):
        out["optimize"] = optimize(model)
    if wanted("optimize_bf16"):
        out["optimize_bf16"] = optimize(model, dtype=torch.bfloat16)
    if with_compile and wanted("compile_freezing"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(copy.deepcopy(model).set_fused(False).to(memory_format=torch.channels_last))
        out["compile_freezing"] = lambda x: compiled(x.contiguous(memory_format=torch.channels_last))
    if wanted("onnxruntime"):
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime not installed: skipped (pip install -e .[bench])")
        else:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(onnx_export(model, x), so, providers=["CPUExecutionProvider"])
            out["onnxruntime"] = lambda x: torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    hints = [(h, c) for h, c in (("f32", "openvino"), ("bf16", "openvino_bf16")) if wanted(c)]
    if hints:
        try:
            import openvino as ov
        except ImportError:
            print("openvino not installed: skipped (pip install -e .[bench])")
        else:
            core = ov.Core()
            onnx = onnx_export(model, x)
            for hint, c in hints:
                req = core.compile_model(core.read_model(onnx), "CPU", {"INFERENCE_PRECISION_HINT": hint})
                req = req.create_infer_request()
                out[c] = lambda x, req=req: torch.from_numpy(req.infer({0: x.numpy()})[0].copy())
    return out


def contestant_names(with_compile):
    names = ["eager", "eager_cl", "optimize", "optimize_bf16"] + (["compile_freezing"] if with_compile else [])
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    if importlib.util.find_spec("openvino") is not None:
        names += ["openvino", "openvino_bf16"]
    return names


def _worker(conn, name, batch, contestant, with_compile):
    """One contestant in a process of its own: builds it, sends its output, then times `reps` calls
    (after `warm` untimed ones) whenever the parent asks, until it sends None."""
    model = pair(name)[0]
    side = model.pretrained_cfg["input_size"][-1]
    torch.manual_seed(1)
    x = torch.randn(batch, 3, side, side)
    with torch.no_grad():
        fn = contestants(model, x, with_compile, only=contestant)[contestant]
        conn.send(fn(x))
        while (cmd := conn.recv()) is not None:
            warm, reps = cmd
            for _ in range(warm):
                fn(x)
            t = time.perf_counter()
            for _ in range(reps):
                fn(x)
            conn.send((time.perf_counter() - t) / reps)


def _time_isolated(name, x, names, args):
    """({contestant: seconds a call, per round}, {contestant: output}), each contestant in its own
    process."""
    ctx = multiprocessing.get_context("spawn")
    workers = {}
    for c in names:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(there, name, x.shape[0], c, args.compile), daemon=True)
        proc.start()
        workers[c] = (proc, here)
    def receive(c):
        try:
            return workers[c][1].recv()
        except EOFError:
            raise RuntimeError(f"the worker process of {c} died (its traceback is above)") from None

    outs = {c: receive(c) for c in names}  # built, warmed up, checked
    times = {c: [] for c in names}
    for r in range(args.rounds):
        for c in (names if r % 2 == 0 else names[::-1]):
            time.sleep(0.05)  # the previous worker's threads stop spinning and sleep
            workers[c][1].send((2, args.reps))  # two untimed calls wake this one's threads
            times[c].append(receive(c))
    for proc, here in workers.values():
        here.send(None)
        proc.join()
    return times, outs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["googlenet", "inception_v3", "inception_v4", "inception_resnet_v2"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=2, help="timed calls per contestant and round")
    p.add_argument("--compile", action="store_true", help="add torch.compile with freezing (minutes per model)")
    p.add_argument("--isolate", action="store_true", help="each contestant in a process of its own (see above)")
    p.add_argument("--only", nargs="+", metavar="CONTESTANT",
                   help="time only these contestants (and eager, the reference of the ratios), e.g. optimize_bf16 openvino_bf16")
    args = p.parse_args()
    if args.only:
        unknown = set(args.only) - set(contestant_names(True))
        if unknown:
            p.error(f"--only: no contestant {sorted(unknown)}; this machine has {contestant_names(True)}")
        args.compile = args.compile or "compile_freezing" in args.only
    peaks = {"fp32": attainable_peak("cpu", torch.float32), "bf16": attainable_peak("cpu", torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; peak (best of matmul, 3x3 conv) fp32 {peaks['fp32'] / 1e9:.0f}, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; batch {args.batch}, median of {args.rounds} interleaved rounds of "
          f"{args.reps} timed calls each, " + ("each contestant in its own process" if args.isolate else "one process"))
    print(f"{'model':22s} {'contestant':17s} {'img/s':>7s} {'% peak':>7s} {'vs eager':>9s} {'rel. err':>9s}")
    for name in args.models:
        model = pair(name)[0] if name in models.list_models() else None
        side = model.pretrained_cfg["input_size"][-1]
        torch.manual_seed(1)
        x = torch.randn(args.batch, 3, side, side)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            ref = copy.deepcopy(model).set_fused(False)(x)
        flops = counter.get_total_flops()
        if args.isolate:
            times, outs = _time_isolated(name, x, _chosen(args), args)
        else:
            times, outs = _time_together(model, x, args)
        med = {c: statistics.median(v) for c, v in times.items()}
        for c in sorted(times, key=lambda c: med[c]):
            peak = peaks["bf16" if c.endswith("bf16") else "fp32"]
            err = ((outs[c].double() - ref.double()).norm() / ref.double().norm()).item()
            print(f"{name:22s} {c:17s} {args.batch / med[c]:7.1f} {100 * flops / med[c] / peak:6.0f}% "
                  f"{med['eager'] / med[c]:8.2f}x {err:9.1e}", flush=True)


def _chosen(args):
    """The contestants this run times, eager (the ratios' reference) always among them."""
    names = contestant_names(args.compile)
    return names if not args.only else [c for c in names if c == "eager" or c in args.only]


def _time_together(model, x, args):
    """({contestant: seconds a call, per round}, {contestant: output}), all in this process."""
    fns = contestants(model, x, args.compile)
    fns = {c: f for c, f in fns.items() if c in _chosen(args)}
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
    return times, outs


if __name__ == "__main__":
    main()
