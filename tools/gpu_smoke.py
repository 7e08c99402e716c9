"""The GPU check's smoke stage: every GPU kernel once at its largest model shape, then the six models,
each against its reference, in about a minute.

    python3 -m tools.gpu_smoke [--junit PATH] [--device cuda|cpu] [--small] [--only TEXT] [--list]

- the ops that have CUDA C++ or Triton kernels (bn_relu training forward + backward and eval,
  scaled_residual_add forward + backward with and without ReLU, branch_conv on three real blocks,
  conv1x1 forward + backward) on each kernel backend of the device, in bf16 and fp32, at the
  shape the largest model input gives them (batch 256 at the native side: bn_relu on Inception-v3's
  (256, 64, 147, 147) stem activations), against the op's reference in float64 (branch_conv's
  bf16 also against 2x the eager bf16 composition's own error, as its tests do);
- each of the six models at its native side, batch 32: one bf16-autocast training step of the fused
  path against the reference path (the loss and all gradients, within 3x the reference path's own
  change under bf16-sized input noise), and optimize() in fp32 and bf16 against the reference path's
  fp32 eval forward.

TF32 is off for cuDNN and cuBLAS, so the fp32 tolerances measure our kernels. Each check is isolated
(an exception fails that check only); once INCEPTION_FAST_DEADLINE passes, the remaining checks are
skipped with the deadline plugin's reason (counted as left out). One line per check: name, the worst
measurement (the one nearest its tolerance), its relative error and tolerance, PASS/FAIL, time.
--junit writes the results as JUnit XML (the GPU check merges it into tests.xml). Exit status 1 when a
check failed. --device cpu --small runs the same checks on CPU kernels at small shapes (the checks'
own test).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tools.pytest_deadline import REASON, deadline

# tests/ is a folder of modules, not a package (a `tests` package some wheels install, torch-fidelity's
# among them, would shadow it): its helpers are imported from it by path, as pytest does.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _peers import randomise  # noqa: E402  (BatchNorm statistics away from (0, 1), as the model tests do)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
MODELS = ("inception_v3", "googlenet", "inception_v4", "inception_resnet_v2", "bn_inception", "inception_resnet_v1")


@dataclasses.dataclass
class Check:
    name: str
    run: Callable[[], list]  # -> [(what, relative error, tolerance), ...]


@dataclasses.dataclass
class Result:
    name: str
    status: str            # "pass", "fail" or "skip"
    seconds: float = 0.0
    what: str = ""         # the measurement nearest its tolerance
    err: float = float("nan")
    tol: float = float("nan")
    message: str = ""      # why it failed or was skipped

    def line(self) -> str:
        status = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[self.status]
        text = f"{self.name:58s} {self.what:13s} {self.err:9.2e} {self.tol:8.1e} {status} {self.seconds * 1e3:9.1f} ms"
        return text + (f"  {self.message}" if self.message else "")


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, in float64 on the tensors' device (no copy of GPU-sized tensors)."""
    a, ref = a.detach().double(), ref.detach().double()
    den = ref.norm().item()
    num = (a - ref).norm().item()
    return num / den if den > 0 else num


def _act(shape, dtype, device, scale=2.0, shift=0.5, grad=False):
    """Random activations in channels_last (the layout the models run in on a GPU)."""
    x = (torch.randn(shape, device=device) * scale + shift).to(dtype).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


def _leaf64(t):
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


# ---- the ops -----------------------------------------------------------------------------------------
def bn_relu_train(shape, dtype, backend, device):
    from inception_fast import ops

    c = shape[1]
    x = _act(shape, dtype, device, grad=True)
    w = (torch.rand(c, device=device) + 0.5).requires_grad_()
    b = torch.randn(c, device=device).requires_grad_()
    rm, rv = torch.randn(c, device=device) * 0.1, torch.rand(c, device=device) + 0.5
    x64, w64, b64, rm64, rv64 = _leaf64(x), _leaf64(w), _leaf64(b), rm.double(), rv.double()
    with ops.use_backend(backend):
        y = ops.bn_relu(x, w, b, rm, rv, True, 0.1, 1e-3)
    g = _act(shape, dtype, device, 1.0, 0.1)
    y.backward(g)
    ref = F.relu(F.batch_norm(x64, rm64, rv64, w64, b64, True, 0.1, 1e-3))
    ref.backward(g.double())
    tol = TOL[dtype]
    return [("out", rel_err(y, ref), tol), ("grad x", rel_err(x.grad, x64.grad), tol),
            ("grad weight", rel_err(w.grad, w64.grad), tol), ("grad bias", rel_err(b.grad, b64.grad), tol),
            ("running var", rel_err(rv, rv64), TOL[torch.float32])]


