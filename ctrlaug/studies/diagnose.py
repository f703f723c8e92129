"""Mechanism diagnostics: each claim of the paper measured directly on the shapes benchmark.

``python -m ctrlaug.diagnose RUN_OR_CKPT [--random-init] [--out DIR] [--videos N] [--device D]``
loads the encoder of a pretraining checkpoint (or a run folder's newest one; ``--random-init``
keeps the freshly initialised encoder of the same config), renders held-out videos of the
factorised shapes benchmark (:mod:`ctrlaug.data.shapes`, the config's ``shapes`` settings and
``eval.split``) and writes ``<out>/diagnose.json`` and ``diagnose.md`` (``diagnose_random.*``
for ``--random-init``; default out: the run folder). A config whose dataset is not ``shapes`` is
diagnosed on the shapes benchmark at its own clip geometry, and the output says so. A bad path
prints one ``error:`` line and exits with code 2. docs/diagnostics.md explains how to read it.

Every held-out video gives one clip: ``clip_frames`` frames from the middle of the video (frame
step ``clip_step``), the centre square crop of the evaluation views (``eval_crop``) resized to
``augment.size``, exactly as the evaluation datasets cut it; the object masks are cut the same
way. Features are the encoder's pooled last feature map (eval mode, BN running statistics).
The held-out videos are split in two halves by video (a seeded permutation), never by view:
the probes of 1 and 2 train on one half and are tested on the other.

1. **Level decodability** (L_mi removes low-level shortcuts, paper §3.2). Each clip is rendered
   at ``levels`` intensity levels of tau_l drawn uniformly from all levels of the config's
   ``augment`` (same content, only the level differs; parameters drawn inside each level as in
   training, :func:`~ctrlaug.augment.sample_level_params`). One linear probe per level component:
   the brightness, contrast and saturation bins, the hue bin and the blur combination, the exact
   labels the L_mi discriminator is trained on (bins of the *strength* ``|factor - 1|`` unless
   ``augment.signed_levels``). The joint level (512 classes) is not probed: far too many classes
   for a few hundred views. Lower is what L_mi aims for; chance is the majority-bin rate.
2. **Arrow of time** (L_td captures temporal order, §3.3). Every clip and its time reversal (the
   same frames in the opposite order). The shapes benchmark's motion is time-symmetric in
   distribution (a reversed ``right`` video is a ``left`` video), so "forward vs reversed" is
   undecidable there; the binary label is therefore the direction of the *displayed* motion along
   its axis (right or down = 1, left or up = 0), which flips under reversal. Both classes hold
   exactly the same frames, so an encoder blind to frame order scores exactly 50%.
3. **Foreground focus** (region contrast attends to the moving object, Fig. 3). CAAM = channel
   mean of the last feature map [T', H', W'] of the unaugmented clip (non-negative: the network
   ends in a ReLU). The clip's object masks are downsampled *to the feature grid by area* (the
   fraction of each cell covered by the object), and focus = (share of CAAM energy inside the
   object) / (object's area share); 1 = no preference, > 1 = attends to the object. This is
   exact for what the map resolves (upsampling the map adds no information); note the grid is
   coarse at CPU sizes (2 x 2 cells for a 48 px clip), which the JSON records.
4. **Factors**: one linear probe per factor (:func:`ctrlaug.eval.linear.fit_factor_probes`) and the
   weighted kNN (:func:`ctrlaug.eval.metrics.knn_top1`, k=20, t=0.07), trained on the unaugmented
   centre clips of ``videos`` videos of the config's train split, tested on the held-out clips
   (one clip per video, so lower than the demo's 10-clip probe).

Cost: 6 forward passes per held-out video with the default 4 levels, plus one per train video.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug import reports
from ctrlaug.augment import (
    AugmentConfig,
    apply_views,
    level_components,
    low_level_augment,
    rgb_to_hsv,
    sample_eval_views,
    sample_level_params,
)
from ctrlaug.data.shapes import MOTIONS, ShapesConfig, render_shapes
from ctrlaug.errors import EvalError
from ctrlaug.eval.encoder import load_encoder, resolve_device
from ctrlaug.eval.floor import FLOOR_INITS, mean_spread
from ctrlaug.eval.linear import fit_factor_probes
from ctrlaug.eval.metrics import knn_top1
from ctrlaug.models import normalize_input, pool, to_unit
from ctrlaug.reports import write_json
from ctrlaug.utils.progress import Progress
from ctrlaug.utils.provenance import provenance
from ctrlaug.utils.safeio import check_output_dir
from ctrlaug.utils.threads import one_thread

__all__ = [
    "LEVEL_COMPONENTS",
    "shuffled_pairing",
    "lowlevel_descriptor",
    "level_premise",
    "centre_clip",
    "reverse_clip",
    "video_split",
    "level_decodability",
    "applied_decodability",
    "write_report",
    "quantile_bins",
    "reversal_decodability",
    "masks_to_grid",
    "focus_ratio",
    "focus_rank",
    "diagnose",
]

LEVEL_COMPONENTS = ("brightness", "contrast", "saturation", "hue", "blur")  # level_components order
APPLIED = ("brightness", "contrast", "saturation", "hue", "blur_sigma")  # LowLevelParams fields
APPLIED_BINS = 4
_POSITIVE_MOTIONS = ("right", "down")  # displayed-direction label 1; their time reverses get 0


# ------------------------------------------------------------------------------------------------
# measurements on features, maps and masks


def video_split(num_videos: int, seed: int = 0) -> torch.Tensor:
    """Bool [N] train mask: a seeded half of the videos (the first ``N // 2`` of a permutation)."""
    if num_videos < 4:
        raise ValueError(f"video_split needs at least 4 videos, got {num_videos}")
    g = torch.Generator().manual_seed(seed)
    train = torch.zeros(num_videos, dtype=torch.bool)
    train[torch.randperm(num_videos, generator=g)[: num_videos // 2]] = True
    return train


def level_decodability(
    feats: torch.Tensor,
    levels: torch.Tensor,
    train: torch.Tensor,
    aug: AugmentConfig | None = None,
    *,
    epochs: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Linear decodability of every tau_l level component from view features.

    Args:
        feats: float [N videos, V views, C]; levels: int64 [N, V] level ids of the views.
        train: bool [N]: videos whose views train the probes; the others test them.
        aug: the level definition (bin counts); default :class:`AugmentConfig`.

    Returns ``{component: {"top1", "train_top1", "chance"}}`` (%) for :data:`LEVEL_COMPONENTS`,
    chance = the test views' majority-bin rate.
    """
    aug = aug or AugmentConfig()
    if feats.dim() != 3 or levels.shape != feats.shape[:2] or train.shape != feats.shape[:1]:
        raise ValueError(
            f"level_decodability: feats [N, V, C], levels [N, V], train [N] expected, got "
            f"{tuple(feats.shape)}, {tuple(levels.shape)}, {tuple(train.shape)}"
        )
    comps = dict(zip(LEVEL_COMPONENTS, level_components(levels, aug)))
    counts = dict(zip(LEVEL_COMPONENTS, aug.level_counts))
    tr, te = train.bool(), ~train.bool()
    return fit_factor_probes(
        feats[tr].flatten(0, 1),
        {k: v[tr].flatten() for k, v in comps.items()},
        feats[te].flatten(0, 1),
        {k: v[te].flatten() for k, v in comps.items()},
        counts,
        epochs=epochs,
        seed=seed,
    )


def quantile_bins(values: torch.Tensor, bins: int = APPLIED_BINS) -> torch.Tensor:
    """int64 bin of every value among ``bins`` equal-count bins of ``values`` (ties share a bin)."""
    edges = torch.quantile(
        values.double().flatten(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    )
    return torch.bucketize(values.double(), edges, right=True).to(torch.int64)


def applied_decodability(
    feats: torch.Tensor,
    params,
    train: torch.Tensor,
    *,
    bins: int = APPLIED_BINS,
    epochs: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Linear decodability of the low-level transform *actually applied* to every view.

    The L_mi labels (:func:`level_decodability`) bin the unsigned strength, which a linear probe
    cannot read (brighter and darker share a bin). Here each applied value of
    :class:`~ctrlaug.augment.LowLevelParams` (signed brightness, contrast and saturation factors,
    the signed hue shift, the blur sigma) is cut into ``bins`` equal-count bins over the held-out
    views: what a low-level shortcut could use. feats float [N, V, C]; params fields [N * V];
    train bool [N]. Returns ``{field: {"top1", "train_top1", "chance"}}`` (%).
    """
    N, V = feats.shape[:2]
    labels = {k: quantile_bins(getattr(params, k).reshape(N, V), bins) for k in APPLIED}
    tr, te = train.bool(), ~train.bool()
    return fit_factor_probes(
        feats[tr].flatten(0, 1),
        {k: v[tr].flatten() for k, v in labels.items()},
        feats[te].flatten(0, 1),
        {k: v[te].flatten() for k, v in labels.items()},
        dict.fromkeys(APPLIED, bins),
        epochs=epochs,
        seed=seed,
    )


def reversal_decodability(
    first: torch.Tensor,
    second: torch.Tensor,
    first_label: torch.Tensor,
    train: torch.Tensor,
    *,
    epochs: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Binary linear decodability of temporal order from pairs of clips with the same frames.

    Args:
        first: float [N, C] features of the clips; second: float [N, C] of the same clips reversed
            in time (the same frames, opposite order).
        first_label: int [N] in {0, 1}: the order class of each first clip; its reversal carries
            ``1 - first_label``.
        train: bool [N]: pairs that train the probe (both members); the others test it.

    Returns ``{"top1", "train_top1", "chance"}`` (%): chance is 50 (every test pair holds both
    classes), and features that ignore frame order score exactly 50.
    """
    if first.shape != second.shape or first.dim() != 2 or first_label.shape != first.shape[:1]:
        raise ValueError(
            f"reversal_decodability: first, second [N, C] and first_label [N] expected, got "
            f"{tuple(first.shape)}, {tuple(second.shape)}, {tuple(first_label.shape)}"
        )
    y = first_label.long()
    if ((y != 0) & (y != 1)).any():
        raise ValueError("reversal_decodability: first_label must be 0 or 1")
    tr, te = train.bool(), ~train.bool()

    def pairs(m):
        return torch.cat([first[m], second[m]]), {"order": torch.cat([y[m], 1 - y[m]])}

    (xtr, ytr), (xte, yte) = pairs(tr), pairs(te)
    return fit_factor_probes(xtr, ytr, xte, yte, {"order": 2}, epochs=epochs, seed=seed)["order"]


def shuffled_pairing(n: int, seed: int = 0) -> torch.Tensor:
    """int64 [n]: a seeded permutation with no fixed point (clip i is paired with another clip's
    mask), the shuffled-mask control of the focus ratio. n >= 2."""
    if n < 2:
        raise ValueError(f"shuffled_pairing needs at least 2 clips, got {n}")
    g = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(n, generator=g)
    out = torch.empty(n, dtype=torch.int64)
    out[perm] = perm.roll(1)  # a single cycle through a random order: never i -> i
    return out


def masks_to_grid(masks: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Object masks [N, F, S, S] (bool or fractions) -> the fraction of each cell of the feature
    grid [N, T', H', W'] that the object covers (area average; exact when the grid divides)."""
    return F.adaptive_avg_pool3d(masks.float()[:, None], tuple(int(g) for g in grid))[:, 0]


def focus_ratio(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Foreground focus of activation maps, per clip.

    Args:
        maps: float [N, ...] non-negative activation maps (negative values are clipped to 0).
        masks: float [N, ...] of the same shape: the object's coverage of each cell, in [0, 1].

    Returns ``{"ratio", "inside", "area"}``, float [N] each: ``inside`` = share of the map's energy
    on the object (coverage-weighted), ``area`` = the object's share of the cells, ``ratio`` =
    inside / area (1 = no preference, > 1 = on the object, < 1 = off it); NaN where the map is
    all zero or the object is absent.
    """
    if maps.shape != masks.shape or maps.dim() < 2:
        raise ValueError(
            f"focus_ratio: maps and masks must have the same [N, ...] shape, got "
            f"{tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    m = maps.float().clamp_min(0).flatten(1)
    a = masks.float().flatten(1)
    energy, area = m.sum(1), a.mean(1)
    inside = (m * a).sum(1) / energy.where(energy > 0, torch.ones_like(energy))
    ratio = inside / area.where(area > 0, torch.ones_like(area))
    bad = (energy <= 0) | (area <= 0)
    nan = torch.full_like(ratio, math.nan)
    return {"ratio": ratio.where(~bad, nan), "inside": inside.where(~bad, nan), "area": area}


#: Relative tolerance under which two focus ratios of one map count as a tie in :func:`focus_rank`.
RANK_TIE_RTOL = 1e-9


def focus_rank(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Peak-independent foreground focus, per clip: the *focus rank*.

    For clip i (map M_i, object coverage c_i), the fraction of the OTHER clips' masks c_j (j != i)
    under which the focus ratio r(M_i, c_j) (:func:`focus_ratio`: energy share per unit of mask
    area) is below r(M_i, c_i); ties (relative difference <= :data:`RANK_TIE_RTOL`) count one half.
    0.5 = no preference for the object's region, 1 = it carries more energy per area than every
    other object-shaped region. It depends on the order of the map's regions, not on how peaked
    the map is. Masks c_j with no area are left out of clip i's comparison.

    Args:
        maps: float [N, ...] non-negative maps (negatives clipped to 0), N >= 2.
        masks: float [N, ...] of the same shape, the objects' coverage of each cell in [0, 1].

    Returns float [N]: NaN where r(M_i, c_i) is not finite (all-zero map, empty own mask) or no
    other mask has an area. All N x N ratios at once, in float64.
    """
    if maps.shape != masks.shape or maps.dim() < 2:
        raise ValueError(
            f"focus_rank: maps and masks must have the same [N, ...] shape, got "
            f"{tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    n = maps.shape[0]
    if n < 2:
        raise ValueError(f"focus_rank needs at least 2 clips, got {n}")
    m = maps.double().clamp_min(0).flatten(1)
    a = masks.double().flatten(1)
    energy, area = m.sum(1), a.mean(1)  # [N] per map, [N] per mask
    share = (m @ a.T) / energy.where(energy > 0, torch.ones_like(energy))[:, None]  # [i, j]
    r = share / area.where(area > 0, torch.ones_like(area))[None, :]
    usable = (energy > 0)[:, None] & (area > 0)[None, :]
    own = r.diagonal()
    other = usable & ~torch.eye(n, dtype=torch.bool)
    tie = (r - own[:, None]).abs() <= RANK_TIE_RTOL * torch.maximum(r.abs(), own.abs()[:, None])
    score = torch.where(tie, 0.5, (r < own[:, None]).double()) * other
    count = other.sum(1)
    rank = score.sum(1) / count.clamp_min(1)
    ok = usable.diagonal() & (count > 0)
    return rank.where(ok, torch.full_like(rank, math.nan)).float()


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
    shapes, _ = _shapes_of(cfg)
    n = _pick(shapes, split, videos)
    g = torch.Generator().manual_seed(seed)
    lev = torch.randint(aug.num_levels, (n, levels), generator=g)
    params = sample_level_params(lev.flatten(), aug, generator=g)
    desc = []
    for i0 in range(0, n, 32):
        clips, _, _ = _render(shapes, split, range(i0, min(n, i0 + 32)), aug)
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


# ------------------------------------------------------------------------------------------------
# clips of the benchmark and encoder passes


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


def _render(shapes: ShapesConfig, split: str, indices, aug: AugmentConfig):
    """Centre clips (uint8 [B, 3, F, S, S]), object coverage [B, F, S, S] and factor dicts."""
    rendered = [render_shapes(shapes, split, i) for i in indices]
    clips, cover = centre_clip(np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]), aug)
    return clips, cover, [r[2] for r in rendered]


@torch.no_grad()
def _encode(encoder: nn.Module, x: torch.Tensor, dev: torch.device, batch: int, maps: bool = False):
    """float [N, 3, F, S, S] in [0, 1] -> pooled [N, C] on the CPU, and with ``maps`` also the
    CAAMs [N, T', H', W']."""
    feats, cams = [], []
    for i in range(0, len(x), batch):
        fmap = encoder(normalize_input(x[i : i + batch].to(dev))).float()
        feats.append(pool(fmap).cpu())
        if maps:
            cams.append(fmap.mean(1).cpu())
    return (torch.cat(feats), torch.cat(cams)) if maps else torch.cat(feats)


def _shapes_of(cfg) -> tuple[ShapesConfig, str | None]:
    shapes = getattr(cfg, "shapes", None) or ShapesConfig()
    if getattr(cfg, "dataset", "shapes") == "shapes":
        return shapes, None
    return shapes, (
        f"the config's dataset is {cfg.dataset!r}: diagnosed on the shapes benchmark "
        f"(its shapes settings) at the config's clip geometry"
    )


def _pick(shapes: ShapesConfig, split: str, videos: int) -> int:
    try:
        n = min(int(videos), shapes.split_size(split))
    except ValueError as e:
        raise EvalError(f"diagnose: {e}") from None
    if n < 4:
        raise EvalError(f"diagnose needs >= 4 videos; shapes {split} split gives {n} (videos={videos})")
    return n


def diagnose(
    encoder: nn.Module,
    cfg,
    *,
    videos: int = 256,
    levels: int = 4,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    probe_epochs: int = 200,
    log=None,
    progress: bool = False,
) -> dict:
    """Run the four measurements of this module on ``encoder`` (see the module docstring).

    Args:
        encoder: R3D returning the last feature map; evaluated in eval mode (restored after),
            moved to ``device`` when given (default: where it is).
        cfg: a :class:`~ctrlaug.config.TrainConfig` (``augment``, ``shapes``, ``split``,
            ``eval.split``, ``dataset`` are read).
        videos: held-out videos of ``eval.split`` (and train videos of ``split`` for the
            factor probes), cut to the split sizes.
        levels: tau_l levels per held-out clip for the level probe.
        seed: level draws, the video halves and the probes.
        progress: show progress bars of the two feature passes on stderr.

    Returns a JSON-able dict: ``level`` ({component: {top1, train_top1, chance}} plus
    ``mean_top1``/``mean_chance``), ``arrow`` ({top1, train_top1, chance}), ``focus`` ({ratio,
    ratio_std, inside, area, clips, grid, control, rank, rank_std}), ``factors`` ({factor: {linear, linear_train, knn,
    chance}}), the setting and ``seconds``. Accuracies and shares are in %.
    """
    t0 = time.perf_counter()
    if levels < 1:
        raise EvalError(f"diagnose: levels must be >= 1, got {levels}")
    dev = torch.device(device) if device is not None else next(encoder.parameters()).device
    encoder.to(dev)
    aug = cfg.augment
    shapes, note = _shapes_of(cfg)
    test_split, train_split = cfg.eval.split, cfg.split
    n_te, n_tr = _pick(shapes, test_split, videos), _pick(shapes, train_split, videos)
    g = torch.Generator().manual_seed(seed)
    lev = torch.randint(aug.num_levels, (n_te, levels), generator=g)
    params = sample_level_params(lev.flatten(), aug, generator=g)
    was = encoder.training
    encoder.eval()
    try:
        bar = Progress(n_te, "diagnose held-out", unit="videos", enabled=progress)
        te = _held_out(encoder, shapes, test_split, n_te, aug, params, levels, dev, batch_size, bar)
        bar.close()
        bar = Progress(n_tr, "diagnose train", unit="videos", enabled=progress)
        tr_x, tr_y = _train_clips(encoder, shapes, train_split, n_tr, aug, dev, batch_size, bar)
        bar.close()
    finally:
        encoder.train(was)
    half = video_split(n_te, seed)
    with one_thread():
        level, arrow, factors = _probes(te, lev, params, half, tr_x, tr_y, aug, shapes, probe_epochs, seed)
    grid = tuple(te["maps"].shape[1:])
    cover = masks_to_grid(te["masks"], grid)
    foc = focus_ratio(te["maps"], cover)
    ok = torch.isfinite(foc["ratio"])
    ctrl = focus_ratio(te["maps"], cover[shuffled_pairing(len(cover), seed)])["ratio"]
    ctrl = ctrl[torch.isfinite(ctrl)]
    rank = focus_rank(te["maps"], cover) if len(cover) > 1 else torch.full((len(cover),), math.nan)
    rank = rank[torch.isfinite(rank)]
    res = {
        "benchmark": "shapes",
        "config_dataset": getattr(cfg, "dataset", "shapes"),
        "note": note,
        "test_split": test_split,
        "train_split": train_split,
        "videos": n_te,
        "train_videos": n_tr,
        "levels_per_video": levels,
        "clip": [aug.clip_frames, aug.size, aug.size],
        "seed": seed,
        "device": str(dev),
        "primary": "shape",
        "level": level,
        "arrow": arrow,
        "focus": {
            "ratio": float(foc["ratio"][ok].mean()) if ok.any() else None,  # None: no clip had a map
            "ratio_std": float(foc["ratio"][ok].std()) if ok.sum() > 1 else None,
            "inside": float(foc["inside"][ok].mean() * 100) if ok.any() else None,
            "area": float(foc["area"].mean() * 100),
            "clips": int(ok.sum()),
            "grid": list(grid),
            # the same maps scored against another clip's object mask: what a positional prior
            # alone gives (1 when maps ignore where objects usually are)
            "control": float(ctrl.mean()) if len(ctrl) else None,
            # peak-independent: how often the object's region beats other objects' regions on
            # energy per area (0.5 = no preference, 1 = always); see focus_rank
            "rank": float(rank.mean()) if len(rank) else None,
            "rank_std": float(rank.std()) if len(rank) > 1 else None,
        },
        "factors": factors,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if log:
        log(summary_line(res))
    return res


def _probes(te, lev, params, half, tr_x, tr_y, aug, shapes, epochs, seed):
    """The level, arrow and factor probes of :func:`diagnose` on extracted features."""
    level = level_decodability(te["levels"], lev, half, aug, epochs=epochs, seed=seed)
    level["mean_top1"] = float(np.mean([level[k]["top1"] for k in LEVEL_COMPONENTS]))
    level["mean_chance"] = float(np.mean([level[k]["chance"] for k in LEVEL_COMPONENTS]))
    applied = applied_decodability(te["levels"], params, half, epochs=epochs, seed=seed)
    applied["mean_top1"] = float(np.mean([applied[k]["top1"] for k in APPLIED]))
    applied["mean_chance"] = float(np.mean([applied[k]["chance"] for k in APPLIED]))
    level["applied"] = applied
    positive = torch.tensor([MOTIONS[m] in _POSITIVE_MOTIONS for m in te["factors"]["motion"].tolist()])
    arrow = reversal_decodability(te["fwd"], te["rev"], positive.long(), half, epochs=epochs, seed=seed)
    num_classes = {k: len(v) for k, v in shapes.factor_values.items()}
    lin = fit_factor_probes(tr_x, tr_y, te["fwd"], te["factors"], num_classes, epochs=epochs, seed=seed)
    factors = {
        k: {
            "linear": lin[k]["top1"],
            "linear_train": lin[k]["train_top1"],
            "knn": knn_top1(tr_x, tr_y[k], te["fwd"], te["factors"][k], num_classes=num_classes[k]),
            "chance": lin[k]["chance"],
        }
        for k in num_classes
    }
    return level, arrow, factors


def _held_out(encoder, shapes, split, n, aug, params, levels, dev, batch, bar=None):
    """Forward, reversed and level-view features, CAAMs, masks and factors of n held-out clips."""
    out = {k: [] for k in ("fwd", "rev", "levels", "maps", "masks")}
    factors = []
    for i0 in range(0, n, batch):
        clips, cover, fac = _render(shapes, split, range(i0, min(n, i0 + batch)), aug)
        factors += fac
        x = to_unit(clips.to(dev))  # [B, 3, F, S, S]; tau_l and the reversal run on the device
        B = len(x)
        f, maps = _encode(encoder, x, dev, batch, maps=True)
        out["fwd"].append(f)
        out["maps"].append(maps)
        out["masks"].append(cover)
        out["rev"].append(_encode(encoder, reverse_clip(x), dev, batch))
        p = params.select(slice(i0 * levels, (i0 + B) * levels)).to(dev)
        xv = low_level_augment(x.repeat_interleave(levels, 0), p, max_kernel=aug.max_blur_kernel)
        out["levels"].append(_encode(encoder, xv, dev, batch).view(B, levels, -1))
        if bar:
            bar.update(B)
    res = {k: torch.cat(v) for k, v in out.items()}
    res["factors"] = _stack_factors(factors)
    return res


def _train_clips(encoder, shapes, split, n, aug, dev, batch, bar=None):
    """Pooled features [n, C] and factor labels of the centre clips of n train videos."""
    feats, factors = [], []
    for i0 in range(0, n, batch):
        clips, _, fac = _render(shapes, split, range(i0, min(n, i0 + batch)), aug)
        factors += fac
        feats.append(_encode(encoder, to_unit(clips), dev, batch))
        if bar:
            bar.update(len(clips))
    return torch.cat(feats), _stack_factors(factors)


def _stack_factors(factors: list[dict[str, int]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([f[k] for f in factors], dtype=torch.int64) for k in factors[0]}


# ------------------------------------------------------------------------------------------------
# reports and CLI


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary_line(res: dict) -> str:
    lv, fo = res["level"], res["focus"]
    return (
        f"diagnose: level {lv['mean_top1']:.1f}% (chance {lv['mean_chance']:.1f}) | applied low-level "
        f"{lv['applied']['mean_top1']:.1f}% (chance {lv['applied']['mean_chance']:.1f}) | arrow "
        f"{res['arrow']['top1']:.1f}% (chance 50) | focus {_fmt(fo['ratio'], 2)} "
        f"(shuffled-mask control {_fmt(fo.get('control'), 2)}, rank {_fmt(fo.get('rank'), 2)}) | "
        + " ".join(f"{k} {v['linear']:.1f}/{v['knn']:.1f}" for k, v in res["factors"].items())
        + f" (linear/knn %) | {res['seconds']:.1f} s"
    )


def to_markdown(res: dict) -> str:
    """The human-readable report of a :func:`diagnose` result."""
    lv, ar, fo = res["level"], res["arrow"], res["focus"]
    head = f"checkpoint: `{res.get('checkpoint')}`" + (" (random init)" if res.get("random_init") else "")
    lines = [
        "# Mechanism diagnostics",
        "",
        f"{head}; benchmark: shapes, {res['videos']} held-out videos ({res['test_split']}), "
        f"{res['train_videos']} train videos ({res['train_split']}) for the factor probes; clip "
        f"{'x'.join(map(str, res['clip']))}; {res['seconds']:.1f} s on {res['device']}.",
    ]
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    lines += [
        "",
        f"## L_mi: tau_l level decodability ({res['levels_per_video']} levels per clip; lower = fewer shortcuts)",
        "",
        "| component | test top-1 % | train top-1 % | chance % |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {lv[k]['top1']:.1f} | {lv[k]['train_top1']:.1f} | {lv[k]['chance']:.1f} |"
        for k in LEVEL_COMPONENTS
    ]
    lines += [
        f"| mean | {lv['mean_top1']:.1f} | | {lv['mean_chance']:.1f} |",
        "",
        f"Applied low-level values ({APPLIED_BINS} equal-count bins of the signed factor actually "
        "applied to each view; a linear probe can read these, unlike the unsigned L_mi bins above):",
        "",
        "| value | test top-1 % | train top-1 % | chance % |",
        "|---|---|---|---|",
        *[
            f"| {k} | {lv['applied'][k]['top1']:.1f} | {lv['applied'][k]['train_top1']:.1f} | "
            f"{lv['applied'][k]['chance']:.1f} |"
            for k in APPLIED
        ],
        f"| mean | {lv['applied']['mean_top1']:.1f} | | {lv['applied']['mean_chance']:.1f} |",
        "",
        "## L_td: arrow of time (clip vs its time reversal; higher = order-aware)",
        "",
        f"test top-1 {ar['top1']:.1f}% (train {ar['train_top1']:.1f}%, chance {ar['chance']:.1f}%)",
        "",
        "## Region contrast: CAAM focus on the moving object (1 = no preference)",
        "",
        f"focus ratio {_fmt(fo['ratio'], 3)} (std {_fmt(fo['ratio_std'], 3)} over {fo['clips']} clips); "
        f"{_fmt(fo['inside'], 1)}% of the CAAM energy on an object covering {fo['area']:.1f}% of the "
        f"{'x'.join(map(str, fo['grid']))} feature grid; shuffled-mask control (each map against "
        f"another clip's mask) {_fmt(fo.get('control'), 3)}",
        "",
        f"focus rank {_fmt(fo.get('rank'), 3)} (std {_fmt(fo.get('rank_std'), 3)}): how often the object's "
        "region carries more CAAM energy per unit of area than another clip's object region (0.5 = no "
        "preference, 1 = always; independent of how peaked the map is)",
        "",
        "## Factors (one centre clip per video)",
        "",
        "| factor | linear % | linear train % | kNN % | chance % |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k}{' (primary)' if k == res['primary'] else ''} | {v['linear']:.1f} | {v['linear_train']:.1f} "
        f"| {v['knn']:.1f} | {v['chance']:.1f} |"
        for k, v in res["factors"].items()
    ]
    if res.get("floor"):
        n = next(iter(res["floor"].values()))["n"]
        lines += [
            "",
            f"## Random-init floor over {n} inits (ctrlaug.eval.floor; the numbers above are the first)",
            "",
        ]
        lines += ["| measure | mean ± std | min-max |", "|---|---|---|"]
        for k, v in res["floor"].items():
            lines.append(f"| {k} | {v['mean']:.2f} ± {v['std']:.2f} | {v['min']:.2f}-{v['max']:.2f} |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class DiagnoseOptions:
    """One diagnostics run (the ``python -m ctrlaug.diagnose`` arguments, see :func:`build_parser`)."""

    checkpoint: str | None = None  # ckpt_*.pt file or a run folder
    random_init: bool = False  # random-init encoder of the same config
    config: str | None = None  # model/data config YAML (default: the checkpoint's own)
    set: list[str] = dataclasses.field(default_factory=list)  # KEY=VALUE config overrides
    videos: int = 256  # held-out (and train) videos, >= 4
    levels: int = 4  # tau_l levels per held-out clip
    seed: int = 0  # levels, video halves and probes
    out: str | None = None  # default: the checkpoint's run folder
    threads: int = 0  # torch CPU threads (0 = default)
    device: str = "auto"
    order: bool = False  # the L_td order study instead of the four measurements (order.json)
    progress: bool = True  # progress bars on stderr


def run(opts: DiagnoseOptions, log=print) -> dict:
    """Load the encoder named by ``opts``, diagnose it, write JSON and markdown; bad input raises
    :class:`ctrlaug.errors.EvalError`."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.videos < 4:
        raise EvalError(f"--videos must be >= 4, got {opts.videos}")
    if opts.out:  # an unwritable --out is one line before anything is loaded or computed
        check_output_dir(opts.out, "--out folder")
    device = resolve_device(opts.device)
    enc, cfg, ckpt = load_encoder(opts.checkpoint, opts.config, opts.random_init, opts.set)
    out = check_output_dir(opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir), "output folder")
    if opts.order:
        return _run_order(opts, enc, cfg, ckpt, device, log)

    def one(encoder):
        return diagnose(
            encoder,
            cfg,
            videos=opts.videos,
            levels=opts.levels,
            seed=opts.seed,
            device=device,
            progress=opts.progress,
        )

    res = {
        "checkpoint": ckpt,
        "random_init": bool(opts.random_init),
        **one(enc),
        "provenance": provenance(device),
    }
    if opts.random_init:  # the floor over FLOOR_INITS random inits (ctrlaug.eval.floor), the first above
        more = [
            one(load_encoder(opts.checkpoint, opts.config, True, opts.set, init=i)[0])
            for i in range(1, FLOOR_INITS)
        ]
        res["floor"] = floor_summary([res, *more])
    stem = write_report(res, os.path.join(out, "diagnose" + ("_random" if opts.random_init else "")))
    log(summary_line(res) + f" -> {stem}.json")
    return res


# ------------------------------------------------------------------------------------------------
# L_td: is clip order decodable from the features at all?


@torch.no_grad()
def order_features(
    obj: nn.Module,
    cfg,
    *,
    videos: int = 256,
    split: str | None = None,
    seed: int = 0,
    batch: int = 16,
    device: str | torch.device = "cpu",
    clip_space: str = "own",
) -> dict[str, torch.Tensor]:
    """Pooled features of pretraining-style views of held-out videos, as L_td sees them.

    ``obj``: a :class:`~ctrlaug.losses.CtrlAugObjective` (its encoder runs f on the K clips and f'
    on the global view); views are sampled exactly as in pretraining (tau_p of ``cfg.augment``,
    clip k's centre in the k-th segment of the video) with tau_l at seeded random levels.
    ``clip_space="global"`` is the control for the spatial crops: every clip takes the global
    view's spatial box and flip (a temporal crop only), so where the object is in the clip follows
    the video's time instead of an independent random crop.
    Returns ``{"clips": [N, K, C] in temporal order, "global": [N, C], "t_centre": [N, K]}``.
    """
    if clip_space not in ("own", "global"):
        raise ValueError(f"clip_space must be 'own' or 'global', got {clip_space!r}")
    from ctrlaug.augment import augment_batch, sample_batch_levels
    from ctrlaug.data import build_train_dataset, collate_views

    dev = torch.device(device)
    if clip_space == "global":  # crop on the device from the frames, with the boxes edited below
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, crop_in_worker=False))
    ds = build_train_dataset(cfg, split or cfg.eval.split)
    ds.set_epoch(0)
    n = min(int(videos), len(ds))
    g = torch.Generator().manual_seed(seed)
    was = obj.training
    obj.eval().to(dev)
    out = {"clips": [], "global": [], "t_centre": []}
    try:
        for i0 in range(0, n, batch):
            b = collate_views([ds[i] for i in range(i0, min(n, i0 + batch))], levels=False)
            B, V = b["boxes"].shape[:2]
            if clip_space == "global":
                boxes = b["boxes"].clone()
                boxes[:, 1:, 2:] = boxes[:, :1, 2:]  # y, x extents and flip of the global view
                b = dict(b, boxes=boxes)
            levels, params = sample_batch_levels(B, V, cfg.augment, g)
            views = normalize_input(
                augment_batch(dict(b, levels=levels, lowlevel=params), dev, cfg=cfg.augment)
            )
            fc, fg = obj.encode(views[:, 1:].flatten(0, 1), views[:, 0])
            out["clips"].append(pool(fc.float()).view(B, V - 1, -1).cpu())
            out["global"].append(pool(fg.float()).cpu())
            out["t_centre"].append(b["boxes"][:, 1:, :2].mean(-1).float())
    finally:
        obj.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def _order_pairs(z: torch.Tensor, g: torch.Tensor, gen: torch.Generator):
    """Each sequence in its true order (label 1) and one deranged order of it (label 0)."""
    from ctrlaug.losses import random_derangement_orders

    N, K, C = z.shape
    orders = random_derangement_orders(N, K, gen)
    shuffled = torch.gather(z, 1, orders[:, :, None].expand(N, K, C))
    return torch.cat([z, shuffled]), torch.cat([g, g]), torch.cat([torch.ones(N), torch.zeros(N)])


def order_decodability(
    clips: torch.Tensor,
    glob: torch.Tensor,
    train: torch.Tensor,
    *,
    use_global: bool = True,
    hidden: int = 128,
    epochs: int = 300,
    seed: int = 0,
) -> dict:
    """Train a fresh order classifier on frozen features: ordered vs deranged clip sequences.

    clips float [N, K, C] (true temporal order), glob float [N, C], train bool [N] (videos whose
    sequences train the classifier; the others test it). The classifier is an MLP on the
    standardised concatenation [z_1 .. z_K (, g)] (``use_global``), full-batch Adam on the logistic
    loss. Returns ``{"top1", "train_top1", "chance": 50}`` (%): every test video contributes one
    ordered and one deranged sequence of the same clips, so features blind to clip order score 50.
    """
    N, K, C = clips.shape
    gen = torch.Generator().manual_seed(seed)
    zs, gs, y = _order_pairs(clips.float(), glob.float(), gen)
    x = torch.cat([zs.flatten(1), gs], 1) if use_global else zs.flatten(1)
    tr = torch.cat([train, train]).bool()
    mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(net(x[tr])[:, 0], y[tr]).backward()
            opt.step()
    with torch.no_grad():
        pred = (net(x)[:, 0] > 0).float()
    acc = lambda m: float((pred[m] == y[m]).float().mean() * 100)  # noqa: E731
    return {"top1": acc(~tr), "train_top1": acc(tr), "chance": 50.0}


@torch.no_grad()
def order_head_score(obj: nn.Module, clips: torch.Tensor, glob: torch.Tensor, seed: int = 0) -> dict | None:
    """The run's own trained L_td head on held-out features: its bound estimate and how often it
    scores the true order above a deranged one (``td_acc``, chance 50). None without an L_td head."""
    td = getattr(obj, "td", None)
    if td is None:
        return None
    was = td.training
    td.eval()
    try:
        r = td(clips.float(), glob.float(), torch.Generator().manual_seed(seed))
    finally:
        td.train(was)
    return {k: float(v) * (100 if k == "td_acc" else 1) for k, v in r.items() if k != "loss"}


def order_study(obj: nn.Module, cfg, *, videos: int = 256, seed: int = 0, device="cpu") -> dict:
    """Why does L_td's bound stay at 0? On pretraining-style views of held-out videos: the run's
    own order head (:func:`order_head_score`), and fresh classifiers trained on the frozen pooled
    features to tell the true clip order from a deranged one, with and without the global feature
    (:func:`order_decodability`). Also the geometry: the mean time between consecutive clip centres
    (fraction of the video)."""
    feats = order_features(obj, cfg, videos=videos, seed=seed, device=device)
    same = order_features(obj, cfg, videos=videos, seed=seed, device=device, clip_space="global")
    half = video_split(len(feats["clips"]), seed)
    gaps = feats["t_centre"].diff(dim=1)
    with one_thread():
        res = {
            "videos": len(feats["clips"]),
            "clips": cfg.augment.num_clips,
            "trained_head": order_head_score(obj, feats["clips"], feats["global"], seed),
            "probe_clips_and_global": order_decodability(feats["clips"], feats["global"], half, seed=seed),
            "probe_clips_only": order_decodability(
                feats["clips"], feats["global"], half, use_global=False, seed=seed
            ),
            "probe_clips_in_global_crop": order_decodability(same["clips"], same["global"], half, seed=seed),
            "clip_centre_gap": {"mean": float(gaps.mean()), "min": float(gaps.min())},
            "seed": seed,
        }
    return res


def _run_order(opts: DiagnoseOptions, enc, cfg, ckpt, device, log) -> dict:
    from ctrlaug.engine.build import build_objective
    from ctrlaug.utils.checkpoint import load_checkpoint

    torch.manual_seed(cfg.seed + 1 if opts.random_init else cfg.seed)
    obj = build_objective(cfg)
    obj.encoder = enc
    if ckpt and not opts.random_init:
        obj.load_state_dict(load_checkpoint(ckpt)["model"])
    res = order_study(obj, cfg, videos=opts.videos, seed=opts.seed, device=device)
    res = {"checkpoint": ckpt, "random_init": bool(opts.random_init), **res}
    out = check_output_dir(opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir), "output folder")
    path = os.path.join(out, "order" + ("_random" if opts.random_init else "") + ".json")
    write_json(path, res)
    th = res["trained_head"]
    log(
        f"order: trained head td_acc {_fmt(th and th.get('td_acc'), 1)}% bound {_fmt(th and th.get('mi_td'), 3)} | "
        f"fresh probe {res['probe_clips_and_global']['top1']:.1f}% (clips only "
        f"{res['probe_clips_only']['top1']:.1f}%; clips in the global crop "
        f"{res['probe_clips_in_global_crop']['top1']:.1f}%; chance 50) -> {path}"
    )
    return res


def floor_summary(results: list[dict]) -> dict:
    """Mean and spread (:func:`ctrlaug.eval.floor.mean_spread`) of the headline numbers of several
    :func:`diagnose` results (the random-init floor over its inits)."""

    def pick(r: dict) -> dict[str, float | None]:
        out = {
            "level": r["level"]["mean_top1"],
            "lowlevel": r["level"]["applied"]["mean_top1"],
            "arrow": r["arrow"]["top1"],
            "focus": r["focus"]["ratio"],
            "focus_control": r["focus"].get("control"),
            "focus_rank": r["focus"].get("rank"),
        }
        out.update({f"{k}_linear": v["linear"] for k, v in r["factors"].items()})
        return out

    rows = [pick(r) for r in results]
    return {
        k: mean_spread([row[k] for row in rows]) for k in rows[0] if all(row[k] is not None for row in rows)
    }


def write_report(res: dict, stem: str) -> str:
    """Write ``res`` of :func:`diagnose` as ``<stem>.json`` and ``<stem>.md``; returns ``stem``."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    reports.write_report(stem, res, to_markdown(res))
    return stem
