"""The GPU check's CPU-side logic: its plan, what it does without a GPU, its time budget, how it
finds failing tests and writes its summary (the GPU run itself happens on the first GPU a session
gets)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inception_fast import gpucheck

ENV = {"gpu": "NVIDIA H100", "capability": "9.0", "torch": "2.11.0", "cuda": "13.0"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_says_so_and_fails(tmp_path, capsys):
    assert gpucheck.gpu_env() == {}
    assert gpucheck.main([str(tmp_path / "out")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_plan(tmp_path):
    steps = gpucheck.plan(tmp_path, ENV)
    assert [s.name for s in steps] == ["build", "kernels present", "tests", "training run", "benchmarks"]
    assert steps[0].env["TORCH_CUDA_ARCH_LIST"] == "9.0" and steps[0].env["FORCE_CUDA"] == "1"
    k = steps[2].command[steps[2].command.index("-k") + 1]
    assert k == "cuda and not emulated"
    assert "inception_fast._pytest_deadline" in steps[2].command and "inception_fast._pytest_deadline" in steps[4].command
    assert "inception_fast.train" in steps[3].command and "cuda" in steps[3].command
    assert steps[4].env == {"INCEPTION_FAST_BENCH_DEVICE": "cuda", "INCEPTION_FAST_BENCH_COMPILE": "inception_v3",
                            "INCEPTION_FAST_BENCH_MODELS": gpucheck.DEFAULT_MODELS}
    files = [a for a in steps[4].command if a.startswith("benchmarks/")]
    assert files == ["benchmarks/test_models.py", "benchmarks/test_blocks.py", "benchmarks/test_ops.py"]
    steps = gpucheck.plan(tmp_path, ENV, skip_build=True, bench=True, compile_="all")
    assert [s.name for s in steps] == ["kernels present", "tests", "training run", "benchmarks"]
    assert steps[-1].env["INCEPTION_FAST_BENCH_COMPILE"] == "all"
    assert "INCEPTION_FAST_BENCH_COMPILE" not in gpucheck.plan(tmp_path, ENV, compile_="none")[-1].env
    assert [s.name for s in gpucheck.plan(tmp_path, ENV, bench=False)][-1] == "training run"


def _junit(path: Path):
    path.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_bn_relu" name="test_forward[cuda-cuda]"/>'
        '<testcase classname="tests.test_bn_relu" name="test_backward[cuda-triton]"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_models" name="test_matches_peer_cuda[googlenet-fused]"><error message="y"/>'
        '</testcase></testsuite></testsuites>')


def test_failed_tests(tmp_path):
    _junit(tmp_path / "tests.xml")
    assert gpucheck.failed_tests(tmp_path / "tests.xml") == [
        "tests.test_bn_relu::test_backward[cuda-triton]", "tests.test_models::test_matches_peer_cuda[googlenet-fused]"]
    assert gpucheck.failed_tests(tmp_path / "missing.xml") == []


class _Clock:
    """A fake clock: each step takes the seconds given for it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _Runner:
    """Stands in for run_command: each step exits with the status given for it, after the seconds
    given for it on the fake clock (interrupted at its timeout)."""

    def __init__(self, status, seconds=None, clock=None):
        self.status, self.seconds, self.clock, self.ran, self.env, self.timeouts = status, seconds or {}, clock, [], {}, {}

    def __call__(self, command, log, env, timeout):
        name = next(n for n, s in self.steps.items() if s.command == command)
        self.ran.append(name)
        self.env[name], self.timeouts[name] = env, timeout
        log.write(f"log of {name}\n")
        if name == "benchmarks":
            log.write("==== inception_fast: speed-up over eager, share of the machine (same run) ====\n"
                      "group  contestant  median ms\nbn_relu fused 0.1\n---- benchmark 'x' ----\n")
        took = self.seconds.get(name, 1.0)
        if self.clock is not None:
            self.clock.now += min(took, timeout)
        if took > timeout:
            return -2, True
        return self.status.get(name, 0), False


def _run(tmp_path, status, seconds=None, budget=gpucheck.DEFAULT_BUDGET):
    steps = gpucheck.plan(tmp_path, ENV)
    clock = _Clock()
    runner = _Runner(status, seconds, clock)
    runner.steps = {s.name: s for s in steps}
    done = gpucheck.run_steps(steps, tmp_path, runner, budget=budget, clock=clock)
    return runner, gpucheck.write_summary(tmp_path, ENV, done)