def bn_relu_eval(shape, dtype, backend, device):
    from inception_fast import ops

    c = shape[1]
    x = _act(shape, dtype, device)
    w, b = torch.rand(c, device=device) + 0.5, torch.randn(c, device=device)
    rm, rv = torch.randn(c, device=device) * 0.1, torch.rand(c, device=device) + 0.5
    with torch.no_grad(), ops.use_backend(backend):
        y = ops.bn_relu(x, w, b, rm, rv, False, 0.1, 1e-3)
    ref = F.relu(F.batch_norm(x.double(), rm.double(), rv.double(), w.double(), b.double(), False, 0.1, 1e-3))
    return [("out", rel_err(y, ref), TOL[dtype])]


def scaled_residual_add(shape, dtype, backend, device, scale, relu):
    from inception_fast import ops

    x = _act(shape, dtype, device, 1.0, 0.0, grad=True)
    r = _act(shape, dtype, device, 3.0, -0.2, grad=True)
    x64, r64 = _leaf64(x), _leaf64(r)
    with ops.use_backend(backend):
        y = ops.scaled_residual_add(x, r, scale, relu)
    ref = x64 + scale * r64
    ref = ref.relu() if relu else ref
    # Where x + scale * r is 0 within the rounding of the scale itself the ReLU gradient is undefined
    # (a float32 and a float64 scale disagree there): those points get no incoming gradient.
    z32 = x64.detach() + float(torch.tensor(scale, dtype=torch.float32)) * r64.detach()
    knife_edge = (z32 > 0) != (ref.detach() > 0)
    g = _act(shape, dtype, device, 1.0, 0.1).masked_fill(knife_edge, 0)
    y.backward(g)
    ref.backward(g.double())
    tol = TOL[dtype]
    return [("out", rel_err(y, ref), tol), ("grad x", rel_err(x.grad, x64.grad), tol),
            ("grad residual", rel_err(r.grad, r64.grad), tol)]


def conv1x1(shape, dtype, backend, device):
    from inception_fast import ops

    n, c, h, w, o = shape
    x = _act((n, c, h, w), dtype, device, 1.0, 0.1, grad=True)
    weight = (torch.randn(o, c, 1, 1, device=device) / c ** 0.5).to(dtype).requires_grad_()
    bias = torch.randn(o, device=device).to(dtype).requires_grad_()
    x64, w64, b64 = _leaf64(x), _leaf64(weight), _leaf64(bias)
    with ops.use_backend(backend):
        y = ops.conv1x1(x, weight, bias)
    ref = F.conv2d(x64, w64, b64)
    g = _act(y.shape, dtype, device, 1.0, 0.0)
    y.backward(g)
    ref.backward(g.double())
    tol = TOL[dtype]
    return [("out", rel_err(y, ref), tol), ("grad x", rel_err(x.grad, x64.grad), tol),
            ("grad weight", rel_err(weight.grad, w64.grad), tol)]


def _block(model_name, path):
    from inception_fast import models

    torch.manual_seed(0)
    return randomise(models.create_model(model_name)).get_submodule(path).eval()


def branch_conv(shape, dtype, backend, device, model_name, path):
    from inception_fast import ops
    from inception_fast.ops.branch_conv import branch_conv_reference
    from inception_fast.optimize import branch_conv_spec

    branches = _block(model_name, path).branches()
    spec = {k: _to(v, device, dtype) for k, v in branch_conv_spec(branches, torch.float64).items()}
    spec64 = {k: _to(v, device, torch.float64) for k, v in branch_conv_spec(branches, torch.float64).items()}
    x = _act(shape, dtype, device, 1.0, 0.0)
    with torch.no_grad():
        with ops.use_backend(backend):
            y = ops.branch_conv(x, **spec)
        ref = branch_conv_reference(x.double(), **spec64)
        err = rel_err(y, ref)
        if dtype == torch.float32:
            return [("out", err, TOL[dtype])]
        # A branch of up to five convolutions rounds each output to 16 bits, as eager does: within
        # 1e-2, or 2x the eager bf16 composition's own error where the chain is long.
        eager = rel_err(branch_conv_reference(x, **spec), ref)
        return [("out", err, max(TOL[dtype], 2 * eager))]


def _to(v, device, dtype):
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=dtype)
    if isinstance(v, list) and v and isinstance(v[0], (torch.Tensor, type(None))):
        return [None if t is None else t.to(device=device, dtype=dtype) for t in v]
    return v


