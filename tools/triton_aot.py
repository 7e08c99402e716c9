"""The package's Triton kernels compiled ahead of time for NVIDIA GPUs, on a machine without one.

The Triton interpreter (TRITON_INTERPRET=1) checks what the kernels compute; it cannot say whether
they compile for a GPU, or how much shared memory and how many registers a launch configuration
takes there. This repository tool answers that before any GPU time is spent:

- `record()` (under the interpreter): notes the specialisation of every kernel launch made inside it
  (kernel, argument types, constexpr values, num_warps, num_stages), with `run=False` without running
  the kernels (shapes still flow; the values are garbage), so a model's launches at a real input size
  are recorded in seconds;
- `compile_specs(specs, archs)`: in a fresh process without the interpreter, `triton.compile`s each
  for each architecture (sm_80, sm_90) with the ptxas Triton ships, and reads each cubin's registers,
  shared memory and stack / local memory (where ptxas puts spilled registers) with the cuobjdump it
  ships.

    python tools/triton_aot.py OUT.md [--batch 2] [--models ...]

records the launches of the six models' fused path (a bf16 autocast training step) and of
optimize(branch_conv=True) at their native size, compiles them for sm_80 and sm_90, and writes the
table. The specialisation is the generic one (integer arguments as i32 with no divisibility hints),
so a JIT launch on a GPU may use a little less than the table says, not more shared memory.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Bytes of shared memory one block may use (the opt-in maximum): sm_80 163 KiB, sm_90 227 KiB.
SHARED_LIMIT = {80: 166912, 90: 232448}
ARCHS = (80, 90)

_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One specialisation of one kernel: what triton.compile needs."""
    module: str
    kernel: str
    signature: tuple  # ((arg name, type or "constexpr"), ...)
    constexprs: tuple  # ((arg name, value), ...)
    num_warps: int = 4
    num_stages: int = 3

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Spec":
        return cls(d["module"], d["kernel"], tuple(map(tuple, d["signature"])), tuple(map(tuple, d["constexprs"])),
                   d["num_warps"], d["num_stages"])


def _is_constexpr(annotation) -> bool:
    return annotation is not inspect.Parameter.empty and "constexpr" in str(annotation)


