"""The GPU check in one command, for a fresh CUDA machine with torch, triton and nvcc (no internet):

    python -m inception_fast.gpucheck OUTDIR [--skip-build] [--compile MODELS|all|none] [--no-bench]

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

Exit status 0 only when the build and every test passed; otherwise the failing step and the failing
tests are named. Run from the repository root (it needs setup.py, tests/ and benchmarks/).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


DEFAULT_COMPILE = "inception_v3"


@dataclasses.dataclass
class Step:
    name: str
    command: list[str]
    log: str
    env: dict = dataclasses.field(default_factory=dict)
    required: bool = True   # a failure makes the check fail


def gpu_env() -> dict:
    """What the build needs to know about this machine (empty when torch sees no GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "capability": f"{major}.{minor}", "torch": torch.__version__,
            "cuda": torch.version.cuda}


def plan(out: Path, env: dict, skip_build: bool = False, bench: bool = True,
         compile_: str = DEFAULT_COMPILE) -> list[Step]:
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
    steps.append(Step("tests", [py, "-m", "pytest", "tests/", "-q", "-p", "no:cacheprovider", "-k", "cuda", "-rf",
                                f"--junitxml={out / 'tests.xml'}"], "tests.log"))
    # A training run end to end on the GPU (the built-in demo data, bf16 autocast, the fused path,
    # DataLoader workers): the training command's GPU path, which the CPU CI cannot run.
    steps.append(Step("training run", [py, "-m", "inception_fast.train", "--model", "inception_v3", "--img-size", "96",
                                       "--epochs", "2", "--batch-size", "32", "--amp", "bf16", "--device", "cuda",
                                       "--channels-last", "--no-progress", "--out", str(out / "train")],
                      "train.log"))
    if bench:
        benv = {"INCEPTION_FAST_BENCH_DEVICE": "cuda"}
        if compile_ and compile_ != "none":
            benv["INCEPTION_FAST_BENCH_COMPILE"] = compile_
        steps.append(Step("benchmarks", [py, "-m", "pytest", "benchmarks/", "--benchmark-only", "-q", "-p",
                                         "no:cacheprovider", f"--benchmark-json={out / 'bench.json'}",
                                         "--benchmark-columns=median"], "bench.log", benv))
    return steps


def failed_tests(junit_xml: Path) -> list[str]:
    """`file::test` of every failed or erroring test case in a JUnit XML report."""
    if not junit_xml.exists():
        return []
    failed = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return failed


def summary_table(log_text: str) -> str:
    """The benchmark suite's own summary (the section after its 'speed-up over eager' header)."""
    lines = log_text.splitlines()
    start = next((i for i, line in enumerate(lines) if "speed-up over eager" in line), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("----") or lines[i].startswith("====")),
               len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


def run_steps(steps: list[Step], out: Path, runner=subprocess.run) -> list[tuple[Step, int, float]]:
    """Run the steps in order, each logging to out/<log>; stop after a failed build or kernel check
    (nothing after them can run). Returns (step, exit status, seconds) per step run."""
    done = []
    for step in steps:
        print(f"=== {step.name}", flush=True)
        t = time.perf_counter()
        with open(out / step.log, "w") as log:
            rc = runner(step.command, stdout=log, stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", **step.env}).returncode
        done.append((step, rc, time.perf_counter() - t))
        if rc != 0 and step.name in ("build", "kernels present"):
            break
    return done


def write_summary(out: Path, env: dict, done: list[tuple[Step, int, float]]) -> tuple[str, bool]:
    """summary.md: the machine, each step's status and time, the failing tests, the benchmark table."""
    ok = all(rc == 0 for step, rc, _ in done if step.required) and \
        {s.name for s, _, _ in done} >= {"kernels present", "tests"}
    lines = [f"# GPU check: {'PASSED' if ok else 'FAILED'}", "",
             "machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {'ok' if rc == 0 else f'FAILED (exit {rc})'} | {sec:.0f} |" for s, rc, sec in done]
    failed = failed_tests(out / "tests.xml")
    if failed:
        lines += ["", f"failing tests ({len(failed)}):"] + [f"- {t}" for t in failed]
    for s, rc, _ in done:
        if rc != 0 and s.name in ("build", "kernels present"):
            tail = (out / s.log).read_text().splitlines()[-30:]
            lines += ["", f"last lines of {s.log}:", "```", *tail, "```"]
    bench_log = out / "bench.log"
    if bench_log.exists():
        table = summary_table(bench_log.read_text())
        if table:
            lines += ["", "```", table.rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inception_fast.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for the logs, JUnit XML, benchmark JSON and summary.md")
    p.add_argument("--skip-build", action="store_true", help="use the _C already built")
    p.add_argument("--no-bench", action="store_true", help="build and test only")
    p.add_argument("--compile", default=DEFAULT_COMPILE, metavar="MODELS",
                   help="the models (comma-separated), 'all' or 'none' whose reference path is also timed under "
                        f"torch.compile(mode='max-autotune') (default: {DEFAULT_COMPILE}; max-autotune searches "
                        "kernels for minutes per model and configuration, so all six do not fit the 9 minutes)")
    args = p.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    env = gpu_env()
    try:
        steps = plan(out, env, args.skip_build, not args.no_bench, args.compile)
    except RuntimeError as e:
        print(f"GPU CHECK NOT RUN: {e}", file=sys.stderr)
        return 2
    (out / "env.txt").write_text("\n".join(f"{k}: {v}" for k, v in env.items()) + "\n")
    text, ok = write_summary(out, env, run_steps(steps, out))
    print(text, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
