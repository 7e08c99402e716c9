"""Where an optimize()d model's CPU forward spends its time, op by op (OptimizedModel.op_times: timed
replays of the recorded forward), beside the whole forward's time and its share of the machine's
attainable peak (best of a large matmul and a 3x3 conv, measured in this process). What is not
convolution is what a batch-1 forward can still lose against a runtime whose kernels are as fast.

    python benchmarks/cpu_breakdown.py --models googlenet inception_v3 --batch 1 --dtype bfloat16
"""
import argparse
import collections
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import attainable_peak  # noqa: E402
from zoo import pair  # noqa: E402

from inception_fast import optimize  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["googlenet", "inception_v3"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--top", type=int, default=12, help="ops listed per model (the rest summed)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    peak = attainable_peak("cpu", dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch}; "
          f"attainable peak {peak / 1e9:.0f} GFLOP/s; medians of {args.runs} forwards")
    for name in args.models:
        model = pair(name)[0]
        side = model.pretrained_cfg["input_size"][-1]
        torch.manual_seed(1)
        x = torch.randn(args.batch, 3, side, side)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            copy.deepcopy(model).set_fused(False)(x)
        flops = counter.get_total_flops()
        om = optimize(model, dtype=dtype)
        for _ in range(3):
            om(x)
        # a forward, then a timed replay, taking turns: a slow spell of the machine hits both alike
        times, per_op, calls = [], collections.defaultdict(list), {}
        for _ in range(args.runs):
            t = time.perf_counter()
            om(x)
            times.append(time.perf_counter() - t)
            for op, n, sec in om.op_times(x, runs=1):
                per_op[op].append(sec)
                calls[op] = n
        forward = statistics.median(times)
        rows = sorted(((op, calls[op], statistics.median(v)) for op, v in per_op.items()), key=lambda r: -r[2])
        in_ops = sum(r[2] for r in rows)
        print(f"\n{name}: forward {forward * 1e3:.2f} ms ({100 * flops / forward / peak:.0f}% of peak; "
              f"{flops / 1e9 / args.batch:.2f} GFLOP an image); its replayed ops {in_ops * 1e3:.2f} ms (per-op "
              f"medians; the {(forward - in_ops) * 1e3:+.2f} ms to the forward: the input conversion and float32 "
              f"output outside the replay, and the spread of medians)")
        print(f"  {'op':44s} {'calls':>5s} {'ms':>8s} {'share':>6s}")
        for op, calls, sec in rows[:args.top]:
            print(f"  {op:44s} {calls:5d} {sec * 1e3:8.3f} {100 * sec / forward:5.1f}%")
        rest = rows[args.top:]
        if rest:
            sec = sum(r[2] for r in rest)
            print(f"  {f'({len(rest)} other ops)':44s} {sum(r[1] for r in rest):5d} {sec * 1e3:8.3f} "
                  f"{100 * sec / forward:5.1f}%")


if __name__ == "__main__":
    main()
