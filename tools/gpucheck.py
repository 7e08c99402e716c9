"""The GPU check in one command, for a lent CUDA machine with torch, triton and nvcc (no internet):

    python3 tools/gpucheck.py OUT [--budget SECONDS] [--skip STEPS] [--models M1,M2,...]
                                  [--compile MODELS|all|none] [--scratch DIR] [--dry-run]

run from the repository root (it needs setup.py, tests/ and benchmarks/). Its steps, in the order of
what they tell per second:

1. build: `setup.py build_ext --inplace` for this GPU (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST = its
   capability, MAX_JOBS = its cores); if that fails, the summary says so and the extension is rebuilt
   without CUDA (FORCE_CUDA=0), so that the Triton half is still checked;
2. smoke: tools/gpu_smoke.py, every CUDA and Triton kernel once at its largest model shape in bf16 and
   fp32, one AMP training step and one optimize() forward of each model, against the references;
3. tests: `pytest tests/ -k "cuda and not emulated"`, ordered by tools/pytest_gpucheck.py (the GPU
   kernel cases, then opcheck, the models, optimize), with TF32 off as in the smoke (the benchmarks
   keep torch's defaults, as users run);
4. train: a short `inception_fast.train` run (bf16, channels_last, the built-in demo data);
5. bench: the benchmark suites, the models first and every torch.compile contestant last.

The budget (--budget, default 480 s) counts from this process's start as /proc/self/stat records it
(so a wrapper that execs this script is counted too), and holds however the steps behave: a step is
given at most what leaves every later step its minimum, its pytest skips the tests that would start
after its deadline (tools/pytest_deadline.py: the run then ends by itself and writes its reports), and
a step still running `grace` seconds past its deadline is interrupted and killed within that grace.
SUMMARY_RESERVE seconds are kept for the summary, which is also written after every step and when the
check is stopped by SIGTERM or SIGINT.

OUT receives at most 8 plain files, none over 16 MiB (what a lent machine sends back): summary.md (read
it first: machine, build, each step's counts and time, the failing tests with their first error line,
the smoke results, the benchmark table), one log per step (cut to their head and tail when too long),
tests.xml (the JUnit XML of the smoke and the tests) and bench.json (pytest-benchmark's JSON).
Everything else (the training run, the per-run JUnit pieces) goes to a scratch folder (--scratch,
default a new temporary one). `--dry-run` needs no GPU: it prints the plan with each step's share of
the budget, runs it with a stand-in that writes each command's outputs, and checks the OUT rules.

Exit status: 0 PASSED (everything ran and passed; a dry run: the plan fits and OUT holds the rules),
1 FAILED (a step or a test failed: named in the summary; a dry run: the plan or OUT is wrong), 2 not
run (no GPU visible), 3 INCOMPLETE (nothing failed, but the budget or a signal left steps, tests or
benchmarks out: counted).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

try:
    from tools import pytest_deadline
except ImportError:  # run as a script (python3 tools/gpucheck.py): tools/ is on the path, not the root
    import pytest_deadline

_IMPORTED_AT = time.time()  # the fallback start, where /proc cannot say when this process began
ROOT = Path(__file__).resolve().parents[1]

DEFAULT_BUDGET = 480.0       # one device command may run 600 s; the rest is the lease's margin
SUMMARY_RESERVE = 10.0       # seconds kept at the end for the summary
PROBE_TIMEOUT = 30.0         # the machine's description (imports torch, initialises CUDA)
KILL_WAIT = 5.0              # from a step's interrupt (SIGINT: pytest writes its reports) to SIGKILL
MAX_FILES = 8                # what a lent machine sends back from OUT
MAX_BYTES = 16 * 2 ** 20
LOG_HEAD, LOG_TAIL = 2 * 2 ** 20, 6 * 2 ** 20  # a longer log keeps these many bytes of each end
TEXT_LIMIT = 4000            # characters kept of each failure text in tests.xml
OUT_FILES = ("summary.md", "build.log", "smoke.log", "tests.log", "tests.xml", "train.log", "bench.log",
             "bench.json")
STEPS = ("build", "smoke", "tests", "train", "bench")
DEFAULT_COMPILE = "inception_v3"
# The models the benchmarks time, in this order (a spent budget leaves out the last).
DEFAULT_MODELS = "inception_v3,googlenet,inception_v4,inception_resnet_v2,bn_inception,inception_resnet_v1"
DRY_MACHINE = {"gpu": "(dry run: none)", "capability": "9.0", "cpu cores": 16}


def process_start() -> float:
    """When this process started, in seconds since the epoch: /proc/self/stat's start time (clock
    ticks after boot) set against /proc/uptime; where /proc cannot say, when this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5); fields[0] is field 3
        age = float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT
    start = time.time() - age
    return start if 0 <= age < 24 * 3600 and start <= _IMPORTED_AT else _IMPORTED_AT


