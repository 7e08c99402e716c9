"""The GPU check in one command, for a fresh CUDA machine with torch, triton and nvcc (no internet):

    python -m inception_fast.gpucheck OUTDIR [--budget SECONDS] [--skip-build] [--compile MODELS|all|none]
                                             [--models M1,M2,...] [--no-bench]

1. builds the extension in place for this GPU (TORCH_CUDA_ARCH_LIST = its capability);
2. runs every test that touches the GPU (`pytest tests/ -k cuda`: the CUDA and Triton kernels against
   the float64 references, opcheck, compile, the models against their peers on the GPU), then a short
   training run (`inception_fast.train` on the built-in demo data, bf16, two epochs);
3. times the GPU benchmarks (`pytest benchmarks/`: the ops against the copy bandwidth; one block of
   each kind; the six models in bf16 channels_last at batch 1 and 256 and an AMP training step at
   batch 128), eager vs inception_fast, and torch.compile(mode="max-autotune") of the reference path
   for the models --compile names (default inception_v3);
4. writes env.txt, build.log, tests.log/tests.xml, bench.log/bench.json and summary.md to OUTDIR, and
   prints the summary last.

It fits a time budget (--budget, default 540 s: one device call of at most 600 s, the summary
included), because a lent GPU comes with minutes, not hours. Each step gets a share of the time left
when it starts (the tests 45%, the training run at most 150 s, the benchmarks the rest); its pytest
skips every test that would start after the step's deadline (inception_fast._pytest_deadline: the
run still ends by itself and writes its reports for what ran), and a step still running 45 s past its
deadline is interrupted (SIGINT, then killed). The benchmarks time the models first, in --models
order (the issue's four, Inception-v3 first), then the blocks, then the ops.

Exit status 0 only when the build and every test passed with nothing left out; 1 when something
failed (the failing step and tests are named); 3 when nothing failed but the budget left tests or
benchmarks out (the summary counts them). Run from the repository root (it needs setup.py, tests/
and benchmarks/).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


from inception_fast import _pytest_deadline

DEFAULT_COMPILE = "inception_v3"
# The models the benchmarks time, in this order: the four of the targets, Inception-v3 first.
DEFAULT_MODELS = "inception_v3,googlenet,inception_v4,inception_resnet_v2,bn_inception,inception_resnet_v1"
DEFAULT_BUDGET = 540.0
SUMMARY_RESERVE = 10.0  # seconds kept for writing the summary
GRACE = 45.0            # past a step's deadline before it is interrupted


@dataclasses.dataclass
class Step:
    name: str
    command: list[str]
    log: str
    env: dict = dataclasses.field(default_factory=dict)
    required: bool = True   # a failure makes the check fail
    share: float = 1.0      # of the time left when the step starts, at most
    cap: float | None = None  # seconds, at most


@dataclasses.dataclass
class Done:
    step: Step
    rc: int | None          # None: not run (the budget was spent before it)
    seconds: float
    timed_out: bool = False  # interrupted past its deadline


def gpu_env() -> dict:
    """What the build needs to know about this machine (empty when torch sees no GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "capability": f"{major}.{minor}", "torch": torch.__version__,
            "cuda": torch.version.cuda}


