"""Clips of the shapes benchmark as the diagnostics see them, and the encoder passes over them.

The evaluation clip of a rendered video and its object masks (:func:`centre_clip`), its time
reversal, rendering a range of videos of a split (:func:`render_clips`), pooled features and
activation maps of an encoder (:func:`encode`), and which benchmark and how many videos a config
gives (:func:`shapes_of`, :func:`pick_videos`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from ctrlaug.augment import AugmentConfig, apply_views, sample_eval_views
from ctrlaug.data.shapes import ShapesConfig, render_shapes
from ctrlaug.errors import EvalError
from ctrlaug.models import normalize_input, pool

__all__ = [
    "centre_clip",
    "reverse_clip",
    "render_clips",
    "encode",
    "shapes_of",
    "pick_videos",
    "stack_factors",
]


def centre_clip(
    videos: np.ndarray, masks: np.ndarray, aug: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation clips of rendered videos and their object masks.

    ``clip_frames`` frames from the middle of each video, centre square crop (``eval_crop``)
    resized to ``aug.size`` by :func:`~ctrlaug.augment.apply_views`, as the evaluation datasets
    cut them. videos: uint8 [B, T, H, W, 3]; masks: bool [B, T, H, W]. Returns (uint8
    [B, 3, F, S, S], float [B, F, S, S] object coverage of each pixel in [0, 1]).
    """
    B, T, H, W = videos.shape[:4]
    v = sample_eval_views(T, H, W, cfg=dataclasses.replace(aug, eval_clips=1))
    idx, box = v.clip_frames.expand(B, -1, -1), v.clip_boxes.expand(B, -1, -1)
    clips = apply_views(torch.from_numpy(videos), idx, box, aug.size)[:, 0]
    m = torch.from_numpy(masks).float()[..., None]
    return clips, apply_views(m, idx, box, aug.size)[:, 0, 0].clamp(0, 1)


def reverse_clip(clips: torch.Tensor) -> torch.Tensor:
    """The same clips [B, C, F, H, W] played backwards: frame f becomes frame F - 1 - f."""
    return clips.flip(2)


def render_clips(shapes: ShapesConfig, split: str, indices, aug: AugmentConfig):
    """Centre clips (uint8 [B, 3, F, S, S]), object coverage [B, F, S, S] and factor dicts."""
    rendered = [render_shapes(shapes, split, i) for i in indices]
    clips, cover = centre_clip(np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]), aug)
    return clips, cover, [r[2] for r in rendered]


@torch.no_grad()
def encode(encoder: nn.Module, x: torch.Tensor, dev: torch.device, batch: int, maps: bool = False):
    """float [N, 3, F, S, S] in [0, 1] -> pooled [N, C] on the CPU, and with ``maps`` also the
    CAAMs [N, T', H', W']."""
    feats, cams = [], []
    for i in range(0, len(x), batch):
        fmap = encoder(normalize_input(x[i : i + batch].to(dev))).float()
        feats.append(pool(fmap).cpu())
        if maps:
            cams.append(fmap.mean(1).cpu())
    return (torch.cat(feats), torch.cat(cams)) if maps else torch.cat(feats)


def shapes_of(cfg) -> tuple[ShapesConfig, str | None]:
    shapes = getattr(cfg, "shapes", None) or ShapesConfig()
    if getattr(cfg, "dataset", "shapes") == "shapes":
        return shapes, None
    return shapes, (
        f"the config's dataset is {cfg.dataset!r}: diagnosed on the shapes benchmark "
        f"(its shapes settings) at the config's clip geometry"
    )


def pick_videos(shapes: ShapesConfig, split: str, videos: int) -> int:
    try:
        n = min(int(videos), shapes.split_size(split))
    except ValueError as e:
        raise EvalError(f"diagnose: {e}") from None
    if n < 4:
        raise EvalError(f"diagnose needs >= 4 videos; shapes {split} split gives {n} (videos={videos})")
    return n


def stack_factors(factors: list[dict[str, int]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([f[k] for f in factors], dtype=torch.int64) for k in factors[0]}