# ---- the machine ---------------------------------------------------------------------------------------
def describe_machine() -> dict:
    """GPU, versions and cores of this machine (run in a child process: see probe_machine)."""
    import platform

    info = {"python": platform.python_version(), "cpu cores": os.cpu_count()}
    for module in ("torch", "triton", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except Exception as e:  # noqa: BLE001 - a broken install is reported, not fatal
            info[module] = f"not importable ({type(e).__name__}: {e})"
    try:
        import torch

        info["torch cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update({"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                         "gpu memory": f"{props.total_memory / 2 ** 30:.0f} GiB"})
    except Exception as e:  # noqa: BLE001
        info["cuda"] = f"unusable ({type(e).__name__}: {e})"
    nvcc = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    try:
        release = re.search(r"release ([\d.]+)", subprocess.run([str(nvcc), "--version"], check=False,
                                                               capture_output=True, text=True, timeout=20).stdout)
        info["nvcc"] = release.group(1) if release else "version not found"
    except (OSError, subprocess.TimeoutExpired):
        info["nvcc"] = f"not found at {nvcc}"
    return info


def probe_machine(timeout: float = PROBE_TIMEOUT) -> dict:
    """describe_machine() in a child process, so that this one holds no CUDA context and a hanging
    driver costs at most `timeout` seconds."""
    code = "import json; from tools.gpucheck import describe_machine; print(json.dumps(describe_machine()))"
    try:
        r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        return {"probe": f"failed ({type(e).__name__})"}


# ---- the plan --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Step:
    name: str
    commands: list          # run one after the other; the first that fails ends the step
    log: str                # its log, a file name in OUT
    at_least: float         # seconds: with less left for it, the step is not started
    at_most: float
    grace: float            # from the step's deadline to its hard kill, KILL_WAIT included
    env: dict = dataclasses.field(default_factory=dict)
    fallback: list = dataclasses.field(default_factory=list)  # run when `commands` fail
    fallback_env: dict = dataclasses.field(default_factory=dict)
    fallback_reserve: float = 0.0   # seconds of the allotment kept back for the fallback
    junit: str | None = None        # the JUnit XML its commands write, a file name in scratch
    in_tests_xml: bool = False      # merged into OUT/tests.xml


def kernels_present(cuda: bool) -> None:
    """Exit 0 when inception_fast._C loads, with its CUDA kernels if `cuda`, saying what it holds (the
    build step's last command, in a fresh process)."""
    from inception_fast import _ext

    with_cuda = _ext.loaded() and _ext.has_kernel("bn_stats", "CUDA")
    print("inception_fast._C:", "loaded, with CUDA kernels" if with_cuda else
          "loaded, without CUDA kernels" if _ext.loaded() else f"not loadable ({_ext.LOAD_ERROR})")
    sys.exit(0 if (with_cuda if cuda else _ext.loaded()) else 1)


def _kernels_present(cuda: bool) -> list[str]:
    return [sys.executable, "-c", f"from tools.gpucheck import kernels_present; kernels_present(cuda={cuda})"]


