"""Run logging: CSV (always), TensorBoard scalars (when installed), progress bar, loss-curve PNG.

Only rank 0 creates a :class:`MetricWriter`; other ranks get a disabled one whose methods do
nothing. TensorBoard and matplotlib are optional: without them the CSV is still written and the
plot is skipped with a one-line note.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time

from ctrlaug.utils.atomic import atomic_open

__all__ = ["MetricWriter", "ProgressBar", "plot_losses", "read_csv"]


class MetricWriter:
    """Append metric rows to ``metrics.csv`` and, if available, TensorBoard event files."""

    def __init__(
        self,
        out_dir: str,
        fields: list[str],
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = enabled
        self.fields = ["step", "epoch", *[f for f in fields if f not in ("step", "epoch")]]
        self.path = os.path.join(out_dir, "metrics.csv")
        self.tb = None
        self.tb_note = ""
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        rows = read_csv(self.path) if (resume_step is not None and os.path.exists(self.path)) else []
        # On resume, drop rows logged after the checkpoint (they will be produced again).
        rows = [r for r in rows if resume_step is not None and float(r.get("step", "inf")) <= resume_step]
        # rewritten atomically: a run killed here keeps the old history, never a torn file
        with atomic_open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=resume_step)
            except Exception as e:  # tensorboard not installed (ImportError) or unusable
                self.tb_note = f"TensorBoard off ({type(e).__name__}: {e}); metrics go to {self.path} only"

    def log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch}
        row.update({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k.replace("loss_", "loss/").replace("mi_", "mi/"), v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ProgressBar:
    """One-line progress with clips/s and ETA on stderr (``\\r`` updates on a TTY, lines otherwise)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, every: int = 1, stream=None):
        self.total, self.enabled, self.every = total_steps, enabled, max(1, every)
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0 = time.perf_counter()
        self.done0: int | None = None
        self.last = ""

    def update(self, done: int, epoch: int, clips_per_s: float, extra: str = "") -> None:
        if not self.enabled:
            return
        if self.done0 is None:
            self.done0, self.t0 = done - 1, time.perf_counter()
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.done0) / max(elapsed, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        frac = done / max(self.total, 1)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        eta_s = "?" if not math.isfinite(eta) else f"{int(eta // 60):d}:{int(eta % 60):02d}"
        line = f"ep {epoch} [{bar}] {done}/{self.total} {clips_per_s:7.1f} clips/s ETA {eta_s} {extra}"
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last)))
            self.stream.flush()
        elif done % self.every == 0 or done == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()
        self.last = line

    def note(self, msg: str) -> None:
        """A line of its own (e.g. an epoch-end monitor result); a TTY bar continues below it."""
        if not self.enabled:
            return
        self.stream.write(("\n" if self.tty and self.last else "") + msg + "\n")
        self.stream.flush()
        self.last = ""

    def close(self) -> None:
        if self.enabled and self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()


def plot_losses(csv_path: str, png_path: str) -> str | None:
    """Loss curves (every ``loss*`` column, and ``knn_top1`` when logged) from metrics.csv to a
    PNG. Returns a note when skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"loss-curve PNG skipped: matplotlib unavailable ({type(e).__name__}); pip install matplotlib"
    rows = read_csv(csv_path)
    if not rows:
        return "loss-curve PNG skipped: no metric rows"
    keys = [k for k in rows[0] if k.startswith("loss")]
    keys += [k for k in ("knn_top1",) if any(r.get(k) not in (None, "") for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(float(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, lw=1.2, marker="o" if k == "knn_top1" else None, ms=3)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return None
