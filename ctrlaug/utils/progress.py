"""A labelled progress bar for evaluation-side loops (feature extraction, finetuning, diagnostics),
in the style of the training bar (:class:`ctrlaug.utils.metrics.ProgressBar`)::

    features test [########------------] 40/100  12.3 videos/s ETA 0:04

On a TTY the line is rewritten in place (``\\r``); otherwise a line is written at every tenth of
the total and at the end, so logs stay short. Written to stderr; never touches an RNG.
"""

from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress"]


class Progress:
    """``total`` items (videos, batches); ``label`` heads the line; ``unit`` names the rate."""

    def __init__(self, total: int, label: str, *, unit: str = "it", enabled: bool = True, stream=None):
        self.total, self.label, self.unit, self.enabled = max(int(total), 0), label, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0 = time.perf_counter()
        self.done = 0
        self.next_line = 0  # non-TTY: the count at which the next line is due
        self.last = ""

    def line(self, extra: str = "") -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        frac = min(self.done / max(self.total, 1), 1.0)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        eta_s = "?" if not math.isfinite(eta) else f"{int(eta // 60):d}:{int(eta % 60):02d}"
        s = f"{self.label} [{bar}] {self.done}/{self.total} {rate:7.1f} {self.unit}/s ETA {eta_s}"
        return s + (f" {extra}" if extra else "")

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        text = self.line(extra)
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self.last)))
            self.stream.flush()
            self.last = text
        elif self.done >= self.next_line or self.done >= self.total:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.next_line = self.done + max(1, math.ceil(self.total / 10))

    def close(self) -> None:
        if self.enabled and self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
            self.last = ""