def plan(out: Path, scratch: Path, machine: dict, skip=(), compile_: str = DEFAULT_COMPILE,
         models: str = DEFAULT_MODELS) -> list[Step]:
    """The steps of the check for a machine described by `machine` (describe_machine()), less `skip`."""
    if "gpu" not in machine:
        raise RuntimeError("no CUDA device is visible to torch: the GPU check needs one "
                           "(on a CPU machine, .ci/run is the check)")
    py = sys.executable
    deadline = ["-p", "tools.pytest_deadline"]
    build = [py, "setup.py", "build_ext", "--inplace"]
    bench_env = {"INCEPTION_FAST_BENCH_DEVICE": "cuda", "INCEPTION_FAST_BENCH_MODELS": models}
    if compile_ and compile_ != "none":
        bench_env["INCEPTION_FAST_BENCH_COMPILE"] = compile_
    # Seconds: the build's cap leaves the others their minimum; the smoke takes about a minute; the tests
    # get what the build leaves, up to 180 s; the benchmarks get the rest. A pytest step's grace covers
    # the test running at its deadline, its reports and the kill.
    steps = [
        Step("build", [build, _kernels_present(cuda=True)], "build.log", at_least=60, at_most=240, grace=10,
             env={"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": machine["capability"],
                  "MAX_JOBS": str(machine.get("cpu cores") or os.cpu_count()),
                  "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda")},
             fallback=[build, _kernels_present(cuda=False)], fallback_env={"FORCE_CUDA": "0"}, fallback_reserve=60),
        Step("smoke", [[py, "-m", "tools.gpu_smoke", "--junit", str(scratch / "smoke.xml")]], "smoke.log",
             at_least=30, at_most=90, grace=10, junit="smoke.xml", in_tests_xml=True),
        # (-k cuda also matches the CPU tests that emulate the CUDA kernels: CI runs those)
        Step("tests", [[py, "-m", "pytest", "tests/", "-q", "-p", "no:cacheprovider", *deadline,
                        "-p", "tools.pytest_gpucheck", "-k", "cuda and not emulated", "-rf", "--tb=short",
                        f"--junitxml={scratch / 'tests.xml'}"]], "tests.log",
             at_least=60, at_most=180, grace=20, junit="tests.xml", in_tests_xml=True),
        # The training command's GPU path end to end (bf16 autocast, the fused path, DataLoader
        # workers, checkpoints), which the CPU CI cannot run; its checkpoints stay in scratch.
        Step("train", [[py, "-m", "inception_fast.train", "--model", "inception_v3", "--img-size", "96",
                        "--epochs", "2", "--batch-size", "32", "--amp", "bf16", "--device", "cuda",
                        "--channels-last", "--no-progress", "--out", str(scratch / "train")]], "train.log",
             at_least=20, at_most=60, grace=10),
        Step("bench", [[py, "-m", "pytest", "benchmarks/test_models.py", "benchmarks/test_blocks.py",
                        "benchmarks/test_ops.py", "--benchmark-only", "-q", "-p", "no:cacheprovider", *deadline,
                        "--tb=short", f"--junitxml={scratch / 'bench.xml'}",
                        f"--benchmark-json={out / 'bench.json'}", "--benchmark-columns=median"]], "bench.log",
             at_least=60, at_most=400, grace=25, env=bench_env, junit="bench.xml"),
    ]
    return [s for s in steps if s.name not in skip]


def allotment(step: Step, later: list[Step], left: float) -> float:
    """Seconds from the step's start to its deadline: at most step.at_most, and no more than leaves
    every later step its at_least + grace after this step's own hard kill."""
    return min(step.at_most, left - step.grace - sum(s.at_least + s.grace for s in later))


def worst_case(steps: list[Step], budget: float) -> list[tuple]:
    """(step, start, allotment, hard end), seconds from the process start, when the machine probe takes
    its whole timeout and every step runs until its hard kill: the schedule the budget guarantees.
    A step whose allotment falls under its at_least is not run (allotment 0)."""
    t, end, rows = PROBE_TIMEOUT, budget - SUMMARY_RESERVE, []
    for i, step in enumerate(steps):
        allot = allotment(step, steps[i + 1:], end - t)
        if allot < step.at_least:
            rows.append((step, t, 0.0, t))
            continue
        rows.append((step, t, allot, t + allot + step.grace))
        t += allot + step.grace
    return rows


def fits(rows: list[tuple], budget: float) -> bool:
    return all(allot >= step.at_least for step, _, allot, _ in rows) and \
        max((end for *_, end in rows), default=0.0) <= budget - SUMMARY_RESERVE


def _short(command: list[str], limit: int = 100) -> str:
    text = " ".join(shlex.quote(a) for a in command).replace(sys.executable, "python3")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plan_table(steps: list[Step], budget: float) -> str:
    """The plan as text: each step's at least / at most / grace, its allotment and window in the worst
    case, whether that fits the budget, and the commands."""
    rows = worst_case(steps, budget)
    end = max((e for *_, e in rows), default=PROBE_TIMEOUT)
    lines = [(f"GPU check plan: {budget:.0f} s from this process's start (/proc/self/stat), the last "
              f"{SUMMARY_RESERVE:.0f} s kept for the summary. Worst case: the machine probe and every step run "
              "until their hard kill."),
             f"{'step':8s} {'at least':>8s} {'at most':>8s} {'grace':>6s} {'worst case: allotted':>21s} {'window':>13s}",
             f"{'machine':8s} {'-':>8s} {PROBE_TIMEOUT:8.0f} {'-':>6s} {PROBE_TIMEOUT:19.0f} s {0:5.0f} - {PROBE_TIMEOUT:3.0f} s"]
    for step, start, allot, stop in rows:
        given = f"{allot:19.0f} s {start:5.0f} - {stop:3.0f} s" if allot else f"{'not run':>21s} {start:5.0f}"
        lines.append(f"{step.name:8s} {step.at_least:8.0f} {step.at_most:8.0f} {step.grace:6.0f} {given}")
    lines.append(f"{'summary':8s} {'':8s} {'':8s} {'':6s} {'':21s} {end:5.0f} - {budget:3.0f} s")
    verdict = "fits" if fits(rows, budget) else "DOES NOT FIT (a step gets less than its at least)"
    lines += [f"worst case: the steps end at {end:.0f} s of {budget:.0f}: {verdict}", "",
              "commands (from the repository root; a step's later commands run when the earlier succeed):"]
    for step in steps:
        for label, commands, env in ((step.name, step.commands, step.env),
                                     (f"{step.name}, if that fails", step.fallback, step.fallback_env)):
            assignments = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
            lines += [f"  {label}: " + " ".join(assignments + [_short(c, 10 ** 4)]) for c in commands]
    return "\n".join(lines)


