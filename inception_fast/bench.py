"""How fast the six models run on this machine, and the tables and charts of benchmark results.

    inception-fast bench                       # eager vs inception_fast (fused; inference: also optimize())
    inception-fast bench --models inception_v3 --batch 32 --rounds 10 --json out.json
    inception-fast bench --compile             # and torch.compile of the reference path (max-autotune on a GPU)
    inception-fast report results.json         # Markdown table + PNG chart (ours or pytest-benchmark's JSON)
    python -m inception_fast.bench ...         # the same without the console script

The contestants run in interleaved rounds (eager, fused, fused, eager, ...), so a slow spell of a
shared machine hits all alike; the ratio is the thing to read. Each result carries its relative error
against the eager one, and the JSON records the machine, the versions, the precision,
the batch and the layout it was measured with.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

# A small input each model takes for the training step (BN-Inception takes sides 32k-1 .. 32k+6).
SMALL_SIZE = {"bn_inception": 64}
DEFAULT_SMALL = 75
# Both passes; inference adds "optimized" (optimize(model)), and --compile adds "compile" (torch.compile
# of the reference path).
CONTESTANTS = ("eager", "fused")


@dataclasses.dataclass
class Result:
    model: str
    kind: str            # "inference" | "training step"
    contestant: str      # "eager" (the reference path) | "fused" | anything a JSON brings
    device: str
    dtype: str
    layout: str
    batch: int
    size: int
    seconds: float       # median over the rounds, per call
    rel_err: float       # against the eager contestant (inference: output; training: first loss)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds


# -- the machine -------------------------------------------------------------------------------
def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": device}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - no triton is a fact to record, not an error
        info["triton"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    den = ref.norm().item()
    return (a - ref).norm().item() / den if den > 0 else (a - ref).norm().item()


# -- one model ---------------------------------------------------------------------------------
def _build(name: str, device: str, channels_last: bool, contestants=CONTESTANTS, compile_backend: str = "inductor"):
    from inception_fast import models

    torch.manual_seed(0)
    kwargs = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    base = models.create_model(name, **kwargs)
    with torch.no_grad():
        for m in base.modules():  # statistics and affine parameters other than 0/1
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    base = base.to(device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    nets = {c: copy.deepcopy(base).set_fused(c == "fused") for c in contestants}
    if "compile" in nets:  # compiled on its first call, which is the warm-up
        nets["compile"] = compile_as_users_do(nets["compile"], device, compile_backend)
    return nets


def compile_as_users_do(net, device: str, backend: str = "inductor"):
    """torch.compile as users reach for it: max-autotune on a GPU, the default on the CPU (where
    max-autotune's template search takes minutes per model for a few percent). Another backend
    (aot_eager: the graph capture without inductor's code generation) takes no mode."""
    if backend != "inductor":
        return torch.compile(net, backend=backend)
    return torch.compile(net, mode="max-autotune" if device == "cuda" else None)


def without_dropout(net: torch.nn.Module) -> torch.nn.Module:
    """p=0 in every nn.Dropout: training benchmarks compare each contestant's first loss with the
    reference path's, and torch.compile draws its own dropout masks (our two paths and the peers draw
    the same ones), so with dropout on, its error would measure the masks, not the arithmetic."""
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return net


def _interleaved(fns: dict, rounds: int, device: str) -> dict:
    """Median seconds per call of each fn, timed in alternating order round by round."""
    times = {c: [] for c in fns}
    names = list(fns)
    for r in range(rounds):
        for c in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t = time.perf_counter()
            fns[c]()
            _sync(device)
            times[c].append(time.perf_counter() - t)
    return {c: statistics.median(v) for c, v in times.items()}


def bench_inference(name: str, device: str, dtype: torch.dtype, batch: int, size: int, rounds: int,
                    channels_last: bool = False, contestants=CONTESTANTS, compile_backend: str = "inductor") -> list[Result]:
    from inception_fast import optimize

    built = _build(name, device, channels_last, contestants, compile_backend)
    # optimize() folds the float32 weights, then runs in dtype (before .to(dtype) converts in place)
    optimized = optimize(built["eager"].eval(), dtype=dtype)
    nets = {c: n.eval().to(dtype) for c, n in built.items()}
    nets["optimized"] = optimized
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        outs = {c: n(x) for c, n in nets.items()}  # the warm-up, and the error
        optimized(x)  # on the CPU its second call records the program later calls replay
        fns = {c: (lambda n=n: n(x)) for c, n in nets.items()}
        med = _interleaved(fns, rounds, device)
    return [Result(name, "inference", c, device, str(dtype).split(".")[-1],
                   "channels_last" if channels_last else "nchw", batch, size, med[c], _rel_err(outs[c], outs["eager"]))
            for c in nets]


def bench_training(name: str, device: str, dtype: torch.dtype, batch: int, size: int, rounds: int,
                   channels_last: bool = False, contestants=CONTESTANTS, compile_backend: str = "inductor") -> list[Result]:
    """forward + backward + SGD step; float32 weights, autocast to dtype when it is not float32."""
    nets = {c: without_dropout(n.train())
            for c, n in _build(name, device, channels_last, contestants, compile_backend).items()}
    opts = {c: torch.optim.SGD(n.parameters(), lr=1e-4, momentum=0.9) for c, n in nets.items()}
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, nets["eager"].num_classes, (batch,), device=device)
    amp = dtype != torch.float32

    def step(c):
        opts[c].zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=amp):
            out = nets[c](x)
        loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, target)
        loss.backward()
        opts[c].step()
        return loss.detach()

    losses = {}
    for c in nets:  # the warm-up, and the error
        losses[c] = step(c)
    med = _interleaved({c: (lambda c=c: step(c)) for c in nets}, rounds, device)
    return [Result(name, "training step", c, device, f"{str(dtype).split('.')[-1]}{' autocast' if amp else ''}",
                   "channels_last" if channels_last else "nchw", batch, size, med[c],
                   _rel_err(losses[c], losses["eager"])) for c in nets]


