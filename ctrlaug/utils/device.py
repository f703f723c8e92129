"""One device resolution for every entry point (training config, evaluate/diagnose CLIs)."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(want: str, name: str = "--device", error: type[Exception] = ValueError) -> torch.device:
    """``'auto'`` -> cuda if available else cpu; ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` as given.

    Raises ``error`` (a ValueError unless the caller has its own kind) for an unknown device or a
    CUDA device torch cannot see; ``name`` is how the caller's user spells the setting
    (``--device``, ``device``), so that the one-line message names it.
    """
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(want)
    except (RuntimeError, ValueError):
        raise error(f"bad {name} {want!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise error(f"bad {name} {want!r}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{name} {want}: torch sees no CUDA device (torch {torch.__version__})")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise error(f"{name} {want}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev
