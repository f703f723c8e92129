"""Export the encoder of a pretraining run for use elsewhere (``python -m ctrlaug.export``).

* ``ctrlaug`` (default): the backbone-only file of :mod:`ctrlaug.models.backbone` (state dict +
  metadata: arch, width, spatial_stride1_stages, input normalisation, clip geometry, feature
  grid, source run, step and commit), readable with ``torch.load(OUT, weights_only=True)``;
  ``ctrlaug.models.load_backbone(OUT)`` rebuilds the encoder.
* ``torchvision``: a plain state dict under the keys of torchvision's ``VideoResNet`` with the
  Hara stem (``ctrlaug.models.build_torchvision_r3d18`` builds that module and loads it; stock
  ``r3d_18`` differs in the stem), for R3D-18 at width 1 with Hara's strides only; the metadata
  goes beside it as ``OUT.json``.

See docs/evaluation.md, "Using the encoder elsewhere".
"""

from __future__ import annotations

import json
import os
import re

from ctrlaug.config import config_to_dict
from ctrlaug.errors import EvalError
from ctrlaug.eval.encoder import load_encoder
from ctrlaug.models import INPUT_MEAN, INPUT_STD
from ctrlaug.models.backbone import check_torchvision_compatible, save_backbone, torchvision_state_dict
from ctrlaug.reports import write_json
from ctrlaug.utils.provenance import provenance

__all__ = ["FORMATS", "backbone_metadata", "export"]


FORMATS = ("ctrlaug", "torchvision")


def _source(ckpt: str | None) -> dict:
    """Where the weights come from: checkpoint, run folder, step, and the run's recorded commit
    (``provenance.json`` of the run folder, when the run wrote one)."""
    if not ckpt:
        return {"checkpoint": None, "run": None, "step": None, "git_commit": None, "git_dirty": None}
    run = os.path.dirname(os.path.abspath(ckpt))
    m = re.search(r"ckpt_(\d+)\.pt$", ckpt)
    src = {
        "checkpoint": os.path.abspath(ckpt),
        "run": run,
        "step": int(m.group(1)) if m else None,
        "git_commit": None,
        "git_dirty": None,
    }
    try:
        with open(os.path.join(run, "provenance.json")) as f:
            prov = json.load(f)
        src["git_commit"], src["git_dirty"] = prov.get("git_commit"), prov.get("git_dirty")
        src["ctrlaug_version"] = prov.get("ctrlaug_version")
    except (OSError, ValueError, AttributeError):
        pass  # a run of an older version: no record of its commit
    return src


def backbone_metadata(encoder, cfg, ckpt: str | None) -> dict:
    """The metadata of an exported encoder built from ``cfg`` (see :mod:`ctrlaug.models.backbone`)."""

    a = cfg.augment
    clip = (a.clip_frames, a.size, a.size)
    glob = (a.global_frames, a.size, a.size)
    return {
        "arch": cfg.model.arch,
        "depth": encoder.depth,
        "width": cfg.model.width,
        "spatial_stride1_stages": list(cfg.model.spatial_stride1_stages),
        "out_channels": encoder.out_channels,
        "input": {
            "layout": "N, 3, T, H, W (RGB)",
            "range": "[0, 1] (uint8 / 255), then (x - mean) / std per channel",
            "mean": list(INPUT_MEAN),
            "std": list(INPUT_STD),
        },
        "clip": {
            "frames": a.clip_frames,
            "size": a.size,
            "eval_crop": a.eval_crop,
            "feature_grid": list(encoder.output_grid(clip)),
        },
        "global_view": {
            "frames": a.global_frames,
            "size": a.size,
            "stride1_stages": list(cfg.model.global_stride1_stages),
            "feature_grid": list(encoder.output_grid(glob, cfg.model.global_stride1_stages)),
        },
        "feature": "global average pool of the last feature map (ctrlaug.models.pool)",
        "source": {**_source(ckpt), "config": config_to_dict(cfg)},
        "exported_by": provenance(),
    }


def export(checkpoint: str, out: str, fmt: str = "ctrlaug", config: str | None = None) -> dict:
    """Export the encoder of ``checkpoint`` (file or run folder) to ``out``; returns the metadata.
    Bad input raises :class:`ctrlaug.errors.EvalError`."""
    if fmt not in FORMATS:
        raise EvalError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    enc, cfg, ckpt = load_encoder(checkpoint, config)
    meta = backbone_metadata(enc, cfg, ckpt)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    if fmt == "ctrlaug":
        save_backbone(enc, tmp, meta)
    else:
        try:
            check_torchvision_compatible(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
        except ValueError as e:
            raise EvalError(f"{ckpt}: {e}") from None
        import torch

        meta["format"] = "torchvision VideoResNet, Hara stem (ctrlaug.models.build_torchvision_r3d18)"
        sd = torchvision_state_dict({k: v.detach().cpu() for k, v in enc.state_dict().items()})
        torch.save(sd, tmp)
        write_json(out + ".json", meta)
    os.replace(tmp, out)
    return meta
