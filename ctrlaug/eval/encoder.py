"""From a checkpoint (or a random init) to an encoder: find the checkpoint of a run folder, check
and load it safely, rebuild the encoder of its config, and resolve the device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ctrlaug.errors import EvalError
from ctrlaug.eval.floor import random_init_seed
from ctrlaug.models import build_encoder
from ctrlaug.utils.checkpoint import CheckpointError, safe_load, verify_checksum
from ctrlaug.utils.device import resolve_device as _resolve_device

__all__ = ["resolve_checkpoint", "load_encoder", "resolve_device"]


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or the newest ``ckpt_*.pt`` of a run folder; EvalError if none."""
    from ctrlaug.utils.checkpoint import list_checkpoints

    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise EvalError(f"no checkpoint (ckpt_*.pt) in run folder {path}")
        return found[0]
    if not os.path.isfile(path):
        raise EvalError(f"checkpoint not found: {path}")
    return path


def load_encoder(
    checkpoint: str | None,
    config_path: str | None = None,
    random_init: bool = False,
    overrides: Sequence[str] = (),
    init: int = 0,
):
    """Encoder of a pretraining checkpoint: ``(encoder, TrainConfig, checkpoint path or None)``.

    The model config is the checkpoint's own, or ``config_path`` (YAML) when given; the
    checkpoint's encoder weights must match it exactly, otherwise EvalError. ``random_init`` keeps
    the freshly initialised encoder as a baseline (init ``init`` of the floor's seed convention,
    :func:`ctrlaug.eval.floor.random_init_seed`: ``seed + 1 + init``); one of the two
    must be asked for, else EvalError.
    """
    from ctrlaug.config import ConfigError, config_from_dict, load_config, migrate_saved_config
    from ctrlaug.config import apply_overrides as _apply

    if not checkpoint and not random_init:
        raise EvalError(
            "no encoder asked for: give a checkpoint (a ckpt_*.pt or a run folder) or --random-init"
        )
    state, path = None, None
    if checkpoint:
        path = resolve_checkpoint(checkpoint)
        try:
            verify_checksum(path)  # when it has one: a damaged file is refused
            state = safe_load(path)  # weights_only: a checkpoint never runs code
        except CheckpointError as e:
            raise EvalError(str(e)) from None
        except Exception as e:
            raise EvalError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise EvalError(f"{path} is not a ctrlaug pretraining checkpoint (no 'model'/'config')")
    try:
        if config_path:
            cfg = load_config(config_path, list(overrides))
        elif state is not None:
            cfg = config_from_dict(_apply(migrate_saved_config(dict(state["config"])), list(overrides)))
        else:
            cfg = load_config(None, list(overrides))
    except (ConfigError, OSError) as e:
        raise EvalError(f"bad config: {e}".splitlines()[0]) from None
    # a random-init encoder follows the floor's seed convention (ctrlaug.eval.floor): init `init` of seed s
    torch.manual_seed(random_init_seed(cfg.seed, init) if random_init else cfg.seed)
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    if state is not None and not random_init:
        sd = {k[len("encoder.") :]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        if not sd:
            raise EvalError(f"{path} holds no encoder weights")
        try:
            enc.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            ck = migrate_saved_config(dict(state["config"])).get("model") or {}
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            raise EvalError(
                f"checkpoint {path} (arch={ck.get('arch')}, width={ck.get('width')}) does not match the "
                f"model config (arch={cfg.model.arch}, width={cfg.model.width}): " + detail
            ) from None
    return enc, cfg, path


def resolve_device(want: str) -> torch.device:
    """'auto' -> cuda if available else cpu; EvalError for an unknown or unavailable device
    (:func:`ctrlaug.utils.device.resolve_device`)."""
    return _resolve_device(want, "--device", EvalError)
