"""The foreground focus measure (region contrast attends to the moving object, paper Fig. 3).

Class-agnostic activation maps against the objects' masks cut to the feature grid: the focus
ratio (:func:`focus_ratio`, the share of the map's energy on the object per unit of its area),
its shuffled-mask control (:func:`shuffled_pairing`) and the peak-independent focus rank
(:func:`focus_rank`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["shuffled_pairing", "masks_to_grid", "focus_ratio", "RANK_TIE_RTOL", "focus_rank"]


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
