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
from ctrlaug.utils.safeio import fdopen_nofollow

__all__ = ["MetricWriter", "ProgressBar", "plot_losses", "read_csv", "read_rows_until_damage", "set_aside"]


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
        rows: list[dict[str, str]] = []
        if resume_step is not None and os.path.exists(self.path):
            # On resume, keep the rows up to the checkpoint (later ones will be produced again); a
            # damaged tail (NUL bytes of a power loss, a garbage or torn line) is set aside first.
            intact, damage = read_rows_until_damage(self.path)
            rows = [r for r in intact if int(r["step"]) <= resume_step]
            if damage:
                aside = set_aside(self.path, ".damaged")
                print(
                    f"[ctrlaug.train] {self.path}: {damage}; kept its {len(rows)} intact rows up to step "
                    f"{resume_step}, the original file is set aside as {aside}",
                    file=sys.stderr,
                )
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
        with fdopen_nofollow(self.path, "a", what="metrics log", newline="") as f:
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


def read_rows_until_damage(path: str) -> tuple[list[dict[str, str]], str]:
    """The rows of a metrics.csv up to its first damaged line, and what the damage is ("" when
    none). A row is intact when it has exactly the header's fields, its step is an integer above
    the previous row's and its epoch an integer; NUL bytes, undecodable bytes, a garbage line or a
    row torn mid-write end the intact part (nothing after it is trusted)."""
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        return [], "no header line" if raw.strip() else ""
    header = next(csv.reader([lines[0]]))
    if not header or header[:2] != ["step", "epoch"] or "\x00" in lines[0] or "\ufffd" in lines[0]:
        return [], "its header line is damaged"
    rows: list[dict[str, str]] = []
    last = -1
    body = lines[1:]
    for n, line in enumerate(body, start=2):
        if line == "" and n == len(lines):  # the newline that ends the last row
            break
        what = ""
        if "\x00" in line:
            what = f"NUL bytes at line {n}"
        elif "\ufffd" in line:
            what = f"bytes that are not UTF-8 at line {n}"
        else:
            cells = next(csv.reader([line]), [])
            ok = len(cells) == len(header) and cells[0].isdigit() and cells[1].lstrip("-").isdigit()
            if not ok or int(cells[0]) <= last:
                what = f"a damaged or torn row at line {n}"
            elif n == len(lines) and not text.endswith("\n"):
                what = f"a row torn mid-write at line {n}"
        if what:
            return rows, what
        rows.append(dict(zip(header, cells)))
        last = int(cells[0])
    return rows, ""


def set_aside(path: str, tag: str) -> str:
    """Rename ``path`` to a new ``<path><tag>[.N]`` beside it (never over an earlier one); returns it."""
    n, aside = 0, path + tag
    while os.path.lexists(aside):
        n += 1
        aside = f"{path}{tag}.{n}"
    os.replace(path, aside)
    return aside


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
    with atomic_open(png_path, "wb") as f:  # temp + rename: never through a planted link
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return None