def native_size(name: str) -> int:
    from inception_fast import models

    with torch.device("meta"):  # the record only: no memory, no initialisation
        return models.create_model(name).pretrained_cfg["input_size"][-1]


def run(model_names, device: str = "cpu", dtype: torch.dtype | None = None, batch: int | None = None,
        train_batch: int | None = None, size: int | None = None, train_size: int | None = None,
        rounds: int | None = None, channels_last: bool | None = None, kinds=("inference", "training step"),
        progress: bool = True, compile: bool = False, compile_backend: str = "inductor") -> dict:
    """Benchmark the models; returns {"machine": ..., "settings": ..., "results": [Result as dict]}."""
    gpu = device == "cuda"
    dtype = dtype or (torch.bfloat16 if gpu else torch.float32)
    batch = batch or (64 if gpu else 8)
    train_batch = train_batch or (32 if gpu else 8)
    rounds = rounds or (20 if gpu else 3)
    channels_last = gpu if channels_last is None else channels_last
    contestants = CONTESTANTS + (("compile",) if compile else ())
    jobs = [(m, k) for m in model_names for k in kinds]
    results: list[Result] = []
    bar = _progress(len(jobs), progress)
    for name, kind in jobs:
        bar.set_description(f"{name} {kind}")
        if kind == "inference":
            results += bench_inference(name, device, dtype, batch, size or native_size(name), rounds, channels_last,
                                       contestants, compile_backend)
        else:
            side = train_size or SMALL_SIZE.get(name, DEFAULT_SMALL)
            results += bench_training(name, device, dtype, train_batch, side, rounds, channels_last, contestants,
                                      compile_backend)
        bar.update(1)
    bar.close()
    return {"machine": machine_info(device),
            "settings": {"rounds": rounds, "order": "interleaved", "dtype": str(dtype).split(".")[-1],
                         "channels_last": channels_last, "contestants": list(contestants),
                         **({"compile_backend": compile_backend} if compile else {})},
            "results": [dict(dataclasses.asdict(r), images_per_s=r.images_per_s) for r in results]}