# ---- running the steps -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Done:
    step: Step
    rc: int | None             # None: not run (the budget was spent before it) or stopped by a signal
    seconds: float = 0.0
    allotted: float = 0.0
    timed_out: bool = False    # interrupted at its hard limit
    primary_rc: int | None = None  # when the fallback ran: the exit status of the commands that failed
    stopped: bool = False      # the check itself was stopped (SIGTERM/SIGINT) while this step ran
    why_not: str = "time budget spent"  # when not run


@dataclasses.dataclass
class Run:
    out: Path
    scratch: Path
    machine: dict
    budget: float = DEFAULT_BUDGET
    start: float = dataclasses.field(default_factory=process_start)
    done: list = dataclasses.field(default_factory=list)
    stopped_by: str = ""       # the signal that stopped the check, if one did
    skipped: tuple = ()        # the steps --skip left out
    clock: object = time.time
    dry_run: bool = False      # the steps were stood in for (dry_runner): nothing ran

    @property
    def end(self) -> float:
        """When the last step must be over (seconds since the epoch)."""
        return self.start + self.budget - SUMMARY_RESERVE


class Stopped(BaseException):
    """SIGTERM or SIGINT reached the check (BaseException, as KeyboardInterrupt: no handler swallows it)."""


def _kill_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(command: list[str], log, env: dict, timeout: float) -> tuple[int, bool]:
    """Run command from the repository root in its own process group, its output to log. KILL_WAIT
    seconds before `timeout` it is interrupted (SIGINT: pytest then writes its reports for what ran),
    at `timeout` killed; whatever it started is killed when it ends, so nothing outlives it on the GPU.
    Returns (exit status, whether it was interrupted)."""
    log.flush()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        try:
            return proc.wait(timeout=max(timeout - KILL_WAIT, 0.5)), False
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
            log.write(f"\n[gpucheck] interrupted: still running {timeout - KILL_WAIT:.0f} s after it started\n")
            return proc.returncode, True
    finally:
        if proc.poll() is None:  # the check itself is being stopped
            _kill_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc, signal.SIGKILL)


def _run_all(commands, log, env, hard_end, runner, clock) -> tuple[int, bool]:
    for command in commands:
        left = hard_end - clock()
        if left < 1.0:
            log.write(f"\n[gpucheck] not started (no time left): {_short(command)}\n")
            return -1, True
        log.write(f"\n[gpucheck] $ {_short(command)}   (at most {left:.0f} s)\n")
        rc, timed_out = runner(command, log, env, left)
        if rc != 0 or timed_out:
            return rc, timed_out
    return 0, False


def _run_step(run: Run, step: Step, done: Done, start: float, runner, clock) -> None:
    hard_end = start + done.allotted + step.grace
    env = {**os.environ, "PYTHONUNBUFFERED": "1", pytest_deadline.ENV: f"{start + done.allotted:.1f}", **step.env}
    mode = "a" if any(d.step.log == step.log for d in run.done[:-1]) else "w"
    with open(run.out / step.log, mode) as log:
        log.write(f"[gpucheck] {step.name}: deadline in {done.allotted:.0f} s, hard kill {step.grace:.0f} s later\n")
        primary_end = hard_end - (step.fallback_reserve if step.fallback else 0.0)
        done.rc, done.timed_out = _run_all(step.commands, log, env, primary_end, runner, clock)
        if done.rc != 0 and step.fallback:
            done.primary_rc = done.rc
            log.write(f"\n[gpucheck] {step.name} failed (exit {done.rc}): again with {step.fallback_env}\n")
            done.rc, done.timed_out = _run_all(step.fallback, log, {**env, **step.fallback_env}, hard_end, runner,
                                               clock)


