"""Shared machinery of the benchmark suites: devices, quick mode, and a summary table that puts each
contestant's speed beside the eager baseline's and the machine's copy bandwidth, measured in the
same run.

  pytest benchmarks/ --benchmark-only                  # full sizes
  INCEPTION_FAST_BENCH_QUICK=1 pytest benchmarks/ ...  # CI: small shapes, few rounds
  INCEPTION_FAST_BENCH_COMPILE=1 ...                   # add torch.compile of the eager composition
  INCEPTION_FAST_BENCH_DEVICE=cuda ...                 # time one device only
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

QUICK = os.environ.get("INCEPTION_FAST_BENCH_QUICK") == "1"
WITH_COMPILE = os.environ.get("INCEPTION_FAST_BENCH_COMPILE") == "1"


def devices():
    """Devices to time: INCEPTION_FAST_BENCH_DEVICE=cpu|cuda picks one, else every one present."""
    present = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    only = os.environ.get("INCEPTION_FAST_BENCH_DEVICE")
    return [d for d in present if d == only] if only else present


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run(benchmark, fn, device, rounds=None, **extra):
    """Time fn (synchronising the device), recording extra_info such as bytes moved."""
    benchmark.extra_info.update(extra)
    benchmark.extra_info["device"] = device
    fn()  # warm-up (allocations, autotuning, lazy imports)
    sync(device)

    def timed():
        fn()
        sync(device)

    if rounds is None:
        rounds = 3 if QUICK else (20 if device == "cuda" else 8)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


def _median(bench):
    return bench.stats.median if hasattr(bench.stats, "median") else bench.stats.stats.median


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for b in session.benchmarks:
        groups.setdefault(b.group, []).append(b)
    tr = terminalreporter
    tr.section("inception_fast: speed-up over eager and share of copy bandwidth (same run)")
    # Copy bandwidth per device: the best of the 'copy' contestants (bytes read + written).
    copy_bw = {}
    for b in session.benchmarks:
        if b.extra_info.get("contestant") == "copy":
            dev = b.extra_info["device"]
            copy_bw[dev] = max(copy_bw.get(dev, 0.0), b.extra_info["bytes"] / _median(b))
    for dev, bw in copy_bw.items():
        tr.write_line(f"measured copy bandwidth ({dev}): {bw / 1e9:.1f} GB/s")
    tr.write_line(f"{'group':58s} {'contestant':16s} {'median ms':>10s} {'GB/s':>8s} {'% copy':>7s} {'vs eager':>9s}")
    for group, benches in sorted(groups.items()):
        eager = [b for b in benches if b.extra_info.get("contestant") == "eager"]
        t_eager = _median(eager[0]) if eager else None
        for b in sorted(benches, key=_median, reverse=True):
            info = b.extra_info
            if info.get("contestant") == "copy":
                continue
            t = _median(b)
            gbs = info.get("bytes", 0) / t / 1e9
            bw = copy_bw.get(info.get("device"))
            pct = f"{100 * gbs * 1e9 / bw:6.0f}%" if bw and info.get("bytes") else "      -"
            ratio = f"{t_eager / t:8.2f}x" if t_eager else "        -"
            tr.write_line(f"{group:58s} {info.get('contestant', b.name):16s} {t * 1e3:10.3f} {gbs:8.1f} {pct} {ratio}")
    tr.write_line("GB/s counts the bytes the fused kernels move (the same count for every contestant of a group, "
                  "so GB/s ratios are speed ratios); % copy is against the copy bandwidth measured above.")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
