"""pytest plugin of bench/gpu_check.sh: keep every finished benchmark when a step times out.

gpu_check.sh stops a step that runs past its time with SIGINT (``timeout -s INT``). pytest then
ends the session, but pytest-benchmark's JSON writer fails on the benchmark that was interrupted
before its first round (``min()`` of no timings), so the whole --benchmark-json would be lost.
This plugin

* appends each benchmark to the JSON-lines file named by ``$GPU_CHECK_JSONL`` (if set) as soon
  as its test has run, in pytest-benchmark's own per-benchmark format (stats + extra_info);
* drops benchmarks without a single timing before pytest-benchmark saves its JSON.

Load it with ``-p gpu_check_plugin`` and bench/ on PYTHONPATH.
"""

from __future__ import annotations

import json
import os

import pytest


def _finished(meta) -> bool:
    return meta is not None and len(meta.stats.data) > 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    path = os.environ.get("GPU_CHECK_JSONL")
    if not path or call.when != "call":
        return
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    meta = getattr(fixture, "stats", None)
    if not _finished(meta):
        return
    row = meta.as_dict(include_data=False)
    row["outcome"] = "failed" if call.excinfo is not None else "passed"
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


# pytest-benchmark saves in a hookwrapper of pytest_sessionfinish: filter in an outer one.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None:
        bs.benchmarks = [b for b in bs.benchmarks if _finished(b)]
    yield
