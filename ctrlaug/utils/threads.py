"""Thread-count helpers."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread, then restore the count. For tiny problems (probe fits,
    small matmuls and GRUs), where a second thread costs more than it brings: on a busy 2-core CPU
    a full-batch probe took 0.3 s on one thread and 6-20 s on two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
