"""Shared test setup: Triton runs in its interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture
def one_thread():
    """Tiny training problems: one torch thread avoids oversubscription on a 2-core machine."""
    from ctrlaug.utils.threads import one_thread as ctx  # after TRITON_INTERPRET is set

    with ctx():
        yield
