"""The linear decodability probes of the diagnostics, on extracted features.

What a linear probe reads from features, train and test halves split by video (never by view):
the L_mi level components (:func:`level_decodability`), the low-level values actually applied to
each view (:func:`applied_decodability`) and the arrow of time from a clip and its reversal
(:func:`reversal_decodability`). Every accuracy is in %, beside its chance level.
"""

from __future__ import annotations

import torch

from ctrlaug.augment import AugmentConfig, level_components
from ctrlaug.eval.linear import fit_factor_probes

__all__ = [
    "LEVEL_COMPONENTS",
    "APPLIED",
    "APPLIED_BINS",
    "video_split",
    "level_decodability",
    "quantile_bins",
    "applied_decodability",
    "reversal_decodability",
]

LEVEL_COMPONENTS = ("brightness", "contrast", "saturation", "hue", "blur")  # level_components order
APPLIED = ("brightness", "contrast", "saturation", "hue", "blur_sigma")  # LowLevelParams fields
APPLIED_BINS = 4


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
