"""Shared test setup: Triton runs in its interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
"""

import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the cpp op's path race caches its choice: the suite never reads or writes the user's cache
os.environ.setdefault("CTRLAUG_CACHE_DIR", tempfile.mkdtemp(prefix="ctrlaug-test-cache-"))

import pytest  # noqa: E402


def pytest_report_header(config):
    from backends import REQUIRE_ENV, required_text

    from ctrlaug.ops import status

    s = status()
    return [
        f"ctrlaug backends: {', '.join(f'{k}={v}' for k, v in s.items() if k != 'extension_error')}",
        f"required backends ({REQUIRE_ENV} / CI, tests/backends.py): {required_text()}",
    ]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cpu_path_restored():
    """A resume pins the cpp path for the rest of its process (ctrlaug.ops.pin_cpu_isa): undo it
    after each test, so that one test's pin never decides another's path."""
    before = os.environ.get("CTRLAUG_CPU_ISA")
    yield
    if os.environ.get("CTRLAUG_CPU_ISA") != before:
        from ctrlaug.ops._registry import _reset_cpu_choice

        if before is None:
            os.environ.pop("CTRLAUG_CPU_ISA", None)
        else:
            os.environ["CTRLAUG_CPU_ISA"] = before
        _reset_cpu_choice()


@pytest.fixture
def one_thread():
    """Tiny training problems: one torch thread avoids oversubscription on a 2-core machine."""
    from ctrlaug.utils.threads import one_thread as ctx  # after TRITON_INTERPRET is set

    with ctx():
        yield
