"""A backend that should exist and does not is a failure, never a skip (issue 15).

With ``CI=true`` or ``CTRLAUG_REQUIRE_BACKENDS=cpp,triton`` (.ci/run sets the latter), a missing
or broken compiled extension makes the op tests fail with the reason, where they used to turn
into a green run of skips.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from backends import REQUIRE_ENV, missing_required, required_backends
from tolerance import skip_unless

from ctrlaug.ops import _registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_required_backends_are_usable_here():
    missing = missing_required()
    assert not missing, "required backends missing: " + "; ".join(f"{b}: {why}" for b, why in missing.items())


def test_which_backends_are_required(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    assert required_backends() == ()
    monkeypatch.setenv("CI", "true")
    assert {"cpp", "triton"} <= set(required_backends())
    monkeypatch.setenv(REQUIRE_ENV, "cpp")  # explicit beats CI
    assert required_backends() == ("cpp",)
    monkeypatch.setenv(REQUIRE_ENV, " cpp , triton ")
    assert required_backends() == ("cpp", "triton")
    monkeypatch.setenv(REQUIRE_ENV, "none")
    assert required_backends() == ()
    monkeypatch.setenv(REQUIRE_ENV, "cpp,tpu")
    with pytest.raises(ValueError, match="unknown backend.*tpu"):
        required_backends()


def test_a_required_backend_that_cannot_run_fails_the_test(monkeypatch):
    monkeypatch.setattr(_registry, "available", lambda b, d, op="": b == "reference")
    monkeypatch.setenv(REQUIRE_ENV, "cpp")
    assert set(missing_required()) == {"cpp"}
    kind, msg = _outcome("cpp")
    assert kind is pytest.fail.Exception and "'cpp' is required here" in msg, (kind, msg)
    assert _outcome("triton")[0] is pytest.skip.Exception  # not required: still a skip, with the reason
    monkeypatch.setenv(REQUIRE_ENV, "")
    assert _outcome("cpp")[0] is pytest.skip.Exception


def _outcome(backend: str):
    """(exception type, message) that skip_unless raises; caught here so that a skip cannot
    escape and turn this test itself into a skip."""
    try:
        skip_unless(backend, torch.device("cpu"), "region_contrast_fwd")
    except (pytest.fail.Exception, pytest.skip.Exception) as e:
        return type(e), str(e)
    return None, ""


def test_without_the_extension_the_cpp_op_tests_fail_when_required():
    """End to end: hide the extension in a child pytest; required -> failures, not -> skips."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_correspondence.py",
            "-k", "test_backend_opcheck and cpp"]  # fmt: skip
    env = dict(
        os.environ, CTRLAUG_DISABLE_EXT="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    env.pop("CI", None)
    env[REQUIRE_ENV] = "cpp"
    strict = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1, strict.stdout[-2000:]
    assert "1 failed" in strict.stdout and "is required here" in strict.stdout
    assert "disabled by CTRLAUG_DISABLE_EXT=1" in strict.stdout  # the reason is in the failure
    env[REQUIRE_ENV] = ""
    lax = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert lax.returncode == 0 and "1 skipped" in lax.stdout, lax.stdout[-2000:]


@pytest.mark.parametrize("op", ["correspondence", "region_contrast_fwd"])
def test_auto_picks_the_built_cpp_kernel_on_cpu(op):
    """backend="auto" falls back to the reference only when cpp cannot run (a silent fallback
    would keep every result right and make training materialise the logits)."""
    skip_unless("cpp", torch.device("cpu"), op)
    assert _registry.resolve("auto", torch.device("cpu"), op) == "cpp"
