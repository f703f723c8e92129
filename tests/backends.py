"""Which fused backends must be usable where the tests run: CI policy, kept with the tests.

The runtime package only says what is built and what can run a call (``ctrlaug.ops._registry``:
``available``, ``status``); which backends a test run *requires* is a decision of the test setup,
so it lives here. ``tolerance.skip_unless`` fails, instead of skipping, a test whose required
backend cannot run; ``conftest.pytest_report_header`` prints the required set.
"""

from __future__ import annotations

import os

import torch

from ctrlaug.ops import _registry

REQUIRE_ENV = "CTRLAUG_REQUIRE_BACKENDS"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def required_backends() -> tuple[str, ...]:
    """Backends that must be usable here, so that tests fail rather than skip without them.

    ``CTRLAUG_REQUIRE_BACKENDS=cpp,triton`` names them ("" or "none": none). Otherwise, with
    ``CI=true`` (set by GitHub Actions, GitLab and most CI systems), cpp and triton are required,
    and cuda too when torch sees a CUDA device. Elsewhere none is required: a developer machine
    without the extension skips those tests, with the reason.
    """
    env = os.environ.get(REQUIRE_ENV)
    if env is not None:
        names = tuple(n.strip() for n in env.split(",") if n.strip() and n.strip().lower() != "none")
        bad = [n for n in names if n not in _registry.BACKENDS]
        if bad:
            raise ValueError(
                f"{REQUIRE_ENV}={env!r}: unknown backend(s) {bad}; choose from {_registry.BACKENDS}"
            )
        return names
    if _truthy(os.environ.get("CI")):
        return ("cpp", "triton") + (("cuda",) if torch.cuda.is_available() else ())
    return ()


def home_device(backend: str) -> torch.device:
    """Where a backend's tests run: cpp on the CPU; cuda on the GPU; triton on the GPU when there is
    one, else on the CPU under its interpreter."""
    if backend == "cpp" or (backend == "triton" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if backend in ("cuda", "triton"):
        return torch.device("cuda")
    return torch.device("cpu")


def missing_required() -> dict[str, str]:
    """``{backend: why it is not usable}`` for every required backend that cannot run here."""
    out = {}
    for b in required_backends():
        dev = home_device(b)
        if b == "cuda" and not torch.cuda.is_available():
            out[b] = "torch sees no CUDA device"
        elif not all(_registry.available(b, dev, op) for op in ("correspondence", "region_contrast_fwd")):
            out[b] = _registry._why_missing(b, dev)
    return out


def required_text() -> str:
    """The required set for the test session header: "cpp,triton", "none" or "invalid (...)"."""
    try:
        return ",".join(required_backends()) or "none"
    except ValueError as e:
        return f"invalid ({e})"
