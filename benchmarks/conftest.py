"""Shared machinery of the benchmark suites: devices, quick mode, and a summary table that puts each
contestant's speed beside the eager baseline's and the machine's copy bandwidth, measured in the
same run.

  pytest benchmarks/ --benchmark-only                  # full sizes
  INCEPTION_FAST_BENCH_QUICK=1 pytest benchmarks/ ...  # CI: small shapes, few rounds
  INCEPTION_FAST_BENCH_COMPILE=1 ...                   # add torch.compile of the eager composition
  INCEPTION_FAST_BENCH_COMPILE=inception_v3,googlenet  # ... for these models and their blocks only (the ops: 1)
  INCEPTION_FAST_BENCH_MODELS=inception_v3,googlenet   # time these models only, in this order
  INCEPTION_FAST_BENCH_DEVICE=cuda ...                 # time one device only
  INCEPTION_FAST_BENCH_MALLOC=default ...              # keep glibc's allocator settings (see below)

Whatever the files' order, the torch.compile contestants run last (pytest_collection_modifyitems).
"""
import ctypes
import ctypes.util
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

QUICK = os.environ.get("INCEPTION_FAST_BENCH_QUICK") == "1"


def _keep_large_blocks() -> str:
    """glibc returns blocks over its mmap threshold (32 MB at most) to the OS when they are freed,
    so every new tensor of that size is page-faulted in again -- 10+ ms per 50 MB on these machines,
    for eager and fused alike, and bimodal with the allocation history. Keeping freed blocks in the
    heap (as jemalloc/tcmalloc do) times the kernels rather than the kernel's page zeroing."""
    if os.environ.get("INCEPTION_FAST_BENCH_MALLOC") == "default":
        return "glibc defaults"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 62)
        return "freed blocks kept in the heap (mallopt)" if ok else "glibc defaults (mallopt refused)"
    except (OSError, AttributeError):
        return "allocator defaults (not glibc)"


MALLOC_MODE = _keep_large_blocks()
_COMPILE = os.environ.get("INCEPTION_FAST_BENCH_COMPILE", "").strip()
WITH_COMPILE = _COMPILE not in ("", "0")


def compile_wanted(model: str | None = None) -> bool:
    """Whether torch.compile is a contestant for this model (None: for the ops).
    INCEPTION_FAST_BENCH_COMPILE may name the models, since compiling all six, or every op, with
    max-autotune takes longer than a GPU check may: the ops are compiled with 1 or all only."""
    if not WITH_COMPILE:
        return False
    if _COMPILE in ("1", "all"):
        return True
    return model is not None and model in _COMPILE.split(",")


def compiled(fn, device: str):
    """torch.compile as `inception-fast bench --compile` runs it (max-autotune on a GPU)."""
    from inception_fast.bench import compile_as_users_do

    return compile_as_users_do(fn, device)


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
        rounds = 3 if QUICK else 20
    # CPU timings of large tensors swing with the allocator (glibc returns >32 MB blocks to the OS,
    # so they are page-faulted in again): several warm-up rounds, then the median of 20.
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1 if QUICK else 3)


def _median(bench):
    return bench.stats.median if hasattr(bench.stats, "median") else bench.stats.stats.median


