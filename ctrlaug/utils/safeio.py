"""Writing inside a run or output folder without being turned against the user.

A run folder can come from elsewhere (a colleague's tarball, a shared file system). A symbolic link
planted where a log or a lock should be must never make the project write through it: every file
the package opens for writing in such a folder is opened here, with ``O_NOFOLLOW`` (the last path
component may not be a link) and checked to be a regular file, or it is written by
:mod:`ctrlaug.utils.atomic` (a fresh temp file created with ``O_EXCL | O_NOFOLLOW``, then renamed
over the target: a rename replaces a planted link itself, never its target).

I/O failures become one line that names the path and the errno (:class:`ctrlaug.errors.OutputError`),
and :func:`check_output` lets a command find out that its output cannot be written *before* it
computes anything.

Only the standard library (and :mod:`ctrlaug.errors`): importable from every layer.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from ctrlaug.errors import OutputError, PlantedLinkError

__all__ = [
    "sha256_file",
    "open_nofollow",
    "fdopen_nofollow",
    "refuse_link",
    "io_error",
    "check_output",
    "check_output_dir",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def refuse_link(path: str, what: str = "file") -> None:
    """:class:`PlantedLinkError` (one line, naming the link and its target) if ``path`` is a
    symbolic link; nothing if it is anything else or absent."""
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise PlantedLinkError(
            f"{what} {path} is a symbolic link (to {target}); refusing to write through it: remove the "
            "link, or use a run folder you trust"
        )


def open_nofollow(path: str, flags: int, mode: int = 0o644, what: str = "file") -> int:
    """``os.open(path, flags | O_NOFOLLOW)`` and a check that it is a regular file; returns the fd.

    A link at ``path`` gives :class:`PlantedLinkError`; a FIFO, device or socket gives
    :class:`OutputError`; any other OSError becomes :class:`OutputError` naming path and errno.
    Nothing is truncated or written before these checks pass (``O_TRUNC`` is applied after them).
    """
    trunc = flags & os.O_TRUNC
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            refuse_link(path, what)
        raise io_error(e, path, f"cannot open {what}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{what} {path} is not a regular file; refusing to write to it")
        os.set_blocking(fd, True)
        if trunc:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fdopen_nofollow(path: str, mode: str = "a", what: str = "file", **kwargs):
    """``open(path, mode)`` for ``"w"``/``"a"`` (text or binary) through :func:`open_nofollow`."""
    base = mode.replace("b", "")
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}
    if base not in flags:
        raise ValueError(f"fdopen_nofollow: mode must be 'w' or 'a' (text or binary), got {mode!r}")
    return os.fdopen(open_nofollow(path, flags[base], what=what), mode, **kwargs)


def io_error(e: OSError, path: str, doing: str = "cannot write") -> OutputError:
    """One line for an OSError on ``path``: what failed, the path, the reason and the errno name
    (``ENOSPC`` says "no space left on the device")."""
    code = e.errno
    name = errno.errorcode.get(code, str(code)) if code is not None else type(e).__name__
    reason = e.strerror or str(e) or type(e).__name__
    if code == errno.ENOSPC:
        reason = "no space left on the device"
    elif code == errno.EDQUOT:
        reason = "disk quota exceeded"
    return OutputError(f"{doing} {path}: {reason} [{name}]", errno=code, path=path)


def check_output_dir(folder: str, what: str = "output folder") -> str:
    """Create ``folder`` if needed and check that files can be created in it; :class:`OutputError`
    naming it and the errno otherwise. Returns ``folder``."""
    folder = folder or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(
            f"{what} {folder} exists and is not a directory [ENOTDIR]", errno=errno.ENOTDIR, path=folder
        )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise io_error(e, folder, f"cannot create {what}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {folder} is not writable [EACCES]", errno=errno.EACCES, path=folder)
    return folder


def check_output(path: str, what: str = "output file") -> str:
    """Check, before any work, that ``path`` can be written: its folder is creatable and writable,
    ``path`` itself is not a directory or a link. Returns ``path``."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise OutputError(f"{what} {path} is a directory [EISDIR]", errno=errno.EISDIR, path=path)
    refuse_link(path, what)
    check_output_dir(os.path.dirname(path) or ".", f"folder of {what} {path}")
    return path


def sha256_file(path: str) -> str:
    """The SHA-256 hex digest of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
