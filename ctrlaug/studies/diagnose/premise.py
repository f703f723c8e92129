"""The premise of L_mi, measured without a network: do the views of one tau_l level share
low-level statistics? A hand-made low-level description of clips (:func:`lowlevel_descriptor`)
and the level probe on it (:func:`level_premise`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ctrlaug.augment import low_level_augment, rgb_to_hsv, sample_level_params
from ctrlaug.models import to_unit
from ctrlaug.studies.diagnose.clips import pick_videos, render_clips, shapes_of
from ctrlaug.studies.diagnose.probes import LEVEL_COMPONENTS, level_decodability, video_split
from ctrlaug.utils.threads import one_thread

__all__ = ["lowlevel_descriptor", "level_premise"]


def lowlevel_descriptor(x: torch.Tensor) -> torch.Tensor:
    """A purely low-level, hand-made description of clips: float [N, 3, F, H, W] in [0, 1] ->
    float [N, 11]: per-channel mean and standard deviation (6), mean and standard deviation of the
    HSV saturation (2), the circular mean of the hue weighted by saturation (cos, sin: 2) and the
    gradient energy (mean |dx| + |dy| of the grey image: 1). No learning: what a low-level
    shortcut can see without any semantics."""
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"lowlevel_descriptor: clips [N, 3, F, H, W] expected, got {tuple(x.shape)}")
    x = x.float()
    flat = x.flatten(2)
    hsv = rgb_to_hsv(x, dim=1).flatten(2)
    hue, sat = hsv[:, 0] * (2 * math.pi), hsv[:, 1]
    w = sat / sat.sum(1, keepdim=True).clamp_min(1e-6)
    grey = x.mean(1)
    grad = (grey.diff(dim=-1).abs().mean((1, 2, 3)) + grey.diff(dim=-2).abs().mean((1, 2, 3)))[:, None]
    return torch.cat(
        [
            flat.mean(2),
            flat.std(2),
            sat.mean(1, keepdim=True),
            sat.std(1, keepdim=True),
            (w * hue.cos()).sum(1, keepdim=True),
            (w * hue.sin()).sum(1, keepdim=True),
            grad,
        ],
        1,
    )


def level_premise(
    cfg, *, videos: int = 256, levels: int = 4, split: str = "val", seed: int = 0, probe_epochs: int = 200
) -> dict:
    """Do views of one tau_l level share low-level statistics (the premise of L_mi, paper §3.2)?

    Each centre clip of ``videos`` videos of the shapes benchmark's ``split`` is rendered at
    ``levels`` random levels of ``cfg.augment`` (parameters drawn inside each level, as in
    training), and a linear probe reads every level component from :func:`lowlevel_descriptor` of
    the augmented views (train / test halves by video). No encoder is involved: this measures the
    level *definition* (``augment.signed_levels``), not a network. Returns ``{component: {top1,
    train_top1, chance}}`` plus ``mean_top1``/``mean_chance`` and the setting (%, chance = majority
    bin). Near chance means a level does not fix the low-level statistics of its views.
    """
    aug = cfg.augment
    shapes, _ = shapes_of(cfg)
    n = pick_videos(shapes, split, videos)
    g = torch.Generator().manual_seed(seed)
    lev = torch.randint(aug.num_levels, (n, levels), generator=g)
    params = sample_level_params(lev.flatten(), aug, generator=g)
    desc = []
    for i0 in range(0, n, 32):
        clips, _, _ = render_clips(shapes, split, range(i0, min(n, i0 + 32)), aug)
        x = to_unit(clips)
        B = len(x)
        p = params.select(slice(i0 * levels, (i0 + B) * levels))
        xv = low_level_augment(x.repeat_interleave(levels, 0), p, max_kernel=aug.max_blur_kernel)
        desc.append(lowlevel_descriptor(xv).view(B, levels, -1))
    feats = torch.cat(desc)
    half = video_split(n, seed)
    mu, sd = feats[half].flatten(0, 1).mean(0), feats[half].flatten(0, 1).std(0).clamp_min(1e-8)
    with one_thread():
        res = level_decodability((feats - mu) / sd, lev, half, aug, epochs=probe_epochs, seed=seed)
    res["mean_top1"] = float(np.mean([res[k]["top1"] for k in LEVEL_COMPONENTS]))
    res["mean_chance"] = float(np.mean([res[k]["chance"] for k in LEVEL_COMPONENTS]))
    res.update(
        split=split, videos=n, levels_per_video=levels, signed_levels=bool(aug.signed_levels), seed=seed
    )
    return res