def attainable_peak(device: str, dtype=torch.float32) -> float:
    """FLOP/s of the faster of a large matmul and a large 3x3 convolution (channels_last) on this
    device in this process: the attainable-peak yardstick that whole-model throughputs are printed
    against (best of a few runs of each). The convolution is there because on some CPUs the matmul
    library is the slower of the two (MKL's float32 GEMM on AMD Zen 4 reads 100-180 GFLOP/s where
    oneDNN's convolutions run at 230)."""
    import time

    def best_of(fn, runs):
        fn()  # warm-up: the library's kernel choice and JIT, the first touch of the output
        best = float("inf")
        for _ in range(runs):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t)
        return best

    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    # (8 runs on the CPU: a shared 2-core machine has slow spells; one bf16 probe of 4 read 238 GFLOP/s
    # where the machine gives 430-455)
    mm = 2 * n ** 3 / best_of(lambda: torch.mm(a, b), 8 if device == "cpu" else 10)
    batch, c, side = (8, 256, 28) if device == "cpu" else (64, 512, 28)
    x = torch.randn(batch, c, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv = 2 * batch * side * side * c * c * 9 / best_of(lambda: F.conv2d(x, w, padding=1), 8 if device == "cpu" else 10)
    return max(mm, conv)


def _op_rows(tr, groups):
    # The floor of each group: a copy of the same tensor into a preallocated one, timed in the
    # same run (bytes read + written per second).
    copy_bw = {}
    for group, benches in groups.items():
        for b in benches:
            if b.extra_info.get("contestant") == "copy":
                copy_bw[group] = b.extra_info["bytes"] / _median(b)
    tr.write_line(f"{'group':64s} {'contestant':16s} {'median ms':>10s} {'GB/s':>8s} {'% copy':>7s} {'vs eager':>9s}")
    for group, benches in sorted(groups.items()):
        eager = [b for b in benches if b.extra_info.get("contestant") == "eager"]
        t_eager = _median(eager[0]) if eager else None
        for b in sorted(benches, key=_median, reverse=True):
            info = b.extra_info
            t = _median(b)
            gbs = info.get("bytes", 0) / t / 1e9
            bw = copy_bw.get(group)
            pct = f"{100 * gbs * 1e9 / bw:6.0f}%" if bw and info.get("bytes") else "      -"
            ratio = f"{t_eager / t:8.2f}x" if t_eager else "        -"
            tr.write_line(f"{group:64s} {info.get('contestant', b.name):16s} {t * 1e3:10.3f} {gbs:8.1f} {pct} {ratio}")
    tr.write_line("GB/s counts the bytes the fused kernels move (the same count for every contestant of a group, "
                  "so GB/s ratios are speed ratios); % copy: against a copy of the same tensor into a preallocated one, "
                  "measured in the same run.")


def _model_rows(tr, groups):
    peaks = {}
    width = max(len(g) for g in groups)
    tr.write_line(f"{'group':{width}s} {'contestant':10s} {'img/s':>9s} {'GFLOP/s':>9s} {'% peak':>7s} "
                  f"{'vs eager':>9s} {'vs compile':>10s} {'rel. err':>9s}")
    for group, benches in sorted(groups.items()):
        by = {b.extra_info.get("contestant"): _median(b) for b in benches}
        for b in sorted(benches, key=_median):
            info = b.extra_info
            t = _median(b)
            device = info.get("device", "cpu")
            # bf16 contestants against the bf16 peak (on a GPU every case is bf16)
            low = device != "cpu" or info["contestant"].endswith("bf16") or "bf16" in info.get("dtype", "") \
                or "bfloat16" in info.get("dtype", "")
            key = f"{device} {'bf16' if low else 'fp32'}"
            if key not in peaks:
                peaks[key] = attainable_peak(device, torch.bfloat16 if low else torch.float32)
            gflops = info["flops"] / t / 1e9
            pct = 100 * gflops * 1e9 / peaks[key]
            vs_eager = f"{by['eager'] / t:8.2f}x" if "eager" in by else "        -"
            vs_compile = f"{by['compile'] / t:9.2f}x" if "compile" in by else "         -"
            tr.write_line(f"{group:{width}s} {info['contestant']:10s} {info['images'] / t:9.1f} {gflops:9.1f} {pct:6.0f}% "
                          f"{vs_eager} {vs_compile} {info.get('rel_err', float('nan')):9.1e}")
    tr.write_line("% peak: against a large matmul timed in this process (" + ", ".join(
        f"{d}: {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()) + "); training-step FLOPs count 3x the "
        "forward's. rel. err: against the reference path in float32 (training: a model's first loss, a block's "
        "input gradient).")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    ops_groups, model_groups = {}, {}
    for b in session.benchmarks:
        target = model_groups if "images" in b.extra_info else ops_groups
        target.setdefault(b.group, []).append(b)
    tr = terminalreporter
    tr.section("inception_fast: speed-up over eager, share of the machine (same run)")
    tr.write_line(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU allocator: {MALLOC_MODE}")
    if ops_groups:
        _op_rows(tr, ops_groups)
    if model_groups:
        _model_rows(tr, model_groups)


def _contestant(item) -> str:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "contestant" in params:
        return params["contestant"]
    pair = params.get("pair")  # test_ops.py: (case, contestant)
    return pair[1] if isinstance(pair, tuple) else ""


def pytest_collection_modifyitems(session, config, items):
    """Every torch.compile contestant last (max-autotune searches kernels for minutes per model, so a
    run with a deadline, as the GPU check's, times everything else first), and within test_models.py
    model by model (a model's inference and training step before the next model's) in
    INCEPTION_FAST_BENCH_MODELS order; otherwise the order of the files."""
    from zoo import MODEL_NAMES

    files: dict = {}
    for item in items:
        files.setdefault(item.path, len(files))

    def key(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        model = params.get("name") if item.path.name == "test_models.py" else None
        return (_contestant(item).startswith("compile"), files[item.path],
                MODEL_NAMES.index(model) if model in MODEL_NAMES else -1)

    items.sort(key=key)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