def run_steps(run: Run, steps: list[Step], runner=run_command, clock=time.time, after_step=None) -> None:
    """Run the steps in order within the budget, recording each in run.done; a step the budget no
    longer reaches is recorded as not run. A build that fails with and without CUDA ends the check
    (nothing after it can run). after_step(run) is called after every step, also when one is stopped."""
    for i, step in enumerate(steps):
        start = clock()
        done = Done(step, None, allotted=allotment(step, steps[i + 1:], run.end - start))
        run.done.append(done)
        if done.allotted < step.at_least:
            print(f"=== {step.name}: not run (time budget spent)", flush=True)
            done.allotted = 0.0
            continue
        print(f"=== {step.name} (deadline in {done.allotted:.0f} s)", flush=True)
        try:
            _run_step(run, step, done, start, runner, clock)
        except BaseException:
            done.stopped = True
            raise
        finally:
            done.seconds = clock() - start
            if after_step is not None:
                after_step(run)
        if step.name == "build" and done.rc != 0:
            run.done += [Done(s, None, why_not="the build failed") for s in steps[i + 1:]]
            break


# ---- JUnit -----------------------------------------------------------------------------------------------
def _cases(junit_xml: Path) -> list:
    if not junit_xml.exists():
        return []
    try:
        return list(ET.parse(junit_xml).getroot().iter("testcase"))
    except ET.ParseError:  # a report cut short
        return []


def _left_out(case) -> bool:
    s = case.find("skipped")
    return s is not None and pytest_deadline.REASON in (s.get("message") or "")


def _failed(case) -> bool:
    return case.find("failure") is not None or case.find("error") is not None


def counts(junit_xml: Path) -> dict:
    """passed / failed / skipped / left out (by the time budget) test cases of a JUnit XML report."""
    cases = _cases(junit_xml)
    failed = sum(_failed(c) for c in cases)
    left = sum(_left_out(c) for c in cases)
    skipped = sum(c.find("skipped") is not None for c in cases) - left
    return {"passed": len(cases) - failed - left - skipped, "failed": failed, "skipped": skipped, "left out": left}


def failures(junit_xml: Path) -> list[tuple[str, str]]:
    """(`file::test`, the first line of its error) of every failed or erroring test case."""
    out = []
    for case in _cases(junit_xml):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is None:
            continue
        text = (bad.get("message") or bad.text or "").strip()
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        out.append((f"{case.get('classname', '')}::{case.get('name', '')}", first[:300]))
    return out


def failed_tests(junit_xml: Path) -> list[str]:
    return [name for name, _ in failures(junit_xml)]


def left_out(junit_xml: Path) -> int:
    """How many test cases of a JUnit XML report the time budget left out."""
    return sum(_left_out(c) for c in _cases(junit_xml))


def merge_junit(pieces: list[Path], dest: Path) -> None:
    """One JUnit XML file of the test suites of `pieces` (those that exist and parse), each failure's
    text cut to TEXT_LIMIT characters so that the file stays small whatever failed."""
    root = ET.Element("testsuites")
    for piece in pieces:
        try:
            top = ET.parse(piece).getroot()
        except (OSError, ET.ParseError):
            continue
        for suite in [top] if top.tag == "testsuite" else top.findall("testsuite"):
            for element in suite.iter():
                if element.text and len(element.text) > TEXT_LIMIT:
                    element.text = element.text[:TEXT_LIMIT] + "\n[... cut by gpucheck]"
                if len(element.get("message") or "") > TEXT_LIMIT:
                    element.set("message", element.get("message")[:TEXT_LIMIT] + " [... cut]")
            root.append(suite)
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)


# ---- the OUT rules -----------------------------------------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def out_violations(out: Path) -> list[str]:
    """What in `out` a lent machine would not send back: more than MAX_FILES entries, a folder, a link,
    anything not a plain file, a file over MAX_BYTES, an odd name. Empty when OUT is fine."""
    entries = sorted(out.iterdir())
    problems = [f"{len(entries)} entries (at most {MAX_FILES} files)"] if len(entries) > MAX_FILES else []
    for e in entries:
        if e.is_symlink():
            problems.append(f"{e.name}: a link")
        elif e.is_dir():
            problems.append(f"{e.name}/: a folder (only the files directly in OUT come back)")
        elif not e.is_file():
            problems.append(f"{e.name}: not a plain file")
        elif e.stat().st_size > MAX_BYTES:
            problems.append(f"{e.name}: {e.stat().st_size} bytes (at most {MAX_BYTES})")
        if not _NAME.match(e.name):
            problems.append(f"{e.name!r}: a name with odd characters")
    return problems