def _arg_type(value) -> str | None:
    """Triton's type string of a runtime argument; None for a value that becomes a constexpr."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[str(value.dtype).split(".")[-1]]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if value is None:
        return None
    raise TypeError(f"a kernel argument of type {type(value).__name__} has no Triton type here")


def spec_of(fn, args: tuple, kwargs: dict) -> Spec:
    """The Spec of a launch fn[grid](*args, **kwargs) of an interpreted kernel."""
    py = fn.fn
    params = inspect.signature(py).parameters
    names = list(params)
    launch = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    for name, p in params.items():  # defaults of the kernel's own signature
        if name not in bound and p.default is not inspect.Parameter.empty:
            bound[name] = p.default
    signature, constexprs = [], []
    for name in names:
        value = bound[name]
        t = None if _is_constexpr(params[name].annotation) else _arg_type(value)
        signature.append((name, t or "constexpr"))
        if t is None:
            constexprs.append((name, value))
    return Spec(py.__module__, py.__name__, tuple(signature), tuple(constexprs), launch.get("num_warps", 4),
                launch.get("num_stages", 3))


@contextlib.contextmanager
def record(run: bool = True):
    """Yield a set that collects the Spec of every interpreted kernel launch in the block; with
    run=False the kernels are not run. Needs TRITON_INTERPRET=1 set before triton was imported."""
    from triton.runtime.interpreter import InterpretedFunction

    specs: set = set()
    original = InterpretedFunction.run

    def run_and_note(self, *args, grid, warmup, **kwargs):
        specs.add(spec_of(self, args, kwargs))
        if run:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        return None

    InterpretedFunction.run = run_and_note
    try:
        yield specs
    finally:
        InterpretedFunction.run = original


def _resources(cubin: bytes, cuobjdump: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    found = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in found.items()}


def _compile_here(specs: list[Spec], archs) -> list[dict]:
    """Compile in this process (which must not be interpreting)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    rows = []
    for spec in specs:
        fn = getattr(importlib.import_module(spec.module), spec.kernel)
        index = {name: i for i, (name, _) in enumerate(spec.signature)}
        constexprs = {(index[name],): value for name, value in spec.constexprs}
        for arch in archs:
            row = {"spec": spec.to_json(), "arch": arch}
            t = time.perf_counter()
            try:
                k = triton.compile(ASTSource(fn, dict(spec.signature), constexprs), target=GPUTarget("cuda", arch, 32),
                                   options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
                res = _resources(k.asm["cubin"], cuobjdump)
                row.update(res, ok=True, shared=max(int(k.metadata.shared), res.get("shared", 0)))
            except Exception as e:  # noqa: BLE001 -- reported per specialisation
                row.update(ok=False, error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}")
            row["seconds"] = round(time.perf_counter() - t, 2)
            rows.append(row)
    return rows


def compile_specs(specs, archs=ARCHS) -> list[dict]:
    """triton.compile each Spec for each architecture in a fresh process without the interpreter;
    one dict per (spec, arch): ok, and shared / reg / local / stack bytes, or the error."""
    specs = sorted(specs, key=lambda s: (s.module, s.kernel, repr(s)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "specs.json"
        path.write_text(json.dumps({"archs": list(archs), "specs": [s.to_json() for s in specs]}))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        r = subprocess.run(_this_tool("--compile-json", str(path)), capture_output=True, text=True,
                           env=_with_package_path(env))
        if r.returncode != 0:
            raise RuntimeError(f"compiling the Triton kernels failed:\n{r.stderr[-3000:]}")
        return json.loads((Path(d) / "specs.json.out").read_text())


def problems(rows: list[dict]) -> list[str]:
    """What would fail or spill on a GPU: compile errors, shared memory over the block limit, spills."""
    out = []
    for r in rows:
        name = f"{r['spec']['kernel']} sm_{r['arch']} {dict(map(tuple, r['spec']['constexprs']))}"
        if not r["ok"]:
            out.append(f"{name}: does not compile: {r['error']}")
        elif r["shared"] > SHARED_LIMIT[r["arch"]]:
            out.append(f"{name}: {r['shared']} bytes of shared memory, over sm_{r['arch']}'s {SHARED_LIMIT[r['arch']]}")
        elif r.get("local", 0) > 0 or r.get("stack", 0) > 0:  # ptxas puts spilled registers on the stack
            out.append(f"{name}: spills registers ({r.get('stack', 0)} bytes of stack, {r.get('local', 0)} of local "
                       "memory a thread)")
    return out


@contextlib.contextmanager
def as_on_a_gpu(sms: int = 132):
    """The launch configurations a GPU of `sms` multiprocessors gets, for launches recorded from CPU
    tensors (the wrappers size the reductions by the device, and give the interpreter its own
    flags): only with record(run=False), since the kernels are then not run."""
    from inception_fast.triton import bn_relu, branch_conv

    with bn_relu.launches_as_on_gpu(sms), branch_conv.launches_as_on_gpu():
        yield


def model_specs(models: list[str], batch: int, size: int | None = None) -> set:
    """The launches of each model's fused path (a bf16 autocast training step, channels_last) and of
    optimize(branch_conv=True) in bf16 and float32, on the Triton backend at the native size (or
    `size`), not run, as an H100 / H200 (132 multiprocessors) would launch them."""
    import torch

    from inception_fast import models as zoo, ops, optimize

    specs: set = set()
    for name in models:
        # (below the native size without the auxiliary classifiers, which need its grid)
        extra = {"aux_logits": False} if size and name in ("googlenet", "inception_v3") else {}
        model = zoo.create_model(name, num_classes=10, **extra)
        side = size or model.pretrained_cfg["input_size"][-1]
        x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
        net = model.to(memory_format=torch.channels_last).train()
        with record(run=False) as got, as_on_a_gpu(), ops.use_backend("triton"), torch.autocast("cpu", torch.bfloat16):
            out = net(x)
            out = out[0] if isinstance(out, tuple) else out
            out.float().sum().backward()
        specs |= got
        for dtype in (torch.bfloat16, torch.float32):
            opt = optimize(model.eval(), dtype=dtype, branch_conv=True, replay=False)
            with record(run=False) as got, as_on_a_gpu(), ops.use_backend("triton"), torch.no_grad():
                opt(x)
            specs |= got
    return specs


def report(rows: list[dict]) -> str:
    lines = ["| kernel | dtypes | constexprs | warps/stages | arch | regs | shared B | stack B (spills) | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["spec"]
        dtypes = sorted({t[1:] for _, t in s["signature"] if t.startswith("*")})
        consts = ", ".join(f"{k}={v}" for k, v in s["constexprs"])
        if r["ok"]:
            lines.append(f"| {s['kernel']} | {'/'.join(dtypes)} | {consts} | {s['num_warps']}/{s['num_stages']} | "
                         f"sm_{r['arch']} | {r.get('reg', '?')} | {r['shared']} | {r.get('stack', 0) + r.get('local', 0)} | "
                         f"{r['seconds']} |")
        else:
            lines.append(f"| {s['kernel']} | {'/'.join(dtypes)} | {consts} | {s['num_warps']}/{s['num_stages']} | "
                         f"sm_{r['arch']} | FAILED: {r['error']} | | | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def _this_tool(*args: str) -> list[str]:
    """The command that runs this file again (a child without the interpreter, or one with it)."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


def _with_package_path(env: dict) -> dict:
    """`env` with the inception_fast this process imports first on PYTHONPATH, so that the child
    (run as a script, its own folder first on sys.path) imports the same one."""
    root = str(Path(importlib.util.find_spec("inception_fast").origin).resolve().parents[1])
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python tools/triton_aot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="the markdown report to write")
    p.add_argument("--models", nargs="+", default=["googlenet", "bn_inception", "inception_v3", "inception_v4",
                                                   "inception_resnet_v1", "inception_resnet_v2"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--compile-json", help=argparse.SUPPRESS)  # the compiling child process
    args = p.parse_args(argv)
    if args.compile_json:
        job = json.loads(Path(args.compile_json).read_text())
        rows = _compile_here([Spec.from_json(s) for s in job["specs"]], job["archs"])
        Path(args.compile_json + ".out").write_text(json.dumps(rows))
        return 0
    if not args.out:
        p.error("the report's path is needed")
    if os.environ.get("TRITON_INTERPRET") != "1":
        # recording runs the kernels' launch code under the interpreter: start over with it set
        return subprocess.run(_this_tool(*argv),
                              env=_with_package_path({**os.environ, "TRITON_INTERPRET": "1"})).returncode
    t = time.perf_counter()
    specs = model_specs(args.models, args.batch)
    rows = compile_specs(specs)
    bad = problems(rows)
    import triton
    import torch

    head = ["# Triton kernels compiled ahead of time for sm_80 and sm_90 (no GPU)", "",
            f"`python tools/triton_aot.py {args.out} --batch {args.batch}` (models: {', '.join(args.models)}); "
            f"triton {triton.__version__}, torch {torch.__version__}; {len(specs)} specialisations recorded from the "
            f"fused path's bf16 training step and optimize(branch_conv=True) (bf16, float32) on the Triton backend, "
            f"{time.perf_counter() - t:.0f} s.", "",
            "Problems: " + ("none" if not bad else ""), *[f"- {b}" for b in bad], "", ""]
    Path(args.out).write_text("\n".join(head) + report(rows))
    print("\n".join(head), end="")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
