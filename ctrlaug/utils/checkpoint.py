"""Checkpoints that are atomic, checksummed, finite and safe to load.

A checkpoint is ``<out_dir>/ckpt_<global step, 9 digits>.pt`` with a checksum file beside it,
``ckpt_<step>.pt.sha256`` (``sha256sum -c`` reads it). :func:`save_checkpoint` refuses a state
holding a NaN/inf tensor, writes a temp file in the same folder, fsyncs it, writes the checksum
file (atomically), then ``os.replace``\\ s the checkpoint into place: a write killed midway leaves
only ``*.tmp`` files behind, never a half-written ``ckpt_*.pt``.

Loading never unpickles code: every file goes through ``torch.load(weights_only=True)`` (tensors,
numbers, strings, lists, dicts), so the RNG states are stored as tensors and plain lists
(:func:`pack_rng`) and the config as plain data. A file that needs more (a checkpoint of an earlier
version, which pickled numpy's RNG state, or a file crafted to run code) is refused with one line
naming the explicit opt-in for files the user trusts: ``python -m ctrlaug.utils.checkpoint
upgrade --trust FILE`` rewrites such a file in today's format, once.

:func:`find_resumable` walks the checkpoints newest first and returns the first that verifies
(checksum), loads and passes the caller's check (e.g. that it fits the model), with the reason
each newer one was passed over.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import re
import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch

from ctrlaug.cli import run_cli
from ctrlaug.errors import CtrlAugError, UsageError
from ctrlaug.utils.atomic import atomic_write, create_fresh, fsync_dir, os_error_behind
from ctrlaug.utils.safeio import io_error, sha256_file

__all__ = [
    "CheckpointError",
    "UnsafeFileError",
    "NonFiniteStateError",
    "save_checkpoint",
    "list_checkpoints",
    "checkpoint_step",
    "load_checkpoint",
    "load_latest",
    "find_resumable",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "safe_load",
    "verify_checksum",
    "nonfinite_tensors",
    "pack_rng",
    "restore_rng",
    "UPGRADE_HINT",
]

_NAME = re.compile(r"ckpt_(\d{9})\.pt$")
REQUIRED = ("model", "optimizer", "epoch", "step", "config")
SUM = ".sha256"
_TRAINER_FILES = ("ckpt_", "metrics.csv.", "config.yaml.", "probe.")
UPGRADE_HINT = "python -m ctrlaug.utils.checkpoint upgrade --trust"


class CheckpointError(CtrlAugError, ValueError):
    """A checkpoint (or cache) file that cannot be used; the message is one line naming the file."""


class UnsafeFileError(CheckpointError):
    """A file that only a full unpickler could load (it could run code): refused."""


class NonFiniteStateError(CheckpointError):
    """A state to be saved holds NaN/inf tensors: it is not written."""


def _save_synced(state: dict, path: str, target: str, doing: str) -> None:
    """torch.save ``state`` to ``path`` and fsync it (the temp-file half of an atomic write). An
    OSError, also the one a full disk hides behind torch.save's zip writer ("unexpected pos"),
    becomes one :class:`OutputError` line: ``doing``, ``target`` and the errno."""
    try:
        with os.fdopen(create_fresh(path), "wb") as f:  # O_EXCL | O_NOFOLLOW: never through a planted link
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except Exception as e:
        cause = os_error_behind(e)
        if cause is None:
            raise
        raise io_error(cause, target, doing) from e


def _path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"ckpt_{step:09d}.pt")


# ----------------------------------------------------------------------------------------------
# plain-data RNG states (loadable with weights_only=True)
# ----------------------------------------------------------------------------------------------


def pack_rng() -> dict:
    """The torch, numpy, Python (and CUDA) global RNG states as tensors, numbers and lists."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    """Set the global RNG states saved by :func:`pack_rng`."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())  # map_location may have moved it to the GPU
    if "numpy" in rng:
        n = rng["numpy"]
        key = n["key"].cpu().numpy().astype(np.uint32)
        np.random.set_state((n["bit_generator"], key, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in rng:
        p = rng["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in rng and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
        except Exception:  # another number of GPUs: the CUDA generators are not used for data
            pass


def _rng_from_legacy(rng: dict) -> dict:
    """An earlier version's RNG states (numpy's tuple, Python's tuple) in :func:`pack_rng`'s form."""
    out = dict(rng)
    if isinstance(rng.get("numpy"), tuple):
        name, key, pos, has_gauss, gauss = rng["numpy"]
        out["numpy"] = {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        }
    if isinstance(rng.get("python"), tuple):
        version, internal, gauss_next = rng["python"]
        out["python"] = {"version": int(version), "state": list(internal), "gauss_next": gauss_next}
    return out


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Dotted names of every floating-point tensor in ``obj`` (nested dicts/lists) holding NaN/inf."""
    out: list[str] = []
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            out.append(prefix or "<tensor>")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out += nonfinite_tensors(v, f"{prefix}[{i}]")
    return out


def verify_checksum(path: str) -> bool:
    """Check ``path`` against ``<path>.sha256``; True when it matches, False when there is no
    checksum file; :class:`CheckpointError` when the content differs (a flipped byte, a torn
    copy)."""
    sidecar = path + SUM
    try:
        with open(sidecar) as f:
            want = f.read().split()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read its checksum file {sidecar}: {e}") from None
    if not want or not re.fullmatch(r"[0-9a-f]{64}", want[0]):
        raise CheckpointError(f"{path}: its checksum file {sidecar} is malformed")
    got = sha256_file(path)
    if got != want[0]:
        raise CheckpointError(
            f"{path}: checksum mismatch (sha256 {got[:12]}..., {sidecar} says {want[0][:12]}...): the file was "
            "altered or damaged after it was written"
        )
    return True


def safe_load(path: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain data only, no code runs. A file
    that needs a full unpickler raises :class:`UnsafeFileError` (one line, with the opt-in)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only" not in msg.lower() and "weights_only" not in msg:
            raise
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(
            r"(?:global|function|class) ([\w.]+)", msg
        )
        what = f" ({m.group(1)})" if m else ""
        raise UnsafeFileError(
            f"{path}: refused: it pickles Python objects{what} that only a full unpickler loads, which "
            "can run code; a checkpoint of an earlier ctrlaug version looks like this, and so does a "
            f"planted file. If you trust this file, convert it once with: {UPGRADE_HINT} {path}"
        ) from None


# ----------------------------------------------------------------------------------------------
# save / list / load / prune
# ----------------------------------------------------------------------------------------------


def save_checkpoint(state: dict, out_dir: str, step: int) -> str:
    """Write ``state`` atomically as ``ckpt_<step>.pt`` (+ ``.sha256``) in ``out_dir``; returns
    the path. A state holding NaN/inf tensors raises :class:`NonFiniteStateError` and nothing
    is written."""
    bad = nonfinite_tensors(state)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteStateError(
            f"not writing the checkpoint of step {step}: {len(bad)} non-finite tensor(s) "
            f"({', '.join(bad[:5])}{more})"
        )
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise io_error(e, out_dir, "cannot create run folder") from None
    final = _path(out_dir, step)
    tmp = f"{final}.{os.getpid()}.tmp"
    try:
        _save_synced(state, tmp, final, "cannot write checkpoint")
        digest = sha256_file(tmp)
        # the checksum first: a kill between the two renames leaves a checksum that does not match
        # (the checkpoint is then passed over) or one without its checkpoint (removed by the prune)
        atomic_write(final + SUM, f"{digest}  {os.path.basename(final)}\n")
        os.replace(tmp, final)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    fsync_dir(out_dir)  # make the rename itself durable
    return final


def list_checkpoints(out_dir: str) -> list[str]:
    """Checkpoint paths in ``out_dir``, newest (highest step) first."""
    paths = [p for p in glob.glob(os.path.join(out_dir, "ckpt_*.pt")) if _NAME.search(p)]
    return sorted(paths, key=checkpoint_step, reverse=True)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Verify (checksum, when there is one), load safely and check the keys the trainer needs;
    :class:`CheckpointError` (one line) otherwise."""
    verify_checksum(path)
    try:
        state = safe_load(path, map_location)
    except CheckpointError:
        raise
    except Exception as e:  # torn, truncated, not a torch file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {detail[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a ctrlaug checkpoint (got {type(state).__name__})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ctrlaug checkpoint, missing {missing}")
    return state


def find_resumable(
    out_dir: str, map_location="cpu", check: Callable[[str, dict], None] | None = None
) -> tuple[tuple[str, dict] | None, list[tuple[str, str]]]:
    """``((path, state) of the newest checkpoint that verifies, loads and passes ``check``, or
    None; [(path, reason)] of every newer one passed over)``. ``check(path, state)`` raises
    :class:`CheckpointError` for a checkpoint the caller cannot use (e.g. another model)."""
    failures: list[tuple[str, str]] = []
    unverified: list[str] = []
    for p in list_checkpoints(out_dir):
        if not os.path.exists(p + SUM):  # tried only if no checkpoint with a checksum works
            unverified.append(p)
            continue
        found = _try_load(p, map_location, check, failures)
        if found is not None:
            newer = [q for q in unverified if checkpoint_step(q) > checkpoint_step(p)]
            failures += [
                (q, _no_sum(q) + f"; resuming the older {os.path.basename(p)}, whose checksum verifies")
                for q in newer
            ]
            return found, failures
    for p in unverified:  # nothing with a checksum worked: the newest one without, with a warning
        found = _try_load(p, map_location, check, failures)
        if found is not None:
            warnings.warn(_no_sum(p) + "; resuming it unverified", RuntimeWarning, stacklevel=2)
            print(f"[ctrlaug] warning: {_no_sum(p)}; resuming it unverified", file=sys.stderr)
            return found, failures
    return None, failures


def checkpoint_step(path: str) -> int:
    """The global step in a checkpoint's name (``ckpt_<step, 9 digits>.pt``)."""
    return int(_NAME.search(path).group(1))


def _no_sum(path: str) -> str:
    return (
        f"{path} has no checksum file ({os.path.basename(path)}{SUM}), which every checkpoint of this "
        "version has: it cannot be verified"
    )


def _try_load(p: str, map_location, check, failures: list) -> tuple[str, dict] | None:
    try:
        state = load_checkpoint(p, map_location)
        if check is not None:
            check(p, state)
        return p, state
    except CheckpointError as e:
        failures.append((p, str(e)))
    except OSError as e:  # e.g. a transient read error
        failures.append((p, f"{p}: cannot read ({e})"))
    return None


def load_latest(out_dir: str, map_location="cpu") -> tuple[str, dict] | None:
    """Newest checkpoint of ``out_dir`` that verifies and loads (a warning for each one passed
    over); None when there is none."""
    found, failures = find_resumable(out_dir, map_location)
    for _, reason in failures:
        warnings.warn(f"skipping unreadable checkpoint {reason}", RuntimeWarning, stacklevel=2)
    return found


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, checksum files without their checkpoint,
    and this process's own temp files (another process's belong to it)."""
    for p in list_checkpoints(out_dir)[keep:]:
        for q in (p + SUM, p):  # the checksum goes first, so a crash never orphans a checkpoint
            try:
                os.remove(q)
            except OSError:
                pass
    for s in glob.glob(os.path.join(out_dir, "ckpt_*.pt" + SUM)):
        if not os.path.exists(s[: -len(SUM)]):
            try:
                os.remove(s)
            except OSError:
                pass
    for p in glob.glob(os.path.join(out_dir, f"ckpt_*.pt*.{os.getpid()}.tmp")):
        try:
            os.remove(p)
        except OSError:
            pass


def remove_stale_temp_files(out_dir: str) -> int:
    """Remove the temp files that runs killed while writing left in ``out_dir`` (checkpoints,
    checksums, ``metrics.csv``, ``config.yaml``, ...: ``<name>.<pid>.tmp``). Only safe while
    holding the folder's run lock; returns how many were removed."""
    n = 0
    for p in glob.glob(os.path.join(out_dir, "*.tmp")):
        name = os.path.basename(p)  # only the trainer's own files (an evaluation may write here too)
        if not re.search(r"\.\d+\.tmp$", name) or not name.startswith(_TRAINER_FILES):
            continue
        try:
            os.remove(p)
            n += 1
        except OSError:
            pass
    return n


# ----------------------------------------------------------------------------------------------
# the explicit opt-in for trusted files of an earlier format
# ----------------------------------------------------------------------------------------------


def upgrade(path: str) -> str:
    """Rewrite a *trusted* checkpoint of an earlier version in today's format (RNG states as plain
    data, a checksum file beside it); the original is kept as ``<path>.orig``. Loads the file with
    a full unpickler: only for files you trust. A file that is not a checkpoint raises
    :class:`CheckpointError`, a file that cannot be written :class:`~ctrlaug.errors.OutputError`;
    the original is then left as it was."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for it
    except Exception as e:  # torn, truncated, not a torch file
        detail = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot upgrade ({type(e).__name__}: {detail[:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: cannot upgrade: not a ctrlaug checkpoint (got {type(state).__name__})"
        )
    if isinstance(state, dict) and isinstance(state.get("rng"), dict):
        state["rng"] = _rng_from_legacy(state["rng"])
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        _save_synced(state, tmp, path, "cannot upgrade")
        safe_load(tmp)  # what is left must load without the full unpickler
        try:
            os.replace(path, path + ".orig")
            atomic_write(path + SUM, f"{sha256_file(tmp)}  {os.path.basename(path)}\n")
            os.replace(tmp, path)
        except OSError as e:
            raise io_error(e, path, "cannot upgrade") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(os.path.dirname(path))
    return path


_UPGRADE_USAGE = f"usage: {UPGRADE_HINT} FILE [FILE ...] (rewrites trusted files of an earlier format)"


def _parse_upgrade(argv: list[str]) -> list[str]:
    """The files of ``upgrade --trust FILE ...``; :class:`~ctrlaug.errors.UsageError` otherwise."""
    if not argv or argv[0] != "upgrade" or "--trust" not in argv:
        raise UsageError(
            "upgrading loads the file with a full unpickler, which runs any code it holds; pass --trust "
            f"only for files you made or trust ({_UPGRADE_USAGE})"
        )
    files = [a for a in argv[1:] if a != "--trust"]
    if not files:
        raise UsageError(f"no FILE to upgrade ({_UPGRADE_USAGE})")
    return files


def _upgrade_all(files: list[str]) -> int:
    for p in files:
        upgrade(p)
        print(f"upgraded {p} (original kept as {p}.orig)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ctrlaug.utils.checkpoint upgrade --trust FILE ...``: a bad request or a file that
    cannot be upgraded is one ``error:`` line and exit 2 (:func:`ctrlaug.cli.run_cli`), the files
    before it stay upgraded."""
    return run_cli(_parse_upgrade, _upgrade_all, argv)


if __name__ == "__main__":
    sys.exit(main())