class _NoBar:
    def set_description(self, _):
        pass

    def update(self, _):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        warnings.warn("tqdm is not installed: no progress bar (pip install tqdm)", stacklevel=3)
        return _NoBar()
    return tqdm(total=total, unit="run", file=sys.stderr, leave=False)


# -- reading results back ----------------------------------------------------------------------
def load_results(path: str | os.PathLike) -> tuple[list[Result], dict]:
    """Results from our JSON (`inception-fast bench --json`) or pytest-benchmark's (`--benchmark-json`
    of benchmarks/test_models.py), and the machine it came from."""
    with open(path) as f:
        data = json.load(f)
    if "results" in data:
        fields = {f.name for f in dataclasses.fields(Result)}
        return [Result(**{k: v for k, v in r.items() if k in fields}) for r in data["results"]], data.get("machine", {})
    if "benchmarks" in data:
        results = []
        for b in data["benchmarks"]:
            info = b.get("extra_info", {})
            if "images" not in info:  # an op benchmark: no images/s to report
                continue
            results.append(Result(info["model"], info["kind"], info["contestant"], info.get("device", "cpu"),
                                  info.get("dtype", ""), info.get("layout", ""), int(info["batch"]), int(info["size"]),
                                  float(b["stats"]["median"]), float(info.get("rel_err", float("nan")))))
        mi = data.get("machine_info", {})
        machine = {"cpu": mi.get("cpu", {}).get("brand_raw", mi.get("processor", "")), "python": mi.get("python_version"),
                   "torch": data.get("torch_version")}
        return results, machine
    raise ValueError(f"{path}: neither inception-fast bench JSON (a 'results' list) nor pytest-benchmark JSON "
                     "(a 'benchmarks' list)")


def _rows(results: list[Result]):
    """(model, kind, setting, {contestant: Result}) per measured configuration, in a stable order."""
    groups: dict[tuple, dict[str, Result]] = {}
    for r in results:
        key = (r.model, r.kind, f"{r.device} {r.dtype} {r.layout} b{r.batch} {r.size}px")
        groups.setdefault(key, {})[r.contestant] = r
    return [(*k, v) for k, v in sorted(groups.items())]