def plan(out: Path, env: dict, skip_build: bool = False, bench: bool = True,
         compile_: str = DEFAULT_COMPILE, models: str = DEFAULT_MODELS) -> list[Step]:
    """The steps of the check for a machine described by `env` (gpu_env())."""
    if not env:
        raise RuntimeError("no CUDA device is visible to torch: the GPU check needs one "
                           "(on a CPU machine, .ci/run is the check)")
    py = sys.executable
    steps = []
    if not skip_build:
        steps.append(Step("build", [py, "setup.py", "build_ext", "--inplace"], "build.log",
                          {"TORCH_CUDA_ARCH_LIST": env["capability"], "FORCE_CUDA": "1",
                           "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda")}))
    steps.append(Step("kernels present", [py, "-c", "from inception_fast import _ext; "
                      "assert _ext.has_kernel('bn_stats', 'CUDA'), _ext.LOAD_ERROR or 'no CUDA kernels in _C'"],
                      "kernels.log"))
    deadline = ["-p", _pytest_deadline.__name__]
    # (-k cuda also matches CPU tests that emulate the CUDA kernels: CI runs those)
    steps.append(Step("tests", [py, "-m", "pytest", "tests/", "-q", "-p", "no:cacheprovider", *deadline,
                                "-k", "cuda and not emulated", "-rf", f"--junitxml={out / 'tests.xml'}"],
                      "tests.log", share=0.45))
    # A training run end to end on the GPU (the built-in demo data, bf16 autocast, the fused path,
    # DataLoader workers): the training command's GPU path, which the CPU CI cannot run.
    steps.append(Step("training run", [py, "-m", "inception_fast.train", "--model", "inception_v3", "--img-size", "96",
                                       "--epochs", "2", "--batch-size", "32", "--amp", "bf16", "--device", "cuda",
                                       "--channels-last", "--no-progress", "--out", str(out / "train")],
                      "train.log", cap=150.0))
    if bench:
        benv = {"INCEPTION_FAST_BENCH_DEVICE": "cuda", "INCEPTION_FAST_BENCH_MODELS": models}
        if compile_ and compile_ != "none":
            benv["INCEPTION_FAST_BENCH_COMPILE"] = compile_
        steps.append(Step("benchmarks", [py, "-m", "pytest", "benchmarks/test_models.py", "benchmarks/test_blocks.py",
                                         "benchmarks/test_ops.py", "--benchmark-only", "-q", "-p", "no:cacheprovider",
                                         *deadline, f"--junitxml={out / 'bench.xml'}",
                                         f"--benchmark-json={out / 'bench.json'}", "--benchmark-columns=median"],
                          "bench.log", benv))
    return steps


def _cases(junit_xml: Path):
    if not junit_xml.exists():
        return []
    try:
        return list(ET.parse(junit_xml).getroot().iter("testcase"))
    except ET.ParseError:  # a report cut short
        return []


def failed_tests(junit_xml: Path) -> list[str]:
    """`file::test` of every failed or erroring test case in a JUnit XML report."""
    return [f"{case.get('classname', '')}::{case.get('name', '')}" for case in _cases(junit_xml)
            if case.find("failure") is not None or case.find("error") is not None]


def left_out(junit_xml: Path) -> int:
    """How many test cases of a JUnit XML report the time budget left out."""
    return sum(1 for case in _cases(junit_xml)
               if (s := case.find("skipped")) is not None and _pytest_deadline.REASON in (s.get("message") or ""))


def run_command(command: list[str], log, env: dict, timeout: float) -> tuple[int, bool]:
    """Run command with its output to log; past `timeout` seconds interrupt it (SIGINT: pytest then
    writes its reports for what ran), and kill it 20 s later. Returns (exit status, timed out)."""
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        return proc.wait(timeout=max(timeout, 1.0)), False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.write(f"\n[gpucheck] interrupted: still running {timeout:.0f} s after it started\n")
        return proc.returncode, True


def summary_table(log_text: str) -> str:
    """The benchmark suite's own summary (the section after its 'speed-up over eager' header)."""
    lines = log_text.splitlines()
    start = next((i for i, line in enumerate(lines) if "speed-up over eager" in line), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("----") or lines[i].startswith("====")),
               len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


