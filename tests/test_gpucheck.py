"""The GPU check's CPU-side logic: its plan, what it does without a GPU, how it finds failing tests
and writes its summary (the GPU run itself happens on the first GPU a session gets)."""
import subprocess
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
    assert "-k" in steps[2].command and "cuda" in steps[2].command
    assert "inception_fast.train" in steps[3].command and "cuda" in steps[3].command
    assert steps[4].env == {"INCEPTION_FAST_BENCH_DEVICE": "cuda", "INCEPTION_FAST_BENCH_COMPILE": "inception_v3"}
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


class _Runner:
    """Stands in for subprocess.run: each step exits with the status given for it."""

    def __init__(self, status):
        self.status, self.ran = status, []

    def __call__(self, command, stdout, stderr, env):
        name = next(n for n, s in self.steps.items() if s.command == command)
        self.ran.append(name)
        stdout.write(f"log of {name}\n")
        if name == "benchmarks":
            stdout.write("==== inception_fast: speed-up over eager, share of the machine (same run) ====\n"
                         "group  contestant  median ms\nbn_relu fused 0.1\n---- benchmark 'x' ----\n")
        return subprocess.CompletedProcess(command, self.status.get(name, 0))


def _run(tmp_path, status):
    steps = gpucheck.plan(tmp_path, ENV)
    runner = _Runner(status)
    runner.steps = {s.name: s for s in steps}
    done = gpucheck.run_steps(steps, tmp_path, runner)
    return runner, gpucheck.write_summary(tmp_path, ENV, done)


def test_a_passing_run(tmp_path):
    runner, (text, ok) = _run(tmp_path, {})
    assert ok and runner.ran == ["build", "kernels present", "tests", "training run", "benchmarks"]
    assert text.startswith("# GPU check: PASSED") and "NVIDIA H100" in text
    assert "bn_relu fused 0.1" in text and "benchmark 'x'" not in text
    assert (tmp_path / "summary.md").read_text() == text


def test_a_failing_build_stops_the_check(tmp_path):
    runner, (text, ok) = _run(tmp_path, {"build": 1})
    assert not ok and runner.ran == ["build"]
    assert "| build | FAILED (exit 1) |" in text and "log of build" in text


def test_failing_tests_are_named(tmp_path):
    _junit(tmp_path / "tests.xml")
    runner, (text, ok) = _run(tmp_path, {"tests": 1})
    assert not ok and runner.ran[-1] == "benchmarks"  # the timings still come back
    assert "failing tests (2):" in text and "test_backward[cuda-triton]" in text