def fit_log(path: Path, head: int = LOG_HEAD, tail: int = LOG_TAIL) -> bool:
    """Cut a log longer than head + tail bytes to its first `head` and last `tail` bytes (the start
    says what ran, the end how it ended). Returns whether it was cut."""
    size = path.stat().st_size
    if size <= head + tail:
        return False
    with open(path, "rb") as f:
        first = f.read(head)
        f.seek(size - tail)
        last = f.read(tail)
    path.write_bytes(first + f"\n\n[... {size - head - tail} bytes cut by gpucheck ...]\n\n".encode() + last)
    return True


def enforce_out_rules(out: Path, scratch: Path) -> list[str]:
    """Make OUT what a lent machine sends back: logs cut to head and tail, and anything that is not one
    of OUT_FILES as a plain file under MAX_BYTES moved to scratch/from-out. Returns what was done."""
    actions = []
    for e in sorted(out.iterdir()):
        if e.suffix == ".log" and e.is_file() and not e.is_symlink() and fit_log(e):
            actions.append(f"{e.name}: cut to its first and last lines")
    for e in sorted(out.iterdir()):
        if e.name in OUT_FILES and e.is_file() and not e.is_symlink() and e.stat().st_size <= MAX_BYTES:
            continue
        dest = scratch / "from-out"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(e), str(dest / e.name))
        actions.append(f"{e.name}: moved to {dest} (not one of OUT's files, or over {MAX_BYTES} bytes)")
    return actions


# ---- the summary -------------------------------------------------------------------------------------------
def summary_table(log_text: str) -> str:
    """The benchmark suite's own summary (the section after its 'speed-up over eager' header)."""
    lines = log_text.splitlines()
    start = next((i for i, line in enumerate(lines) if "speed-up over eager" in line), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("----") or lines[i].startswith("====")),
               len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


def _junit_of(run: Run, d: Done) -> Path | None:
    return run.scratch / d.step.junit if d.step.junit else None


def verdict(run: Run) -> str:
    """FAILED (a step or a test failed, or the build did not finish), INCOMPLETE (nothing failed but a
    step, test or benchmark was left out, by the budget or a signal) or PASSED."""
    pieces = [p for d in run.done if (p := _junit_of(run, d))]
    build_failed = any(d.step.name == "build" and (d.rc != 0 or d.primary_rc is not None) and not d.stopped
                       for d in run.done)
    if build_failed or any(d.rc not in (0, None) and not d.timed_out for d in run.done) \
            or any(failures(p) for p in pieces):
        return "FAILED"
    planned = {d.step.name for d in run.done}
    complete = not run.stopped_by and all(d.rc == 0 and not d.timed_out for d in run.done) \
        and not any(left_out(p) for p in pieces) and planned >= set(STEPS) - set(run.skipped)
    return "PASSED" if complete else "INCOMPLETE"


def _status(d: Done) -> str:
    if d.stopped:
        return "stopped by a signal while running"
    if d.rc is None:
        return f"not run ({d.why_not})"
    text = "ok" if d.rc == 0 else f"FAILED (exit {d.rc})"
    if d.timed_out:
        text = f"INTERRUPTED at its time limit (exit {d.rc})"
    if d.primary_rc is not None:
        return f"CUDA build FAILED (exit {d.primary_rc}); without CUDA: {text} (the Triton half only)"
    return text


def _step_rows(run: Run) -> list[str]:
    rows = ["| step | status | passed | failed | skipped | left out | seconds (allotted) |", "|---|---|---|---|---|---|---|"]
    for d in run.done:
        piece = _junit_of(run, d)
        c = counts(piece) if piece else {}
        cells = " | ".join(str(c[k]) if c else "-" for k in ("passed", "failed", "skipped", "left out"))
        rows.append(f"| {d.step.name} | {_status(d)} | {cells} | {d.seconds:.0f} ({d.allotted:.0f}) |")
    rows += [f"| {name} | left out (--skip) | - | - | - | - | - |" for name in run.skipped]
    return rows


def _failure_lines(run: Run, limit: int = 40) -> list[str]:
    failed = [f for d in run.done if (p := _junit_of(run, d)) for f in failures(p)]
    if not failed:
        return []
    lines = ["", f"## Failing tests ({len(failed)})", ""]
    lines += [f"- `{name}`: {first}" for name, first in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"- ... and {len(failed) - limit} more (tests.xml, the step logs)")
    return lines


