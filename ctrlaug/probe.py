"""The demo's linear probe: frozen encoder features -> one linear layer per factor -> top-1.

Features of a video are the global-average-pooled last feature map of its evaluation clips
(:class:`ctrlaug.data.VideoDataset` in ``mode="eval"``: uniformly spaced, centre-cropped),
averaged over the clips. One classifier per labelled factor (``factor_labels()``: the class of a
real dataset; shape, motion, colour and background on the shapes benchmark) is trained
full-batch with Adam on standardised features. This is the quick check the demo prints (trained
vs random-init encoder); the full protocol of §4.2 (10 clips, softmax averaging, finetuning,
retrieval) belongs to evaluation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["extract_features", "factor_probe", "fit_factor_probes"]


def extract_features(
    encoder: nn.Module,
    dataset,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-averaged pooled features of every video of an eval-mode dataset, computed on the
    encoder's device: (features float32 [N, C], labels int64 [N])."""
    from ctrlaug.evaluate import extract_clip_features

    feats, labels = extract_clip_features(encoder, dataset, batch_size=batch_size, num_workers=num_workers)
    return feats.mean(1), labels


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
    from ctrlaug.evaluate import fit_linear_clips

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
