"""Linear classifiers on frozen features: the §4.2 linear protocol's clip classifier and its
video-level evaluation, and the per-factor linear probe.

The per-factor probe: frozen encoder features -> one linear layer per factor -> top-1. One
classifier per labelled factor (``factor_labels()``: the class of a real dataset; shape, motion,
colour and background on the shapes benchmark) is trained full-batch with Adam on standardised
features (video feature = mean of its evaluation clips' pooled features). This is the quick check
pretraining prints (trained vs random-init encoder); the full protocol of §4.2 (10 clips, softmax
averaging, finetuning, retrieval) is :mod:`ctrlaug.eval.protocols`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.eval.features import extract_features

__all__ = ["fit_linear_clips", "evaluate_clips", "fit_factor_probes", "factor_probe"]


def fit_linear_clips(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
):
    """Linear classifier on clip features float [N, V, C] (every clip a sample, its video's label).

    Standardised features, Adam, shuffled mini-batches (``batch_size=0``: full batch, in order).
    Returns a callable ``[..., C] -> logits``.
    """
    x = train_x.reshape(-1, train_x.shape[-1])
    y = train_y[:, None].expand(train_x.shape[:2]).reshape(-1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        clf.weight.normal_(0, 0.01, generator=g)
        clf.bias.zero_()
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        batches = torch.randperm(len(x), generator=g).split(batch_size) if batch_size else [slice(None)]
        for i in batches:
            opt.zero_grad()
            F.cross_entropy(clf(x[i]), y[i]).backward()
            opt.step()
    clf.eval()
    return lambda f: clf((f - mean) / std)


def evaluate_clips(clip_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 (%) from clip logits float [N, V, K]: ``clip_top1`` (each clip alone) and
    ``video_top1`` (softmax averaged over the V clips, paper §4.2)."""
    p = clip_logits.float().softmax(-1)
    clip = (p.argmax(-1) == labels[:, None]).float().mean().item() * 100
    video = (p.mean(1).argmax(-1) == labels).float().mean().item() * 100
    return {"clip_top1": clip, "video_top1": video}


def fit_factor_probes(
    tr_x: torch.Tensor,
    tr_labels: dict[str, torch.Tensor],
    te_x: torch.Tensor,
    te_labels: dict[str, torch.Tensor],
    num_classes: dict[str, int],
    *,
    epochs: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """One linear classifier per factor on fixed video features float [N, C].

    Returns ``{factor: {"top1", "train_top1", "chance"}}`` in %, where ``chance`` is the test
    set's majority-class rate (the score of a constant guess).
    """
    out = {}
    for name, ytr in tr_labels.items():
        yte = te_labels[name]
        clf = fit_linear_clips(tr_x[:, None], ytr, num_classes[name], epochs=epochs, batch_size=0, seed=seed)
        with torch.no_grad():
            top1 = (clf(te_x).argmax(1) == yte).float().mean().item() * 100
            train_top1 = (clf(tr_x).argmax(1) == ytr).float().mean().item() * 100
        chance = torch.bincount(yte, minlength=num_classes[name]).max().item() / max(len(yte), 1) * 100
        out[name] = {"top1": top1, "train_top1": train_top1, "chance": chance}
    return out


def factor_probe(
    encoder: nn.Module,
    train_set,
    test_set,
    *,
    epochs: int = 200,
    batch_size: int = 8,
    num_workers: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Linear probe of every labelled factor of the datasets (``factor_labels()``): frozen
    clip-averaged features, one linear classifier per factor; see :func:`fit_factor_probes`."""
    tr_x, _ = extract_features(encoder, train_set, batch_size=batch_size, num_workers=num_workers)
    te_x, _ = extract_features(encoder, test_set, batch_size=batch_size, num_workers=num_workers)
    n = {k: len(v) for k, v in train_set.factor_classes().items()}
    return fit_factor_probes(
        tr_x, train_set.factor_labels(), te_x, test_set.factor_labels(), n, epochs=epochs, seed=seed
    )