_MACHINE_ORDER = ("gpu", "capability", "gpu memory", "torch", "torch cuda", "triton", "numpy", "python", "nvcc",
                  "cpu cores")


def _machine_lines(machine: dict) -> list[str]:
    keys = [k for k in _MACHINE_ORDER if k in machine] + [k for k in machine if k not in _MACHINE_ORDER]
    return [f"- {k}: {machine[k]}" for k in keys]


def _build_lines(run: Run) -> list[str]:
    """What the built extension holds; where the build failed, its first error lines and its end."""
    d = next((d for d in run.done if d.step.name == "build"), None)
    log = run.out / "build.log"
    if d is None or not log.exists():
        return []
    text = log.read_text(errors="replace").splitlines()
    if d.rc == 0 and d.primary_rc is None:
        return ["", "Build: " + next((line for line in reversed(text) if line.startswith("inception_fast._C:")), "ok")]
    errors = [line for line in text if re.search(r"\berror\b", line, re.IGNORECASE)][:15]
    return ["", "## Build", "", "first error lines of build.log:", "```", *errors, "```",
            "last lines of build.log:", "```", *text[-25:], "```"]


def _smoke_lines(run: Run) -> list[str]:
    piece = run.scratch / "smoke.xml"
    lines = [text.rstrip() for case in _cases(piece) if (text := case.findtext("system-out"))]
    return ["", "## Smoke (tools/gpu_smoke.py: check, worst measurement, rel. err, tolerance, result, time)", "",
            "```", *lines, "```"] if lines else []


def _bench_lines(run: Run) -> list[str]:
    log = run.out / "bench.log"
    table = summary_table(log.read_text(errors="replace")) if log.exists() else ""
    return ["", "## Benchmarks (benchmarks/conftest.py's table; all numbers in bench.json)", "", "```",
            table.rstrip(), "```"] if table else []


def write_summary(run: Run, final: bool = True, notes: list[str] = ()) -> tuple[str, str]:
    """summary.md: the verdict, the machine, each step's status, counts and time, the failing tests with
    their first error line, what the budget left out, the build's errors, the smoke results and the
    benchmark table. Before the end (final=False) the verdict is at most INCOMPLETE."""
    result = verdict(run)
    if not final and result == "PASSED":
        result = "INCOMPLETE"
    used = run.clock() - run.start
    lines = [f"# GPU check{' (dry run: nothing ran)' if run.dry_run else ''}: {result}", ""]
    if not final:
        lines += ["(written after a step: the check had not finished)", ""]
    if run.stopped_by:
        lines += [f"Stopped by {run.stopped_by} after {used:.0f} s; what had run is below.", ""]
    lines += [f"Budget {run.budget:.0f} s from the process start, {used:.0f} s used. Files: "
              + ", ".join(OUT_FILES) + " (tests.xml: the smoke and the tests as JUnit).", "",
              "## Machine", ""] + _machine_lines(run.machine)
    lines += ["", "## Steps", ""] + _step_rows(run)
    lines += _failure_lines(run) + _build_lines(run) + _bench_lines(run) + _smoke_lines(run)
    if notes:
        lines += ["", "## OUT", ""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    (run.out / "summary.md").write_text(text)
    return text, result


def after_step(run: Run) -> None:
    """tests.xml from the JUnit pieces so far, logs cut to size, an interim summary."""
    pieces = [run.scratch / d.step.junit for d in run.done if d.step.in_tests_xml and d.step.junit]
    if pieces:
        merge_junit(pieces, run.out / "tests.xml")
    for d in run.done:
        if (run.out / d.step.log).exists():
            fit_log(run.out / d.step.log)
    write_summary(run, final=False)


# ---- the whole check ------------------------------------------------------------------------------------------
class _SignalsStop:
    """Within it SIGTERM and SIGINT raise Stopped, so that the summary is still written."""

    def __enter__(self):
        def stop(signum, frame):
            raise Stopped(signal.Signals(signum).name)

        self.saved = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)
        return False


def check(run: Run, steps: list[Step], runner=run_command, clock=time.time) -> tuple[str, str]:
    """Run the steps, then write the summary and put OUT in order, whatever happened on the way."""
    run.clock = clock
    try:
        with _SignalsStop():
            run_steps(run, steps, runner, clock, after_step)
    except Stopped as e:
        run.stopped_by = str(e)
        ran = {d.step.name for d in run.done}
        run.done += [Done(s, None, why_not=f"stopped by {e}") for s in steps if s.name not in ran]
    finally:
        saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            notes = enforce_out_rules(run.out, run.scratch)
            text, result = write_summary(run, notes=notes)
            notes += [f"still wrong: {v}" for v in out_violations(run.out)]
            if notes:
                text, result = write_summary(run, notes=notes)
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
    return text, result


