"""The L_td order study: is clip order decodable from the features at all?

Pretraining-style views of held-out videos (:func:`order_features`), the run's own order head on
them (:func:`order_head_score`) and fresh classifiers of the true order against a deranged one
(:func:`order_decodability`), together in :func:`order_study`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.models import normalize_input, pool
from ctrlaug.studies.diagnose.probes import video_split
from ctrlaug.utils.threads import one_thread

__all__ = ["order_features", "order_decodability", "order_head_score", "order_study"]


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