def test_a_passing_run(tmp_path):
    runner, (text, result) = _run(tmp_path, {})
    assert result == "PASSED" and runner.ran == ["build", "kernels present", "tests", "training run", "benchmarks"]
    assert text.startswith("# GPU check: PASSED") and "NVIDIA H100" in text
    assert "bn_relu fused 0.1" in text and "benchmark 'x'" not in text
    assert (tmp_path / "summary.md").read_text() == text


def test_a_failing_build_stops_the_check(tmp_path):
    runner, (text, result) = _run(tmp_path, {"build": 1})
    assert result == "FAILED" and runner.ran == ["build"]
    assert "| build | FAILED (exit 1) |" in text and "log of build" in text


def test_failing_tests_are_named(tmp_path):
    _junit(tmp_path / "tests.xml")
    runner, (text, result) = _run(tmp_path, {"tests": 1})
    assert result == "FAILED" and runner.ran[-1] == "benchmarks"  # the timings still come back
    assert "failing tests (2):" in text and "test_backward[cuda-triton]" in text


def test_the_budget_is_shared_out_and_each_step_gets_its_deadline(tmp_path):
    runner, (text, result) = _run(tmp_path, {}, seconds={"build": 100, "kernels present": 5, "tests": 150,
                                                         "training run": 40})
    assert result == "PASSED"
    left = gpucheck.DEFAULT_BUDGET - gpucheck.SUMMARY_RESERVE
    # the tests get 45% of what the build and the kernel check left, the training run at most 150 s,
    # the benchmarks the rest; each pytest knows its deadline, and is interrupted GRACE seconds after it
    assert runner.timeouts["tests"] == pytest.approx(0.45 * (left - 105) + gpucheck.GRACE)
    assert runner.timeouts["training run"] == pytest.approx(150 + gpucheck.GRACE)
    assert runner.timeouts["benchmarks"] == pytest.approx(left - 105 - 150 - 40 + gpucheck.GRACE)
    assert float(runner.env["tests"]["INCEPTION_FAST_DEADLINE"]) == pytest.approx(1105 + 0.45 * (left - 105), abs=0.1)


def test_a_spent_budget_leaves_steps_out_and_says_so(tmp_path):
    runner, (text, result) = _run(tmp_path, {}, seconds={"build": 600}, budget=300)
    assert result == "FAILED" and runner.ran == ["build"]  # interrupted: no kernels to check
    assert "| build | INTERRUPTED past its deadline" in text
    runner, (text, result) = _run(tmp_path, {}, seconds={"tests": 10_000}, budget=300)
    assert result == "INCOMPLETE", text
    assert "| tests | INTERRUPTED past its deadline" in text
    assert runner.ran == ["build", "kernels present", "tests", "training run", "benchmarks"]


def test_tests_left_out_by_the_budget_make_the_check_incomplete(tmp_path):
    (tmp_path / "tests.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_bn_relu" name="test_forward[cuda-cuda]"/>'
        f'<testcase classname="tests.test_bn_relu" name="test_backward[cuda-cuda]"><skipped message="{REASON}"/>'
        '</testcase></testsuite></testsuites>')
    assert gpucheck.left_out(tmp_path / "tests.xml") == 1
    runner, (text, result) = _run(tmp_path, {})
    assert result == "INCOMPLETE" and "tests: 1 left out by the time budget" in text


REASON = gpucheck._pytest_deadline.REASON


@pytest.mark.parametrize("deadline,expect", [("past", "1 skipped"), ("future", "1 passed"), ("unset", "1 passed")])
def test_the_deadline_plugin_skips_what_would_start_late(tmp_path, deadline, expect):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    env = {k: v for k, v in os.environ.items() if k != "INCEPTION_FAST_DEADLINE"}
    if deadline != "unset":
        env["INCEPTION_FAST_DEADLINE"] = str(time.time() + (-5 if deadline == "past" else 600))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "inception_fast._pytest_deadline",
                        "-rs", str(tmp_path / "test_one.py")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert expect in r.stdout, r.stdout + r.stderr
    assert (REASON in r.stdout) == (deadline == "past")


def test_run_command_interrupts_a_step_past_its_timeout(tmp_path):
    with open(tmp_path / "log", "w") as log:
        t = time.monotonic()
        rc, timed_out = gpucheck.run_command([sys.executable, "-c", "import time; time.sleep(60)"], log,
                                             dict(os.environ), timeout=1.0)
    assert timed_out and rc != 0 and time.monotonic() - t < 30
    assert "interrupted" in (tmp_path / "log").read_text()
    with open(tmp_path / "log", "w") as log:
        assert gpucheck.run_command([sys.executable, "-c", "pass"], log, dict(os.environ), timeout=60) == (0, False)
