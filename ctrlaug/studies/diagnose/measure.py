"""The four measurements of the diagnostics on one encoder (:func:`diagnose`): render the
held-out and train clips, run the encoder over them, then the probes (:mod:`.probes`) and the
focus measure (:mod:`.focus`). The package docstring (:mod:`ctrlaug.studies.diagnose`) says what
each measurement is.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn

from ctrlaug.augment import low_level_augment, sample_level_params
from ctrlaug.data.shapes import MOTIONS
from ctrlaug.errors import EvalError
from ctrlaug.eval.linear import fit_factor_probes
from ctrlaug.eval.metrics import knn_top1
from ctrlaug.models import to_unit
from ctrlaug.studies.diagnose.clips import (
    encode,
    pick_videos,
    render_clips,
    reverse_clip,
    shapes_of,
    stack_factors,
)
from ctrlaug.studies.diagnose.focus import focus_rank, focus_ratio, masks_to_grid, shuffled_pairing
from ctrlaug.studies.diagnose.probes import (
    APPLIED,
    LEVEL_COMPONENTS,
    applied_decodability,
    level_decodability,
    reversal_decodability,
    video_split,
)
from ctrlaug.studies.diagnose.report import summary_line
from ctrlaug.utils.progress import Progress
from ctrlaug.utils.threads import one_thread

__all__ = ["diagnose"]

_POSITIVE_MOTIONS = ("right", "down")  # displayed-direction label 1; their time reverses get 0


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
    """Run the four measurements on ``encoder`` (see :mod:`ctrlaug.studies.diagnose`).

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
    shapes, note = shapes_of(cfg)
    test_split, train_split = cfg.eval.split, cfg.split
    n_te, n_tr = pick_videos(shapes, test_split, videos), pick_videos(shapes, train_split, videos)
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
        clips, cover, fac = render_clips(shapes, split, range(i0, min(n, i0 + batch)), aug)
        factors += fac
        x = to_unit(clips.to(dev))  # [B, 3, F, S, S]; tau_l and the reversal run on the device
        B = len(x)
        f, maps = encode(encoder, x, dev, batch, maps=True)
        out["fwd"].append(f)
        out["maps"].append(maps)
        out["masks"].append(cover)
        out["rev"].append(encode(encoder, reverse_clip(x), dev, batch))
        p = params.select(slice(i0 * levels, (i0 + B) * levels)).to(dev)
        xv = low_level_augment(x.repeat_interleave(levels, 0), p, max_kernel=aug.max_blur_kernel)
        out["levels"].append(encode(encoder, xv, dev, batch).view(B, levels, -1))
        if bar:
            bar.update(B)
    res = {k: torch.cat(v) for k, v in out.items()}
    res["factors"] = stack_factors(factors)
    return res


def _train_clips(encoder, shapes, split, n, aug, dev, batch, bar=None):
    """Pooled features [n, C] and factor labels of the centre clips of n train videos."""
    feats, factors = [], []
    for i0 in range(0, n, batch):
        clips, _, fac = render_clips(shapes, split, range(i0, min(n, i0 + batch)), aug)
        factors += fac
        feats.append(encode(encoder, to_unit(clips), dev, batch))
        if bar:
            bar.update(len(clips))
    return torch.cat(feats), stack_factors(factors)
