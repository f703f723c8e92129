"""Atomic file rewrites: write a temp file beside the target, fsync it, ``os.replace`` it, fsync
the folder. A reader (or a run killed midway) sees the old file or the new one, never a torn one.

Only the standard library (and :mod:`ctrlaug.errors`, :mod:`ctrlaug.utils.safeio`): importable from every
layer of the package.
"""

from __future__ import annotations

import contextlib
import os

from ctrlaug.errors import OutputError
from ctrlaug.utils.safeio import io_error

__all__ = ["atomic_write", "atomic_open", "create_fresh", "fsync_dir", "os_error_behind"]


def fsync_dir(path: str) -> None:
    """Make a rename inside folder ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_fresh(tmp: str) -> int:
    """A new, empty regular file at ``tmp`` (O_EXCL | O_NOFOLLOW): whatever was there (a stale temp
    file of a killed run, or a link planted to make us write elsewhere) is unlinked first, and the
    exclusive create never follows a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(tmp, flags, 0o644)
    except FileExistsError:
        os.unlink(tmp)  # removes a link itself, never its target
        return os.open(tmp, flags, 0o644)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """``open(path, mode)`` that publishes the file only when the block ends without an error:
    the data goes to ``<path>.<pid>.tmp``, is fsynced and renamed over ``path``; on an error the
    temp file is removed and ``path`` keeps its old content. An OSError (a read-only or missing
    folder, a full disk, also when torch.save reports it as a RuntimeError) becomes one
    :class:`~ctrlaug.errors.OutputError` line naming ``path`` and the errno."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    if os.path.exists(path) and not os.path.islink(path) and not os.path.isfile(path):
        raise OutputError(f"cannot write {path}: it is not a regular file (a folder or a device)", path=path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with os.fdopen(create_fresh(tmp), mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        cause = os_error_behind(e)
        if cause is None:
            raise
        raise io_error(cause, path, "cannot write") from e
    finally:
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.remove(tmp)
    fsync_dir(os.path.dirname(path))


def os_error_behind(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: ``e`` itself, or one it was raised from or while handling (torch's
    zip writer turns a failed ``write`` into ``RuntimeError: unexpected pos``, the ENOSPC kept as
    its context). None when there is none, or when it already is an :class:`OutputError`."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OutputError):
            return None
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def atomic_write(path: str, data: str | bytes) -> None:
    """Replace ``path`` by ``data`` (text is written as UTF-8) atomically."""
    if isinstance(data, str):
        with atomic_open(path, "w", encoding="utf-8", newline="") as f:
            f.write(data)
    else:
        with atomic_open(path, "wb") as f:
            f.write(data)
