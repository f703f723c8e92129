"""An exclusive lock on a run folder for the run's lifetime, so two runs never share one.

:class:`RunLock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<out_dir>/.lock`` and writes the
holder (pid, host, start time, command) into it. The kernel drops the lock when the holding process
dies, however it dies, so a killed run never leaves a stale lock behind; the file's content is only
the note shown to the next run. Within one process the lock is re-entrant (a counted handle per
folder), so code that builds a trainer twice on one folder (tests, notebooks) does not lock itself
out.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

try:
    import fcntl
except ImportError:  # not POSIX: no lock (documented)
    fcntl = None

from ctrlaug.errors import CtrlAugError, OutputError, PlantedLinkError
from ctrlaug.utils.safeio import check_output_dir, open_nofollow

__all__ = ["RunLock", "FolderBusyError", "FolderUnusableError"]

LOCK_NAME = ".lock"

_held: dict[str, list] = {}  # realpath -> [fd, count]
_mutex = threading.Lock()


class FolderBusyError(RuntimeError):
    """Another live process holds the run folder's lock."""


class FolderUnusableError(RuntimeError):
    """The run folder cannot be created or written (a file of that name, no permission, ...)."""


def _check_usable(out_dir: str) -> None:
    """Create ``out_dir`` if needed and check that it is a writable folder (the one check every
    output folder gets, :func:`ctrlaug.utils.safeio.check_output_dir`), as FolderUnusableError."""
    try:
        check_output_dir(out_dir, "out_dir")
    except OutputError as e:
        raise FolderUnusableError(str(e)) from None


class RunLock:
    """``RunLock(out_dir).acquire()`` ... ``release()`` (or a ``with`` block)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.key = os.path.realpath(out_dir)
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> RunLock:
        """Create ``out_dir`` if needed and lock it; :class:`FolderUnusableError` or
        :class:`FolderBusyError` (one line naming the holder) otherwise."""
        if self.held:
            return self
        _check_usable(self.out_dir)
        with _mutex:
            if self.key in _held:
                _held[self.key][1] += 1
                self.held = True
                return self
            try:  # never through a link planted where the lock should be (it would be truncated)
                fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, what="lock file")
            except PlantedLinkError as e:
                raise FolderUnusableError(f"out_dir={self.out_dir!r}: {e}") from None
            except CtrlAugError as e:
                raise FolderUnusableError(
                    f"out_dir={self.out_dir!r}: cannot create its lock file ({e})"
                ) from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = _read_holder(self.path)
                    os.close(fd)
                    raise FolderBusyError(
                        f"out_dir={self.out_dir!r} is in use by another run ({holder}); wait for it to end "
                        "or choose another out_dir"
                    ) from None
            note = (
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}\n"
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
            _held[self.key] = [fd, 1]
            self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with _mutex:
            entry = _held.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self.key]
            fd = entry[0]
            try:
                os.ftruncate(fd, 0)  # no holder any more (the file stays: removing it would race)
            except OSError:
                pass
            os.close(fd)  # drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "holder unknown"
