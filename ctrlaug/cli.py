"""One convention for every ``python -m ctrlaug.<command>``: parse, run, and turn a user error
into one line.

:func:`run_cli` parses ``argv`` (an :class:`argparse.ArgumentParser`, or a function for commands
with their own ``key=value`` grammar), calls the command's adapter with the parsed arguments and
returns its exit status. A :class:`~ctrlaug.errors.CtrlAugError` (bad input the user can fix:
config, checkpoint, dataset, run folder, request) prints ``error: <message>`` on stderr and returns
2; anything else is a bug and keeps its traceback. The entry-point modules (``ctrlaug.train``,
``ctrlaug.evaluate``, ...) are thin: a parser and a call into the library; nothing imports them.
The commands that live in the library (``ctrlaug.data.prepare``, ``ctrlaug.data.check``,
``ctrlaug.utils.checkpoint upgrade``) use it too: this module needs only :mod:`ctrlaug.errors`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ctrlaug.errors import SEED_MAX, CtrlAugError, cap_line

__all__ = ["CtrlAugError", "run_cli", "parse_seeds"]


def run_cli(
    parse: argparse.ArgumentParser | Callable[[list[str]], Any],
    run: Callable[[Any], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and call ``run(args)``.

    Returns ``run``'s status when it returns an int (anything else, such as a result dict or
    ``None``, counts as 0), or 2 after one ``error:`` line when parsing or
    running raised a :class:`~ctrlaug.errors.CtrlAugError`. argparse's own usage errors keep
    argparse's behaviour (usage line, exit 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse.parse_args(argv) if isinstance(parse, argparse.ArgumentParser) else parse(argv)
        status = run(args)
    except CtrlAugError as e:
        code = getattr(e, "exit_code", 2)  # StoppedBySignal: 128 + signal, not an error
        # a message that echoes a huge value still prints as one bounded line
        print(f"{'error' if code == 2 else 'stopped'}: {cap_line(str(e), 8000)}", file=sys.stderr)
        return code
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a :class:`~ctrlaug.errors.CtrlAugError` naming ``flag`` otherwise."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CtrlAugError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise CtrlAugError(f"{flag} is empty")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise CtrlAugError(f"{flag}: seeds must be integers from 0 to 2**63-1, got {bad[0]}")
    return seeds