# (name, function, keyword arguments, full shape, small shape): the full shapes are batch 256 at the
# model's native side, at the layer that gives the op its largest tensor.
OPS = [
    ("bn_relu train", bn_relu_train, {}, (256, 64, 147, 147), (2, 8, 9, 11)),          # v3 stem, Conv2d_2b
    ("bn_relu eval", bn_relu_eval, {}, (256, 64, 147, 147), (2, 8, 9, 11)),
    ("scaled_residual_add relu", scaled_residual_add, {"scale": 0.17, "relu": True},
     (256, 320, 35, 35), (2, 16, 7, 7)),                                                 # IR-v2 Block35
    ("scaled_residual_add linear", scaled_residual_add, {"scale": 0.2, "relu": False},
     (256, 2080, 8, 8), (2, 32, 3, 3)),                                                  # IR-v2 last Block8
    ("conv1x1", conv1x1, {}, (256, 1088, 17, 17, 384), (2, 24, 5, 5, 16)),               # IR-v2 Block17 input
    ("branch_conv v3 Mixed_5b", branch_conv, {"model_name": "inception_v3", "path": "Mixed_5b"},
     (256, 192, 35, 35), (2, 192, 9, 9)),                                                # avg-pool branch, 5x5
    ("branch_conv v3 Mixed_6b", branch_conv, {"model_name": "inception_v3", "path": "Mixed_6b"},
     (256, 768, 17, 17), (2, 768, 5, 5)),                                                # 1x7 / 7x1 chains
    ("branch_conv googlenet inception3a", branch_conv, {"model_name": "googlenet", "path": "inception3a"},
     (256, 192, 28, 28), (2, 192, 6, 6)),                                                # max-pool branch
]
BACKEND_FREE = {"conv1x1"}  # one ATen GEMM definition, whichever kernel backend is asked for


def _dtype_name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def op_checks(device: str, backends: list[str], small: bool) -> list[Check]:
    checks = []
    for name, fn, kwargs, full, tiny in OPS:
        shape = tiny if small else full
        for backend in backends[:1] if name in BACKEND_FREE else backends:
            for dtype in (torch.bfloat16, torch.float32):
                label = f"{name} {backend} {_dtype_name(dtype)} {'x'.join(map(str, shape))}"
                checks.append(Check(label, lambda fn=fn, s=shape, d=dtype, b=backend, kw=kwargs: fn(s, d, b, device, **kw)))
    return checks


# ---- the models --------------------------------------------------------------------------------------
def _model(name, small):
    from inception_fast import models

    torch.manual_seed(0)
    # the auxiliary heads need the 17x17 grid of a native-size input
    kwargs = {"aux_logits": False} if small and name in ("googlenet", "inception_v3") else {}
    model = models.create_model(name, **kwargs)
    native = model.pretrained_cfg["input_size"][-1]
    return model, (max(model.min_input_size, 64) if small else native)


