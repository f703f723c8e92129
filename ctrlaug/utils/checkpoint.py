"""Atomic checkpoints: write to a temp file in the same folder, fsync, then ``os.replace``.

A checkpoint is ``<out_dir>/ckpt_<global step, 9 digits>.pt``; a write killed midway leaves only
a ``*.tmp`` file behind, never a half-written ``ckpt_*.pt``, so the previous checkpoint stays the
newest loadable one. :func:`load_latest` walks the checkpoints newest first and returns the first
that loads and carries every required key (a truncated or foreign file is skipped with a note).
"""

from __future__ import annotations

import glob
import os
import re
import warnings

import torch

__all__ = ["save_checkpoint", "list_checkpoints", "load_checkpoint", "load_latest", "prune_checkpoints"]

_NAME = re.compile(r"ckpt_(\d{9})\.pt$")
REQUIRED = ("model", "optimizer", "epoch", "step", "config")


def _path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"ckpt_{step:09d}.pt")


def save_checkpoint(state: dict, out_dir: str, step: int) -> str:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` in ``out_dir``; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    final = _path(out_dir, step)
    tmp = f"{final}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return final


def list_checkpoints(out_dir: str) -> list[str]:
    """Checkpoint paths in ``out_dir``, newest (highest step) first."""
    paths = [p for p in glob.glob(os.path.join(out_dir, "ckpt_*.pt")) if _NAME.search(p)]
    return sorted(paths, key=lambda p: int(_NAME.search(p).group(1)), reverse=True)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load one checkpoint and check it carries the keys the trainer needs."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a ctrlaug checkpoint (got {type(state).__name__})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{path}: not a ctrlaug checkpoint, missing {missing}")
    return state


def load_latest(out_dir: str, map_location="cpu") -> tuple[str, dict] | None:
    """Newest checkpoint of ``out_dir`` that loads; None when there is none."""
    for p in list_checkpoints(out_dir):
        try:
            return p, load_checkpoint(p, map_location)
        except Exception as e:  # truncated, corrupt or foreign: fall back to an older one
            warnings.warn(
                f"skipping unreadable checkpoint {p}: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2
            )
    return None


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (and stale temp files)."""
    for p in list_checkpoints(out_dir)[keep:]:
        try:
            os.remove(p)
        except OSError:
            pass
    for p in glob.glob(os.path.join(out_dir, "ckpt_*.pt.*.tmp")):
        try:
            os.remove(p)
        except OSError:
            pass
