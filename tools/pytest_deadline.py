"""pytest plugin for a run with a time budget (the GPU check's: `-p tools.pytest_deadline`, run with
`python -m pytest` from the repository root).

With INCEPTION_FAST_DEADLINE set (seconds since the epoch), a test that would start after it is
skipped with REASON, so that the run ends by itself, writes its reports (JUnit XML, the benchmark
JSON and table) for what did run, and says how many it left out; a test already running finishes.
Without the variable the plugin does nothing.
"""
from __future__ import annotations

import os
import time

import pytest

ENV = "INCEPTION_FAST_DEADLINE"
REASON = "not run: the time budget of this run was spent"


def deadline() -> float:
    """The deadline INCEPTION_FAST_DEADLINE names (seconds since the epoch), or infinity."""
    value = os.environ.get(ENV, "").strip()
    return float(value) if value else float("inf")


def pytest_runtest_setup(item):
    if time.time() > deadline():
        pytest.skip(REASON)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    left = [r for r in terminalreporter.stats.get("skipped", []) if REASON in str(r.longrepr)]
    if left:
        terminalreporter.write_line(f"{len(left)} tests {REASON} ({ENV})", yellow=True)
