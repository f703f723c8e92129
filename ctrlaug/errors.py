"""The one family of user errors: bad input the user can fix.

Every error a user can fix by changing a command, a config, a file or a folder is a
:class:`CtrlAugError`; each command line (:func:`ctrlaug.cli.run_cli`) prints it as one
``error: ...`` line and exits with status 2, without a traceback. Anything else is a bug and keeps
its traceback. The subclasses keep the built-in base they always had (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so older ``except`` clauses still catch them.
The two bounds those messages share live here too: :data:`SEED_MAX`, the largest seed a user may
give, and :func:`cap_line`, which keeps one error line bounded.

Only the standard library: importable from every layer of the package.
"""

from __future__ import annotations

__all__ = [
    "CtrlAugError",
    "ConfigError",
    "StoppedBySignal",
    "EvalError",
    "NonFiniteLossError",
    "OutputError",
    "PlantedLinkError",
    "RunFolderError",
    "UsageError",
    "SEED_MAX",
    "cap_line",
]

#: The largest seed a config or ``--seeds`` accepts: seeds go to ``torch.manual_seed`` and numpy's
#: ``SeedSequence`` (non-negative) directly, and plus a few (``random_init_seed``: ``seed + 1 + i``);
#: below 2**63 every one of them stays within torch's 64-bit range. A seed above it is a user error.
SEED_MAX = 2**63 - 1


def cap_line(text: str, limit: int = 4000) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut: an error line stays bounded
    even when its message echoes a huge value."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters cut)"


class CtrlAugError(Exception):
    """Bad input the user can fix; the message is one line that names the problem (file, key,
    shape). Command lines print it as ``error: <message>`` and exit 2."""


class ConfigError(CtrlAugError, ValueError):
    """A bad configuration: unknown keys or invalid values, all listed at once.

    ``problems`` holds the individual ``"key: message"`` lines (keys relative to the dataclass
    that raised it), so an enclosing config can report them under its dotted prefix.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class EvalError(CtrlAugError, ValueError):
    """A bad evaluation, diagnosis or export request: a missing checkpoint, a config that does not
    fit it, an unknown protocol or device, an empty split."""


class NonFiniteLossError(CtrlAugError, RuntimeError):
    """Raised after ``optim.max_bad_steps`` consecutive steps with a NaN/inf loss or gradient, or when
    the parameters or the state to be checkpointed became non-finite."""


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked: busy (another run holds its lock), not writable,
    or holding checkpoints none of which can be resumed."""


class UsageError(CtrlAugError, ValueError):
    """A bad request on a command line that no config check catches: an unknown ablation row, a
    seed list, a calibration file that does not fit the request, a dataset format, split, fold or
    annotation version that does not exist (``--format``, ``--split``, ``--fold``, ``--version``)."""


class OutputError(CtrlAugError, OSError):
    """An output cannot be written: a read-only or missing folder, a path that is a directory, a
    full disk. The message names the path and the errno; ``errno`` and ``path`` keep them."""

    def __init__(self, message: str, errno: int | None = None, path: str | None = None):
        super().__init__(message)
        self.errno, self.path = errno, path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PlantedLinkError(RunFolderError):
    """A symbolic link where the package would write a file of a run or output folder (a lock, a
    log, a checkpoint): refused, so a folder received from elsewhere cannot make a run write
    through the link to another file."""


class StoppedBySignal(CtrlAugError):
    """Training stopped on SIGTERM / SIGUSR1 (a scheduler's preemption, ``docker stop``) after
    finishing its step and writing a checkpoint. Command lines print it as ``stopped: ...`` and
    exit with ``exit_code`` = 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1), the
    status a process killed by that signal has, so schedulers read it the same way."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)