def command_outputs(command: list[str]) -> list[Path]:
    """The files and folders a step's command writes besides its log, from its arguments."""
    out = []
    for i, arg in enumerate(command):
        for flag in ("--junitxml=", "--benchmark-json="):
            if arg.startswith(flag):
                out.append(Path(arg[len(flag):]))
        if arg in ("--junit", "--out") and i + 1 < len(command):
            out.append(Path(command[i + 1]))
    return out


def dry_runner(command: list[str], log, env: dict, timeout: float) -> tuple[int, bool]:
    """Stands in for run_command in a dry run: writes what the command would (a passing JUnit report,
    an empty benchmark JSON, a training run's folder) and succeeds at once."""
    log.write(f"dry run: {_short(command)}\n")
    for path in command_outputs(command):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".xml":
            path.write_text('<?xml version="1.0"?><testsuites><testsuite name="dry-run">'
                            '<testcase classname="dry" name="run"/></testsuite></testsuites>')
        elif path.suffix == ".json":
            path.write_text('{"benchmarks": []}')
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "last.pt").write_bytes(b"\0" * 1024)
    return 0, False


def _clear_out(out: Path) -> None:
    """A previous run's files of the same names would otherwise be read as this run's."""
    for name in OUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 tools/gpucheck.py", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path, help=f"the folder that comes back: at most {MAX_FILES} files (see above)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="SECONDS",
                   help=f"the whole check, from the process start (default {DEFAULT_BUDGET:.0f})")
    p.add_argument("--skip", default="", metavar="STEPS",
                   help=f"comma-separated steps to leave out, of {','.join(STEPS)} (e.g. build on a machine that has built)")
    p.add_argument("--models", default=DEFAULT_MODELS, metavar="M1,M2,...",
                   help="the models the benchmarks time, in this order (default: %(default)s)")
    p.add_argument("--compile", default=DEFAULT_COMPILE, metavar="MODELS",
                   help="the models (comma-separated), 'all' or 'none' whose reference path is also timed under "
                        f"torch.compile(mode='max-autotune'), after everything else (default: {DEFAULT_COMPILE})")
    p.add_argument("--scratch", type=Path, help="for everything that does not come back (default: a new temporary folder)")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed: print the plan, run it with a stand-in, "
                                                          "check the OUT rules")
    args = p.parse_args(argv)
    skip = tuple(s for s in args.skip.replace(" ", "").split(",") if s)
    if set(skip) - set(STEPS):
        p.error(f"--skip: unknown steps {sorted(set(skip) - set(STEPS))}; the steps are {','.join(STEPS)}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    _clear_out(args.outdir)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="gpucheck-"))
    scratch.mkdir(parents=True, exist_ok=True)
    machine = DRY_MACHINE if args.dry_run else probe_machine()
    run = Run(args.outdir, scratch, machine, args.budget, skipped=skip, dry_run=args.dry_run)
    try:
        steps = plan(args.outdir, scratch, machine, skip, args.compile, args.models)
    except RuntimeError as e:
        print(f"GPU CHECK NOT RUN: {e}", file=sys.stderr)
        (args.outdir / "summary.md").write_text("\n".join([f"# GPU check: NOT RUN\n\n{e}\n\n## Machine\n",
                                                           *_machine_lines(machine)]) + "\n")
        return 2
    print(plan_table(steps, args.budget), flush=True)
    if args.dry_run:
        return _dry_run(run, steps)
    text, result = check(run, steps)
    print(text, end="")
    return {"PASSED": 0, "FAILED": 1, "INCOMPLETE": 3}[result]


def _dry_run(run: Run, steps: list[Step]) -> int:
    text, _ = check(run, steps, runner=dry_runner)
    print(f"\n{text}", end="")
    problems = out_violations(run.out)
    files = sorted(e.name for e in run.out.iterdir())
    print(f"\ndry run: OUT holds {len(files)} files ({', '.join(files)}); scratch {run.scratch}")
    print("OUT rules: " + ("; ".join(problems) if problems else "hold"))
    ok = fits(worst_case(steps, run.budget), run.budget) and not problems
    print("dry run: " + ("the plan fits the budget and OUT is what comes back" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