def markdown_table(results: list[Result], machine: dict | None = None) -> str:
    contestants = [c for c in ("eager", "peer", "compile", "fused", "optimized") if any(r.contestant == c for r in results)]
    contestants += sorted({r.contestant for r in results} - set(contestants))
    others = [c for c in contestants if c != "eager"]
    head = ["model", "pass", "setting"] + [f"{c} img/s" for c in contestants] + \
        [f"{c} vs eager" for c in others] + [f"{c} rel. err" for c in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, kind, setting, by in _rows(results):
        eager = by.get("eager")
        cells = [model, kind, setting]
        cells += [f"{by[c].images_per_s:.1f}" if c in by else "—" for c in contestants]
        cells += [f"{eager.seconds / by[c].seconds:.2f}x" if c in by and eager else "—" for c in others]
        cells += [f"{by[c].rel_err:.1e}" if c in by else "—" for c in others]
        lines.append("| " + " | ".join(cells) + " |")
    if machine:
        desc = ", ".join(f"{k} {v}" for k, v in machine.items() if v not in (None, ""))
        lines.append("")
        lines.append(f"Measured on: {desc}.")
    return "\n".join(lines) + "\n"


def bar_chart(results: list[Result], path: str | os.PathLike, title: str = "") -> Path:
    """A PNG of each contestant's speed relative to eager, per model and pass."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the chart needs matplotlib: pip install matplotlib (or inception-fast[bench])") from None
    rows = [row for row in _rows(results) if "eager" in row[3]]
    contestants = sorted({c for *_, by in rows for c in by if c != "eager"})
    labels = [f"{m} {k}" for m, k, _, _ in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.0))
    width = 0.8 / max(len(contestants), 1)
    for i, c in enumerate(contestants):
        xs = [j + (i - (len(contestants) - 1) / 2) * width for j in range(len(rows))]
        ys = [by["eager"].seconds / by[c].seconds if c in by else 0.0 for *_, by in rows]
        ax.bar(xs, ys, width, label=c)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("speed vs eager (x)")
    ax.set_title(title or "inception_fast: speed relative to the eager reference path")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(json_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, chart: bool = True) -> dict:
    """Write <name>.md (and <name>.png) next to the JSON or into out_dir; returns their paths."""
    results, machine = load_results(json_path)
    if not results:
        raise ValueError(f"{json_path}: no whole-model results in it (op benchmarks have no images/s)")
    out_dir = Path(out_dir) if out_dir else Path(json_path).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(json_path).stem
    md = out_dir / f"{stem}.md"
    md.write_text(markdown_table(results, machine))
    paths = {"markdown": md}
    if chart:
        paths["png"] = bar_chart(results, out_dir / f"{stem}.png")
    return paths


# -- command line ------------------------------------------------------------------------------
def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return name


# The options of `inception-fast bench` and `inception-fast report`; inception_fast.cli builds the parsers.
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from inception_fast.models import list_models

    p.add_argument("--models", nargs="+", default=None, choices=list_models(), metavar="NAME",
                   help=f"models to time (default: all six: {', '.join(list_models())})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if visible")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: float32 on the CPU, bfloat16 on a GPU (autocast for the training step)")
    p.add_argument("--batch", type=int, default=None, help="inference batch (default 8 on the CPU, 64 on a GPU)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 8 / 32)")
    p.add_argument("--size", type=int, default=None, help="inference input side (default: each model's native)")
    p.add_argument("--train-size", type=int, default=None, help="training input side (default 75; BN-Inception 64)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per contestant (default 3 / 20)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on a GPU")
    p.add_argument("--only", choices=["inference", "training"], default=None, help="one pass (default: both)")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile of the reference path (mode max-autotune on a GPU); compiling takes "
                        "minutes per model")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile's backend (implies --compile; default inductor; aot_eager captures the "
                        "graph without generating code)")
    p.add_argument("--json", default=None, help="also write the results (with the machine) to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress lines while timing")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("json", help="inception-fast bench --json output, or pytest-benchmark --benchmark-json output")
    p.add_argument("--out", default=None, help="folder for the .md and .png (default: next to the JSON)")
    p.add_argument("--no-chart", action="store_true", help="only the Markdown table")


def bench_main(args: argparse.Namespace) -> int:
    from inception_fast.models import list_models

    device = _device(args.device)
    kinds = {"inference": ("inference",), "training": ("training step",)}.get(args.only, ("inference", "training step"))
    data = run(args.models or list_models(), device, getattr(torch, args.dtype) if args.dtype else None,
               args.batch, args.train_batch, args.size, args.train_size, args.rounds, args.channels_last, kinds,
               progress=not args.no_progress, compile=args.compile or args.compile_backend is not None,
               compile_backend=args.compile_backend or "inductor")
    results = [Result(**{k: v for k, v in r.items() if k != "images_per_s"}) for r in data["results"]]
    print(markdown_table(results, data["machine"]), end="")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"results written to {args.json}")
    return 0


def report_main(args: argparse.Namespace) -> int:
    paths = report(args.json, args.out, chart=not args.no_chart)
    print(Path(paths["markdown"]).read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `inception-fast` parser (inception_fast.cli), whose bench and report take the options above."""
    from inception_fast import cli

    return cli.build_parser()


def main(argv: list[str] | None = None) -> int:
    """`python -m inception_fast.bench [bench|report] OPTIONS`: the `inception-fast` command, bench when
    the first word is an option or there is none (so `--help` here is bench's)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-"):
        argv = ["bench", *argv]  # `python -m inception_fast.bench --models ...`
    from inception_fast import cli

    return cli.run(argv)


if __name__ == "__main__":
    sys.exit(main())
