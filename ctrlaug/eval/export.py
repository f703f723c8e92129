"""Export the encoder of a pretraining run for use elsewhere (``python -m ctrlaug.export``).

* ``ctrlaug`` (default): the backbone-only file of :mod:`ctrlaug.models.backbone` (state dict +
  metadata: arch, width, spatial_stride1_stages, input normalisation, clip geometry, feature
  grid, source run, step and commit), readable with ``torch.load(OUT, weights_only=True)``;
  ``ctrlaug.models.load_backbone(OUT)`` rebuilds the encoder.
* ``safetensors``: the same backbone (ctrlaug keys) as a safetensors file, the metadata as JSON in
  its header; ``load_backbone`` reads it too (needs ``pip install safetensors``).
* ``torchvision``: a plain state dict under the keys of torchvision's ``VideoResNet``: for
  ``model.arch=r3d18_tv`` exactly the state dict of stock ``torchvision.models.video.r3d_18()``
  (``strict=True``); for the default ``r3d18`` (Hara's stem) that of
  ``ctrlaug.models.build_torchvision_r3d18``; width 1 and Hara's spatial strides only. The metadata
  goes beside it as ``OUT.json``.
* ``mmaction2``: ``{"state_dict": {"backbone.<key>": ...}, "meta": {...}}`` under the keys of
  MMAction2's ``ResNet3d`` (``r3d18_tv`` / ``r3d34_tv`` at width 1); the ``ResNet3d`` config that
  matches is in ``meta["mmaction2_backbone"]`` and beside it as ``OUT.json``.

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
from ctrlaug.models.backbone import (
    check_mmaction2_compatible,
    check_torchvision_compatible,
    import_safetensors,
    mmaction2_backbone_config,
    mmaction2_state_dict,
    safetensors_bytes,
    save_backbone,
    torchvision_state_dict,
)
from ctrlaug.reports import write_json
from ctrlaug.utils.atomic import atomic_open, atomic_write
from ctrlaug.utils.provenance import provenance
from ctrlaug.utils.safeio import check_output

__all__ = ["FORMATS", "backbone_metadata", "export"]


FORMATS = ("ctrlaug", "safetensors", "torchvision", "mmaction2")


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
        "stem": encoder.stem,
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
    Bad input raises :class:`ctrlaug.errors.EvalError` (an unwritable ``out``:
    :class:`ctrlaug.errors.OutputError`), before anything is loaded or written."""
    if fmt not in FORMATS:
        raise EvalError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_output(out, "export")
    if fmt in ("torchvision", "mmaction2"):
        check_output(out + ".json", "export metadata")
    if fmt == "safetensors":
        import_safetensors()  # the missing package is one line, before any work
    enc, cfg, ckpt = load_encoder(checkpoint, config)
    meta = backbone_metadata(enc, cfg, ckpt)
    m = cfg.model
    try:
        if fmt == "torchvision":
            check_torchvision_compatible(m.arch, m.width, m.spatial_stride1_stages)
        elif fmt == "mmaction2":
            check_mmaction2_compatible(m.arch, m.width, m.spatial_stride1_stages)
    except ValueError as e:
        raise EvalError(f"{ckpt}: {e}") from None
    if fmt == "ctrlaug":
        save_backbone(enc, out, meta)
        return meta
    if fmt == "safetensors":
        atomic_write(out, safetensors_bytes(enc, meta))
        return meta
    import torch

    sd = {k: v.detach().cpu().clone() for k, v in enc.state_dict().items()}
    if fmt == "torchvision":
        meta["format"] = (
            "torchvision.models.video.r3d_18() state dict (strict)"
            if m.arch == "r3d18_tv"
            else f"torchvision VideoResNet state dict (ctrlaug.models.build_torchvision_video_resnet({m.arch!r}))"
        )
        payload = torchvision_state_dict(sd)
    else:
        meta["format"] = "MMAction2 ResNet3d backbone under the recognizer's 'backbone.' prefix"
        meta["mmaction2_backbone"] = mmaction2_backbone_config(m.arch)
        payload = {"state_dict": mmaction2_state_dict(sd), "meta": _mm_meta(meta)}
    with atomic_open(out, "wb") as f:
        torch.save(payload, f)
    write_json(out + ".json", meta)
    return meta


def _mm_meta(meta: dict) -> dict:
    """The small, plain part of the metadata that goes inside the MMAction2 checkpoint's ``meta``."""
    src = meta["source"]
    return {
        "ctrlaug_arch": meta["arch"],
        "mmaction2_backbone": meta["mmaction2_backbone"],
        "input_mean": [v * 255 for v in meta["input"]["mean"]],
        "input_std": [v * 255 for v in meta["input"]["std"]],
        "source_checkpoint": src["checkpoint"],
        "source_step": src["step"],
        "source_git_commit": src["git_commit"],
    }