def run_steps(steps: list[Step], out: Path, runner=run_command, budget: float = DEFAULT_BUDGET,
              clock=time.time) -> list[Done]:
    """Run the steps in order within `budget` seconds, each logging to out/<log> with its deadline in
    INCEPTION_FAST_DEADLINE; stop after a failed build or kernel check (nothing after them can run).
    A step the budget no longer reaches is recorded as not run."""
    end = clock() + budget - SUMMARY_RESERVE
    done = []
    for step in steps:
        start = clock()
        allot = min((end - start) * step.share, step.cap or float("inf"))
        if allot < 1.0:
            print(f"=== {step.name}: not run (time budget spent)", flush=True)
            done.append(Done(step, None, 0.0))
            continue
        print(f"=== {step.name} (at most {allot:.0f} s)", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", _pytest_deadline.ENV: f"{start + allot:.1f}", **step.env}
        with open(out / step.log, "w") as log:
            rc, timed_out = runner(step.command, log, env, allot + GRACE)
        done.append(Done(step, rc, clock() - start, timed_out))
        if rc != 0 and step.name in ("build", "kernels present"):
            break
    return done


def _status(d: Done) -> str:
    if d.rc is None:
        return "not run (time budget spent)"
    if d.timed_out:
        return f"INTERRUPTED past its deadline (exit {d.rc})"
    return "ok" if d.rc == 0 else f"FAILED (exit {d.rc})"


def verdict(out: Path, done: list[Done]) -> str:
    """PASSED, FAILED, or INCOMPLETE (nothing failed, but the budget left steps, tests or benchmarks out)."""
    ran = {d.step.name for d in done if d.rc is not None}
    if any(d.rc not in (0, None) and d.step.required and not d.timed_out for d in done) or failed_tests(out / "tests.xml") \
            or not ran >= {"kernels present"}:
        return "FAILED"
    complete = all(d.rc == 0 and not d.timed_out for d in done if d.step.required) and "tests" in ran \
        and not left_out(out / "tests.xml") and not left_out(out / "bench.xml")
    return "PASSED" if complete else "INCOMPLETE"


def write_summary(out: Path, env: dict, done: list[Done]) -> tuple[str, str]:
    """summary.md: the verdict, the machine, each step's status and time, the failing tests, what the
    budget left out, the benchmark table."""
    result = verdict(out, done)
    lines = [f"# GPU check: {result}", "",
             "machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {d.step.name} | {_status(d)} | {d.seconds:.0f} |" for d in done]
    failed = failed_tests(out / "tests.xml")
    if failed:
        lines += ["", f"failing tests ({len(failed)}):"] + [f"- {t}" for t in failed]
    for what, xml in (("tests", "tests.xml"), ("benchmarks", "bench.xml")):
        n = left_out(out / xml)
        if n:
            lines += ["", f"{what}: {n} left out by the time budget (a later run with --budget or a narrower -k/--models)"]
    for d in done:
        if d.rc not in (0, None) and d.step.name in ("build", "kernels present"):
            tail = (out / d.step.log).read_text().splitlines()[-30:]
            lines += ["", f"last lines of {d.step.log}:", "```", *tail, "```"]
    bench_log = out / "bench.log"
    if bench_log.exists():
        table = summary_table(bench_log.read_text())
        if table:
            lines += ["", "```", table.rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inception_fast.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for the logs, JUnit XML, benchmark JSON and summary.md")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="SECONDS",
                   help=f"the whole check's time (default {DEFAULT_BUDGET:.0f}: one device call of at most 600 s)")
    p.add_argument("--models", default=DEFAULT_MODELS, metavar="M1,M2,...",
                   help="the models the benchmarks time, in this order (default: %(default)s)")
    p.add_argument("--skip-build", action="store_true", help="use the _C already built")
    p.add_argument("--no-bench", action="store_true", help="build and test only")
    p.add_argument("--compile", default=DEFAULT_COMPILE, metavar="MODELS",
                   help="the models (comma-separated), 'all' or 'none' whose reference path is also timed under "
                        f"torch.compile(mode='max-autotune') (default: {DEFAULT_COMPILE}; max-autotune searches "
                        "kernels for minutes per model and configuration, so all six do not fit a 9-minute budget)")
    args = p.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    env = gpu_env()
    try:
        steps = plan(out, env, args.skip_build, not args.no_bench, args.compile, args.models)
    except RuntimeError as e:
        print(f"GPU CHECK NOT RUN: {e}", file=sys.stderr)
        return 2
    (out / "env.txt").write_text("\n".join(f"{k}: {v}" for k, v in env.items()) + "\n")
    text, result = write_summary(out, env, run_steps(steps, out, budget=args.budget))
    print(text, end="")
    return {"PASSED": 0, "FAILED": 1, "INCOMPLETE": 3}[result]


if __name__ == "__main__":
    sys.exit(main())
