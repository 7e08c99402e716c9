"""The GPU check's CPU-side logic (tools/): its plan and time budget, what it does without a GPU, its dry
run, how it runs, interrupts and kills steps, finds failing tests, writes its summary and keeps OUT to
what a lent machine sends back; its pytest plugins; the smoke checks on CPU kernels. The GPU run itself
happens on the first GPU a session gets."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# (importable under `python -m pytest` from the repository root, as CI runs it)
from tools import gpu_smoke, gpucheck, pytest_gpucheck
from tools.pytest_deadline import REASON

ROOT = Path(__file__).resolve().parents[1]

MACHINE = {"gpu": "NVIDIA H100", "capability": "9.0", "torch": "2.11.0", "cpu cores": 16}
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_says_so_and_fails(tmp_path, capsys):
    assert gpucheck.main([str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# GPU check: NOT RUN")


def test_the_clock_starts_with_the_process():
    start = gpucheck.process_start()
    assert start <= gpucheck._IMPORTED_AT and time.time() - start < 24 * 3600


# ---- the plan ----------------------------------------------------------------------------------------------
def _plan(tmp_path, **kw):
    return gpucheck.plan(tmp_path / "out", tmp_path / "scratch", MACHINE, **kw)


def test_plan(tmp_path):
    steps = _plan(tmp_path)
    assert [s.name for s in steps] == list(gpucheck.STEPS) == ["build", "smoke", "tests", "train", "bench"]
    build = steps[0]
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build.env["FORCE_CUDA"] == "1" and build.env["MAX_JOBS"] == "16"
    assert build.fallback_env == {"FORCE_CUDA": "0"} and build.fallback[0] == build.commands[0]
    tests = steps[2].commands[0]
    assert tests[tests.index("-k") + 1] == "cuda and not emulated"
    assert "tools.pytest_deadline" in tests and "tools.pytest_gpucheck" in tests
    assert steps[1].in_tests_xml and steps[2].in_tests_xml and not steps[4].in_tests_xml
    bench = steps[4]
    assert [a for a in bench.commands[0] if a.startswith("benchmarks/")] == [
        "benchmarks/test_models.py", "benchmarks/test_blocks.py", "benchmarks/test_ops.py"]
    assert bench.env == {"INCEPTION_FAST_BENCH_DEVICE": "cuda", "INCEPTION_FAST_BENCH_COMPILE": "inception_v3",
                         "INCEPTION_FAST_BENCH_MODELS": gpucheck.DEFAULT_MODELS}
    assert "INCEPTION_FAST_BENCH_COMPILE" not in _plan(tmp_path, compile_="none")[-1].env
    assert [s.name for s in _plan(tmp_path, skip=("build", "bench"))] == ["smoke", "tests", "train"]
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpucheck.plan(tmp_path, tmp_path, {"torch": "2.11"})


def test_what_the_commands_write_goes_to_out_only_as_its_files(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    written = [p for s in _plan(tmp_path) for c in s.commands + s.fallback for p in gpucheck.command_outputs(c)]
    assert {p.name for p in written if p.parent == out} == {"bench.json"}
    assert all(p.parent in (out, scratch) for p in written)
    assert {s.log for s in _plan(tmp_path)} | {"summary.md", "tests.xml", "bench.json"} == set(gpucheck.OUT_FILES)
    assert len(gpucheck.OUT_FILES) <= gpucheck.MAX_FILES


def test_the_default_plan_fits_the_budget_even_in_the_worst_case(tmp_path):
    steps = _plan(tmp_path)
    rows = gpucheck.worst_case(steps, gpucheck.DEFAULT_BUDGET)
    assert gpucheck.fits(rows, gpucheck.DEFAULT_BUDGET)
    assert all(allot >= step.at_least for step, _, allot, _ in rows)
    assert rows[-1][3] <= gpucheck.DEFAULT_BUDGET - gpucheck.SUMMARY_RESERVE
    assert not gpucheck.fits(gpucheck.worst_case(steps, 250), 250)


# ---- running it with a stand-in ----------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _Runner:
    """Stands in for run_command: the commands of step S (S-fallback: with FORCE_CUDA=0) exit with
    status[S] after seconds[S] on the fake clock, or are interrupted at their timeout; they write what
    the real ones would (gpucheck.dry_runner), or junit[S] as their JUnit report."""

    def __init__(self, steps, clock, status=None, seconds=None, junit=None, stop_in=None):
        self.names = {tuple(c): s.name for s in steps for c in s.commands + s.fallback}
        self.clock, self.status, self.seconds, self.junit = clock, status or {}, seconds or {}, junit or {}
        self.stop_in, self.ran, self.env, self.timeouts = stop_in, [], {}, {}

    def __call__(self, command, log, env, timeout):
        name = self.names[tuple(command)] + ("-fallback" if env.get("FORCE_CUDA") == "0" else "")
        self.ran.append(name)
        self.env[name], self.timeouts[name] = env, timeout
        if name == self.stop_in:
            raise gpucheck.Stopped("SIGTERM")
        gpucheck.dry_runner(command, log, env, timeout)
        for path in gpucheck.command_outputs(command):
            if path.suffix == ".xml" and name in self.junit:
                path.write_text(self.junit[name])
        if name == "bench":
            log.write("==== inception_fast: speed-up over eager, share of the machine (same run) ====\n"
                      "group  contestant  median ms\nbn_relu fused 0.1\n---- benchmark 'x' ----\n")
        took = self.seconds.get(name, 1.0)
        self.clock.now += min(took, timeout)
        return (-2, True) if took > timeout else (self.status.get(name, 0), False)


def _check(tmp_path, budget=gpucheck.DEFAULT_BUDGET, **runner_kw):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    steps = gpucheck.plan(out, scratch, MACHINE)
    clock = _Clock()
    runner = _Runner(steps, clock, **runner_kw)
    run = gpucheck.Run(out, scratch, MACHINE, budget, start=clock.now)
    text, result = gpucheck.check(run, steps, runner, clock)
    return run, runner, text, result


def _junit(*cases):
    return ('<?xml version="1.0"?><testsuites><testsuite name="pytest">' + "".join(cases)
            + "</testsuite></testsuites>")


def test_a_passing_run(tmp_path):
    run, runner, text, result = _check(tmp_path)
    assert result == "PASSED", text
    assert runner.ran == ["build", "build", "smoke", "tests", "train", "bench"]
    assert text.startswith("# GPU check: PASSED") and "## Machine\n\n- gpu: NVIDIA H100\n- capability: 9.0" in text
    assert "480 s from the process start, 6 s used" in text  # six commands of a second each
    assert "| smoke | ok | 1 | 0 | 0 | 0 |" in text
    assert "bn_relu fused 0.1" in text and "benchmark 'x'" not in text
    assert (run.out / "summary.md").read_text() == text
    assert gpucheck.counts(run.out / "tests.xml")["passed"] == 2  # the smoke's and the tests' reports
    assert sorted(e.name for e in run.out.iterdir()) == sorted(gpucheck.OUT_FILES)
    assert gpucheck.out_violations(run.out) == [] and (run.scratch / "train" / "last.pt").exists()


def test_a_failing_cuda_build_is_rebuilt_without_cuda_and_the_rest_still_runs(tmp_path):
    _, runner, text, result = _check(tmp_path, status={"build": 1})
    assert result == "FAILED"
    assert runner.ran == ["build", "build-fallback", "build-fallback", "smoke", "tests", "train", "bench"]
    assert "| build | CUDA build FAILED (exit 1); without CUDA: ok (the Triton half only) |" in text


def test_a_build_that_fails_without_cuda_too_ends_the_check(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "build.log").write_text("stale")  # a previous run's, overwritten
    run, runner, text, result = _check(tmp_path, status={"build": 1, "build-fallback": 2})
    assert result == "FAILED" and runner.ran == ["build", "build-fallback"]
    assert "| tests | not run (the build failed) |" in text
    assert "## Build" in text and "stale" not in (run.out / "build.log").read_text()


def test_failing_tests_are_named_with_their_first_error_line(tmp_path):
    tests = _junit('<testcase classname="tests.test_bn_relu" name="test_forward[cuda-cuda]"/>',
                   '<testcase classname="tests.test_bn_relu" name="test_backward[cuda-triton]">'
                   '<failure message="AssertionError: grad x: relative error 3e-02 &gt;= 1e-02&#10;assert False">'
                   'long traceback</failure></testcase>')
    smoke = _junit('<testcase classname="smoke" name="conv1x1 cuda bf16"><error message="RuntimeError: boom"/>'
                   '</testcase>')
    run, runner, text, result = _check(tmp_path, status={"tests": 1}, junit={"tests": tests, "smoke": smoke})
    assert result == "FAILED" and runner.ran[-1] == "bench"  # the timings still come back
    assert "## Failing tests (2)" in text
    assert "- `tests.test_bn_relu::test_backward[cuda-triton]`: AssertionError: grad x: relative error 3e-02" in text
    assert "- `smoke::conv1x1 cuda bf16`: RuntimeError: boom" in text
    assert gpucheck.failed_tests(run.out / "tests.xml") == ["smoke::conv1x1 cuda bf16",
                                                            "tests.test_bn_relu::test_backward[cuda-triton]"]


def test_the_budget_holds_whatever_the_steps_take(tmp_path):
    forever = {name: 10_000 for name in gpucheck.STEPS}
    run, runner, text, result = _check(tmp_path, seconds=forever)
    assert result == "FAILED"  # a build that never ends is a failed build
    run, runner, text, result = _check(tmp_path, seconds={**forever, "build": 50})
    assert result == "INCOMPLETE" and "| tests | INTERRUPTED at its time limit" in text
    assert runner.ran == ["build", "build", "smoke", "tests", "train", "bench"]
    t = 1000.0  # the fake clock moves only while a command runs
    for d in run.done:
        # each step's pytest reads its deadline; its command is killed `grace` seconds after it
        assert float(runner.env[d.step.name][gpucheck.pytest_deadline.ENV]) == pytest.approx(t + d.allotted, abs=0.1)
        if d.step.name != "build":
            assert runner.timeouts[d.step.name] == pytest.approx(d.allotted + d.step.grace)
            assert d.timed_out and d.seconds == pytest.approx(d.allotted + d.step.grace)
        t += d.seconds
    assert t <= run.end  # every hard kill within the budget, the summary's reserve left


def test_time_a_step_leaves_goes_to_the_next(tmp_path):
    _, slow, _, _ = _check(tmp_path, seconds={"build": 80})  # two commands: 160 s
    _, fast, _, _ = _check(tmp_path, seconds={"build": 20})
    assert fast.timeouts["smoke"] == pytest.approx(90 + 10)  # at most, plus grace
    assert fast.timeouts["tests"] > slow.timeouts["tests"]


def test_tests_left_out_by_the_budget_make_the_check_incomplete(tmp_path):
    tests = _junit('<testcase classname="tests.test_bn_relu" name="test_forward[cuda-cuda]"/>',
                   f'<testcase classname="tests.test_bn_relu" name="test_backward[cuda-cuda]"><skipped message="{REASON}"/>'
                   '</testcase>')
    run, _, text, result = _check(tmp_path, junit={"tests": tests})
    assert result == "INCOMPLETE" and "| tests | ok | 1 | 0 | 0 | 1 |" in text
    assert gpucheck.left_out(run.out / "tests.xml") == 1


def test_a_signal_still_writes_the_summary(tmp_path):
    run, runner, text, result = _check(tmp_path, stop_in="tests")
    assert result == "INCOMPLETE" and runner.ran[-1] == "tests"
    assert "Stopped by SIGTERM" in text and "| tests | stopped by a signal while running |" in text
    assert "| bench | not run (stopped by SIGTERM) |" in text
    assert (run.out / "summary.md").read_text() == text
    with pytest.raises(gpucheck.Stopped, match="SIGTERM"), gpucheck._SignalsStop():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _dry_run(out, scratch, *extra):
    # In a process of its own, as on the device: the budget counts from the process start.
    return subprocess.run([sys.executable, "tools/gpucheck.py", str(out), "--dry-run", "--scratch", str(scratch),
                           *extra], capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV, timeout=120)


def test_dry_run(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    r = _dry_run(out, scratch)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worst case: the steps end at 470 s of 480: fits" in r.stdout and "OUT rules: hold" in r.stdout
    for step in gpucheck.STEPS:
        assert f"\n{step} " in r.stdout
    assert sorted(e.name for e in out.iterdir()) == sorted(gpucheck.OUT_FILES)
    assert _dry_run(out, scratch, "--budget", "250").returncode == 1


# ---- OUT ---------------------------------------------------------------------------------------------------
def test_out_violations_are_found_and_repaired(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    assert gpucheck.out_violations(out) == []
    for name in gpucheck.OUT_FILES:
        (out / name).write_text("x")
    (out / "train").mkdir()
    (out / "extra.txt").write_text("x")
    (out / "link.log").symlink_to(out / "summary.md")
    (out / "odd name.md").write_text("x")
    with open(out / "bench.json", "wb") as f:
        f.truncate(gpucheck.MAX_BYTES + 1)
    with open(out / "tests.log", "wb") as f:
        f.write(b"first line\n" + b"x" * (gpucheck.MAX_BYTES + 1) + b"\nlast line\n")
    problems = "\n".join(gpucheck.out_violations(out))
    for text in ("12 entries", "train/: a folder", "link.log: a link", "bench.json: 16777217 bytes",
                 "'odd name.md': a name with odd characters"):
        assert text in problems
    actions = gpucheck.enforce_out_rules(out, scratch)
    assert gpucheck.out_violations(out) == []
    assert (scratch / "from-out" / "train").is_dir() and (scratch / "from-out" / "bench.json").exists()
    assert any("tests.log: cut" in a for a in actions)
    log = (out / "tests.log").read_bytes()
    assert log.startswith(b"first line") and log.endswith(b"last line\n") and b"bytes cut by gpucheck" in log


def test_fit_log_keeps_the_head_and_the_tail(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert not gpucheck.fit_log(log, head=10_000, tail=10_000)
    assert gpucheck.fit_log(log, head=20, tail=20)
    text = log.read_text()
    assert text.startswith("line 0\nline 1\n") and text.endswith("line 999\n") and len(text) < 200


def test_merge_junit_keeps_every_suite_and_cuts_long_failures(tmp_path):
    (tmp_path / "a.xml").write_text(_junit('<testcase classname="smoke" name="x"/>'))
    (tmp_path / "b.xml").write_text(_junit('<testcase classname="t" name="y"><failure message="boom">'
                                           + "z" * 10 * gpucheck.TEXT_LIMIT + "</failure></testcase>"))
    (tmp_path / "cut.xml").write_text("<testsuites><testsuite><testcase")  # a report cut short
    gpucheck.merge_junit([tmp_path / "a.xml", tmp_path / "b.xml", tmp_path / "cut.xml", tmp_path / "no.xml"],
                         tmp_path / "all.xml")
    assert gpucheck.counts(tmp_path / "all.xml") == {"passed": 1, "failed": 1, "skipped": 0, "left out": 0}
    assert gpucheck.failures(tmp_path / "all.xml") == [("t::y", "boom")]
    assert (tmp_path / "all.xml").stat().st_size < 2 * gpucheck.TEXT_LIMIT


def test_run_command_interrupts_a_step_past_its_timeout_and_kills_what_it_started(tmp_path, monkeypatch):
    # (timings with room for a loaded 2-core machine, where a Python child may take seconds to start)
    monkeypatch.setattr(gpucheck, "KILL_WAIT", 3.0)
    pid_file = tmp_path / "pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    with open(tmp_path / "log", "w") as log:
        t = time.monotonic()
        rc, timed_out = gpucheck.run_command([sys.executable, "-c", code], log, dict(os.environ), timeout=8.0)
    # interrupted (SIGINT, so that pytest would write its reports) KILL_WAIT s before its timeout
    assert timed_out and rc == -signal.SIGINT and time.monotonic() - t < 20
    assert "interrupted" in (tmp_path / "log").read_text()
    grandchild = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{grandchild}").exists() or Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z"
    with open(tmp_path / "log", "w") as log:  # one that ignores the interrupt is killed
        rc, timed_out = gpucheck.run_command(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"],
            log, dict(os.environ), timeout=8.0)
        assert timed_out and rc == -signal.SIGKILL
        assert gpucheck.run_command([sys.executable, "-c", "pass"], log, dict(os.environ), timeout=60) == (0, False)


# ---- the pytest plugins ------------------------------------------------------------------------------------
@pytest.mark.parametrize("deadline,expect", [("past", "1 skipped"), ("future", "1 passed"), ("unset", "1 passed")])
def test_the_deadline_plugin_skips_what_would_start_late(tmp_path, deadline, expect):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "INCEPTION_FAST_DEADLINE"}
    if deadline != "unset":
        env["INCEPTION_FAST_DEADLINE"] = str(time.time() + (-5 if deadline == "past" else 600))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tools.pytest_deadline",
                        "-rs", str(tmp_path / "test_one.py")], capture_output=True, text=True, env=env, cwd=tmp_path,
                       check=False)
    assert expect in r.stdout, r.stdout + r.stderr
    assert (REASON in r.stdout) == (deadline == "past")


def test_the_gpu_test_order():
    ids = ["tests/test_bn_relu.py::test_a[cpu-cpu]", "tests/test_bn_relu.py::test_a[cuda-cuda]",
           "tests/test_bn_relu.py::test_b[cuda-triton]", "tests/test_models.py::test_matches_peer_cuda[googlenet]",
           "tests/test_opcheck.py::test_opcheck[cuda-cuda]", "tests/test_optimize.py::test_x_cuda[v3]",
           "tests/test_scaled_residual_add.py::test_a[cuda-cuda]", "tests/test_scaled_residual_add.py::test_b[cuda-triton]"]
    assert [pytest_gpucheck.tier(i) for i in ids] == [4, 0, 0, 2, 1, 3, 0, 0]
    # the kernel files take turns: each file's first case before any file's second
    assert [ids[i] for i in pytest_gpucheck.ordered(ids)] == [ids[1], ids[6], ids[2], ids[7], ids[4], ids[3], ids[5],
                                                               ids[0]]


def test_the_gpu_test_plugin_orders_the_run_and_turns_tf32_off(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.parametrize('d', ['cpu-cpu', 'cuda-cuda'])\n"
        "def test_kernel(d):\n"
        "    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32\n")
    (tmp_path / "test_opcheck.py").write_text("def test_opcheck():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "tools.pytest_gpucheck",
                        "test_a.py", "test_opcheck.py"], capture_output=True, text=True, env=SUBPROCESS_ENV,
                       cwd=tmp_path, check=False)
    assert "3 passed" in r.stdout, r.stdout + r.stderr
    ran = [line.split(" ")[0] for line in r.stdout.splitlines() if " PASSED" in line]
    assert ran == ["test_a.py::test_kernel[cuda-cuda]", "test_opcheck.py::test_opcheck", "test_a.py::test_kernel[cpu-cpu]"]


def test_the_benchmarks_run_torch_compile_last():
    env = {**SUBPROCESS_ENV, "INCEPTION_FAST_BENCH_QUICK": "1", "INCEPTION_FAST_BENCH_COMPILE": "1",
           "INCEPTION_FAST_BENCH_MODELS": "googlenet,inception_v3", "INCEPTION_FAST_BENCH_DEVICE": "cpu"}
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "benchmarks/test_models.py", "benchmarks/test_ops.py"], capture_output=True, text=True,
                       env=env, cwd=ROOT, check=False)
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    compiled = [i for i, name in enumerate(ids) if "-compile" in name]
    assert compiled and compiled == list(range(len(ids) - len(compiled), len(ids))), r.stdout + r.stderr
    models = [name.split("[")[1].split("-")[0] for name in ids[:compiled[0]] if "test_models.py" in name]
    assert models == sorted(models, key=["googlenet", "inception_v3"].index)  # model by model, in the given order
    assert ids[0].startswith("benchmarks/test_models.py") and "test_ops.py" in ids[compiled[0] - 1]


# ---- the smoke checks --------------------------------------------------------------------------------------
def test_the_smoke_covers_every_gpu_kernel_and_model():
    names = [c.name for c in gpu_smoke.op_checks("cuda", ["cuda", "triton"], small=False)]
    for op in ("bn_relu train", "bn_relu eval", "scaled_residual_add relu", "scaled_residual_add linear",
               "branch_conv v3 Mixed_6b"):
        for backend in ("cuda", "triton"):
            for dtype in ("bf16", "fp32"):
                assert any(n.startswith(f"{op} {backend} {dtype}") for n in names), (op, backend, dtype)
    assert "bn_relu train cuda bf16 256x64x147x147" in names
    models = [c.name for c in gpu_smoke.model_checks("cuda", small=False)]
    assert len(models) == 3 * 6 and all(any(m in n for n in models) for m in gpu_smoke.MODELS)


def test_the_smoke_checks_run_on_cpu_kernels_and_report_as_junit(tmp_path, capsys):
    junit = tmp_path / "smoke.xml"
    assert gpu_smoke.main(["--device", "cpu", "--small", "--only", "bn_relu eval", "--junit", str(junit)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bn_relu eval ")]
    n = 2 * len(gpu_smoke.kernel_backends("cpu"))  # bf16 and fp32 on each (Triton: under TRITON_INTERPRET=1)
    assert len(lines) == n and all(" PASS " in line for line in lines)
    assert gpucheck.counts(junit) == {"passed": n, "failed": 0, "skipped": 0, "left out": 0}


def test_a_failing_or_raising_smoke_check_fails_alone_and_late_ones_are_left_out(tmp_path):
    checks = [gpu_smoke.Check("off", lambda: [("out", 3e-2, 1e-2), ("grad", 1e-3, 1e-2)]),
              gpu_smoke.Check("raises", lambda: 1 / 0),
              gpu_smoke.Check("nan", lambda: [("out", float("nan"), 1e-2)]),
              gpu_smoke.Check("fine", lambda: [("out", 1e-6, 1e-5)])]
    results = gpu_smoke.run_checks(checks, echo=lambda line: None)
    assert [r.status for r in results] == ["fail", "fail", "fail", "pass"]
    assert results[0].what == "out" and "out 3.00e-02 > 1.0e-02" in results[0].message
    assert "ZeroDivisionError" in results[1].message
    late = gpu_smoke.run_checks(checks[3:], until=0.0, echo=lambda line: None)
    gpu_smoke.write_junit(results + late, tmp_path / "s.xml")
    assert gpucheck.counts(tmp_path / "s.xml") == {"passed": 1, "failed": 3, "skipped": 0, "left out": 1}