def _step(net, x, target, device):
    """Loss (auxiliary heads weighted 0.3, as the papers train) and flat gradient of one bf16-autocast step."""
    net.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = net(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    loss = F.cross_entropy(outs[0].float(), target)
    loss = loss + sum(0.3 * F.cross_entropy(a.float(), target) for a in outs[1:] if a is not None)
    loss.backward()
    grads = [p.grad for _, p in sorted(net.named_parameters())]
    return loss.detach(), torch.cat([g.reshape(-1).double() for g in grads if g is not None])


def train_step_amp(name, device, small):
    """One bf16-autocast training step of the fused path against the reference path's. A training
    step's batch statistics amplify rounding (tests/test_models.py), so the bound is measured: 3x the
    reference path's own change when its input moves by bf16's rounding (2^-8), or 1e-2 if larger."""
    from inception_fast.bench import without_dropout

    model, side = _model(name, small)
    model = without_dropout(model).to(device).train()
    batch = 2 if small else 32
    x = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    ref, fused = copy.deepcopy(model).set_fused(False), copy.deepcopy(model).set_fused(True)
    loss_r, grad_r = _step(ref, x, target, device)
    loss_f, grad_f = _step(fused, x, target, device)
    loss_n, grad_n = _step(copy.deepcopy(model).set_fused(False), x * (1 + 2 ** -8 * torch.randn_like(x)), target,
                           device)
    return [("loss", rel_err(loss_f, loss_r), max(1e-2, 3 * rel_err(loss_n, loss_r))),
            ("grads", rel_err(grad_f, grad_r), max(1e-2, 3 * rel_err(grad_n, grad_r)))]


def optimize_forward(name, dtype, device, small):
    """optimize(model) in `dtype` against the reference path's float32 eval forward; in bf16 within
    1e-2 or 2x the error of the reference path itself cast to bf16 (tests/test_optimize.py's bound)."""
    from inception_fast import optimize

    model, side = _model(name, small)
    model = randomise(model).to(device).eval()
    batch = 2 if small else 32
    x = torch.randn(batch, 3, side, side, device=device)
    with torch.no_grad():
        reference = copy.deepcopy(model).set_fused(False)
        ref = reference(x)
        y = optimize(model, dtype=dtype)(x)
        if dtype == torch.float32:
            return [("logits", rel_err(y, ref), 1e-4)]
        eager = rel_err(reference.to(dtype)(x.to(dtype)), ref)
    return [("logits", rel_err(y, ref), max(1e-2, 2 * eager))]


def model_checks(device: str, small: bool) -> list[Check]:
    checks = []
    for name in MODELS:
        checks.append(Check(f"train step bf16-autocast {name}", lambda n=name: train_step_amp(n, device, small)))
        for dtype in (torch.float32, torch.bfloat16):
            checks.append(Check(f"optimize {_dtype_name(dtype)} {name}",
                                lambda n=name, d=dtype: optimize_forward(n, d, device, small)))
    return checks


# ---- running them ------------------------------------------------------------------------------------
def run_check(check: Check) -> Result:
    """Run one check; an exception fails it (the first line of the error is kept)."""
    start = time.perf_counter()
    try:
        measured = check.run()
        _sync()
    except Exception as e:  # noqa: BLE001 - any error is this check's failure, not the run's
        message = traceback.format_exception_only(type(e), e)[-1].strip()
        _free()
        return Result(check.name, "fail", time.perf_counter() - start, "error", message=message[:300])
    seconds = time.perf_counter() - start
    what, err, tol = max(measured, key=lambda m: m[1] / m[2] if m[1] == m[1] else float("inf"))
    ok = all(e <= t for _, e, t in measured)  # NaN compares False: a NaN fails
    bad = [f"{w} {e:.2e} > {t:.1e}" for w, e, t in measured if not e <= t]
    _free()
    return Result(check.name, "pass" if ok else "fail", seconds, what, err, tol, "; ".join(bad))


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _free():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_checks(checks: list[Check], until: float = float("inf"), clock=time.time, echo=print) -> list[Result]:
    """Each check in turn, printing its line; the ones that would start after `until` are skipped."""
    results = []
    for check in checks:
        if clock() > until:
            result = Result(check.name, "skip", message=REASON)
        else:
            result = run_check(check)
        results.append(result)
        echo(result.line())
    return results


def write_junit(results: list[Result], path: Path, suite: str = "smoke") -> None:
    """The results as JUnit XML: one testcase per check (classname `suite`), its line as system-out."""
    root = ET.Element("testsuites")
    counts = {s: sum(r.status == s for r in results) for s in ("fail", "skip")}
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(counts["fail"]),
                       errors="0", skipped=str(counts["skip"]), time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        case = ET.SubElement(ts, "testcase", classname=suite, name=r.name, time=f"{r.seconds:.3f}")
        if r.status == "fail":
            ET.SubElement(case, "failure", message=r.message or "failed")
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=r.message)
        ET.SubElement(case, "system-out").text = r.line()
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def kernel_backends(device: str) -> list[str]:
    from inception_fast import ops

    return [b for b in ops.available_backends(device) if b != "reference"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tools.gpu_smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--junit", type=Path, help="write the results here as JUnit XML")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--small", action="store_true", help="small shapes (the CPU test of the checks themselves)")
    p.add_argument("--only", default="", metavar="TEXT", help="run the checks whose name contains TEXT")
    p.add_argument("--list", action="store_true", help="print the checks' names and exit")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device is visible to torch", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    backends = kernel_backends(args.device)
    checks = [c for c in op_checks(args.device, backends, args.small) + model_checks(args.device, args.small)
              if args.only in c.name]
    if args.list:
        print("\n".join(c.name for c in checks))
        return 0
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"smoke: {len(checks)} checks on {gpu}, kernel backends {backends}, TF32 off, "
          f"{'small' if args.small else 'full'} shapes", flush=True)
    print(f"{'check':58s} {'worst':13s} {'rel. err':>9s} {'tol':>8s} {'':4s} {'time':>12s}", flush=True)
    results = run_checks(checks, deadline(), echo=lambda line: print(line, flush=True))
    if args.junit:
        write_junit(results, args.junit)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    print(f"smoke: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped", flush=True)
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
