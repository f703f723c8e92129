"""Provenance of a run or a report: which code, on which software and machine, from which command.

:func:`provenance` returns ``{"ctrlaug_version", "git_commit", "git_dirty", "torch", "cuda",
"device", "device_name", "python", "platform", "hostname", "command", "time"}``;
``git_commit``/``git_dirty`` are None when the package is not in a git checkout (an installed
wheel) or git is unavailable. Pretraining writes it as ``<out_dir>/provenance.json``
(:func:`write_provenance`), evaluation reports carry it under a ``"provenance"`` key, exports in
their metadata.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import socket
import subprocess
import sys

import torch

from ctrlaug.utils.atomic import atomic_write

__all__ = ["PROVENANCE_KEYS", "provenance", "git_state", "write_provenance"]

PROVENANCE_KEYS = (
    "ctrlaug_version",
    "git_commit",
    "git_dirty",
    "torch",
    "cuda",
    "device",
    "device_name",
    "python",
    "platform",
    "hostname",
    "command",
    "time",
)


def git_state(path: str | None = None) -> tuple[str | None, bool | None]:
    """(commit hash, dirty flag) of the git checkout holding ``path`` (default: this package);
    (None, None) when it is not in one or git cannot be run. Dirty = tracked files modified
    (untracked files do not count)."""
    path = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", "-C", path, *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (None if status is None else bool(status.strip()))


def provenance(device: torch.device | str | None = None, argv: list[str] | None = None) -> dict:
    """The provenance record of this process (see the module docstring). ``device``: the device
    the run computes on (default: none recorded); ``argv``: the arguments (default: this
    interpreter's whole command line, ``sys.orig_argv``, so ``-m ctrlaug.train`` is kept)."""
    import ctrlaug

    commit, dirty = git_state()
    dev = None if device is None else str(device)
    name = None
    if dev is not None and dev.startswith("cuda") and torch.cuda.is_available():
        try:
            name = torch.cuda.get_device_name(torch.device(dev))
        except Exception:  # a bad index: keep the rest of the record
            name = None
    elif dev == "cpu":
        name = platform.processor() or platform.machine()
    if argv is None:  # the interpreter's own command line: keeps "-m ctrlaug.train"
        argv = [sys.executable, *(getattr(sys, "orig_argv", None) or ["", *sys.argv])[1:]]
    else:
        argv = [sys.executable, *argv]
    return {
        "ctrlaug_version": ctrlaug.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": str(torch.__version__),  # a plain str: TorchVersion does not load with weights_only
        "cuda": torch.version.cuda,
        "device": dev,
        "device_name": name,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "command": shlex.join(argv),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_provenance(out_dir: str, device: torch.device | str | None = None, **extra) -> str:
    """Write :func:`provenance` (plus ``extra`` keys) to ``<out_dir>/provenance.json`` atomically
    (temp file + rename); returns the path. The top-level record describes this process; the
    records of earlier processes on the same folder (a resumed run) are kept, oldest first, under
    ``"previous"``."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "provenance.json")
    previous: list = []
    try:
        with open(path) as f:
            old = json.load(f)
        if isinstance(old, dict):
            previous = list(old.pop("previous", None) or []) + [old]
    except (OSError, ValueError):
        pass
    rec = {**provenance(device), **extra}
    if previous:
        rec["previous"] = previous
    atomic_write(path, json.dumps(rec, indent=2) + "\n")  # temp + rename: never through a planted link
    return path
