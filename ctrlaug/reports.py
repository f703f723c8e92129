"""The one writer of result files: JSON and markdown / text, each written atomically.

Every report of the package (probe.json, evaluation and diagnosis reports, calibration, ablation
tables, export metadata) goes through these functions, so a reader or a killed run sees the old
file or the new one, never a torn one (:mod:`ctrlaug.utils.atomic`: temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os

from ctrlaug.utils.atomic import atomic_write
from ctrlaug.utils.safeio import io_error

__all__ = ["write_json", "write_text", "write_report"]


def _parent(path: str) -> None:
    d = os.path.dirname(path)
    if d:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:  # one line naming the folder and the errno, not a traceback
            raise io_error(e, d, "cannot create folder") from None


def write_json(path: str, obj, indent: int = 2) -> str:
    """``json.dump(obj, indent=indent)`` to ``path`` atomically (folders made); returns ``path``."""
    _parent(path)
    atomic_write(path, json.dumps(obj, indent=indent))
    return path


def write_text(path: str, text: str) -> str:
    """``text`` (markdown, a plain report) to ``path`` atomically (folders made); returns ``path``."""
    _parent(path)
    atomic_write(path, text)
    return path


def write_report(stem: str, result: dict, markdown: str, indent: int = 2) -> tuple[str, str]:
    """The usual pair: ``<stem>.json`` (``result``) and ``<stem>.md`` (``markdown``)."""
    return write_json(stem + ".json", result, indent), write_text(stem + ".md", markdown)
