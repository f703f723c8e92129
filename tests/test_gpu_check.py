"""bench/gpu_check.sh, the one prepared GPU run, checked where it can be: without a GPU.

GPU minutes are few, so the script's wiring is tested here: its time budget, the early exit
without a device, a dry run of every step (real pytest collections with the real -k selections),
and the plugin that keeps finished benchmarks when a step is stopped by its timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


def _run(out, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    e.update(OUT=str(out), PY=sys.executable, **env)
    return subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=e, cwd=ROOT, timeout=1800)


def test_budget_fits_eight_minutes_and_uses_no_pytest_timeout_flag():
    text = open(SCRIPT).read()
    # pytest-timeout is not installed on the GPU machine (no network): the flag makes pytest exit 4
    assert "--timeout" not in text
    # the last step stops at the deadline, then gets the kill grace at most
    deadline = int(re.search(r"GPU_CHECK_DEADLINE:-(\d+)", text).group(1))
    kill_grace = int(re.search(r"timeout -s INT -k (\d+)", text).group(1))
    assert deadline + kill_grace <= 8 * 60


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be present here")
def test_without_gpu_exits_at_once_with_a_summary(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no CUDA device" in r.stdout
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["complete"] is True and s["steps"] == [] and "GPU_CHECK_DRY=1" in s["note"]
    assert (tmp_path / "steps.log").exists()


def test_dry_run_wires_every_step(tmp_path):
    r = _run(tmp_path, GPU_CHECK_DRY="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["dry"] is True and s["complete"] is True
    steps = {x["name"]: x for x in s["steps"]}
    # the caps (the timeouts of a run with time to spare) fit before the deadline, so that no step
    # loses time to an earlier one; the science step takes only what is left
    assert sum(x["cap_s"] for x in s["steps"] if x["name"] != "science") <= s["deadline_s"]
    names = [
        "machine",
        "build",
        "tests_cuda",
        "tests_triton",
        "bench_rc",
        "bench_rc_cuda_fp32",
        "bench_corr",
        "step",
    ]
    assert list(steps)[: len(names)] == names
    for x in s["steps"]:
        assert x["rc"] != 127, (
            f"{x['name']}: command not found ({(tmp_path / (x['name'] + '.log')).read_text()[-500:]})"
        )
        assert not x["timed_out"], x
    # build: checks its inputs only (fails fast with a CPU torch, never installs anything)
    assert steps["build"]["rc"] in (0, 2)
    for name in ("tests_cuda", "tests_triton", "bench_corr"):
        assert steps[name]["rc"] == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    # without CUDA the region-contrast harness has only CPU shapes: the K selection finds the CPU
    # shape whose K is 16384 (collected, rc 0) or none (rc 5); either way the step itself works
    import torch

    for name in ("bench_rc", "bench_rc_cuda_fp32"):
        assert steps[name]["rc"] in ((0,) if torch.cuda.is_available() else (0, 5)), steps[name]
    collected = (tmp_path / "tests_cuda.log").read_text()
    assert "test_backend_opcheck[cuda]" in collected and "test_compile_fullgraph[cuda]" in collected
    assert "test_half_backward_tiny_and_zero_coefficients" in collected
    assert "coef_scale" not in collected and "[cpp]" not in collected
    assert steps["step"]["rc"] == 0


PLUGIN_CASE = """
def test_a(benchmark):
    benchmark.extra_info["provider"] = "a"
    benchmark.pedantic(lambda: sum(range(100)), rounds=2)


def test_b(benchmark):
    def stopped():
        raise KeyboardInterrupt  # what SIGINT from `timeout -s INT` does mid-benchmark
    benchmark.pedantic(stopped, rounds=2)
"""


def test_plugin_keeps_finished_benchmarks_when_interrupted(tmp_path):
    (tmp_path / "test_case.py").write_text(PLUGIN_CASE)
    env = dict(
        os.environ, GPU_CHECK_JSONL=str(tmp_path / "rows.jsonl"), PYTHONPATH=os.path.join(ROOT, "bench")
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "gpu_check_plugin", "-p", "no:cacheprovider", "-q"]
    cmd += ["test_case.py", "--benchmark-only", f"--benchmark-json={tmp_path / 'b.json'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stdout[-2000:]  # interrupted
    saved = json.loads((tmp_path / "b.json").read_text())["benchmarks"]
    assert [b["name"] for b in saved] == ["test_a"]
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(x["name"], x["extra_info"]["provider"], x["outcome"]) for x in rows] == [
        ("test_a", "a", "passed")
    ]
    assert rows[0]["stats"]["rounds"] == 2
