"""A minimal linear probe: frozen encoder features -> one linear layer -> top-1.

Features of a video are the global-average-pooled last feature map of its evaluation clips
(:class:`ctrlaug.data.VideoDataset` in ``mode="eval"``: uniformly spaced, centre-cropped),
averaged over the clips. The classifier is trained full-batch with Adam on standardised
features. This is the quick check the demo prints (trained vs random-init encoder); the full
protocol of §4.2 (10 clips, softmax averaging, finetuning, retrieval) belongs to evaluation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["extract_features", "linear_probe"]


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


def linear_probe(
    encoder: nn.Module,
    train_set,
    test_set,
    *,
    epochs: int = 200,
    batch_size: int = 8,
    num_workers: int = 0,
    seed: int = 0,
) -> dict[str, float]:
    """Top-1 (%) of a linear classifier on frozen features: ``{"top1", "train_top1"}``."""
    tr_x, tr_y = extract_features(encoder, train_set, batch_size=batch_size, num_workers=num_workers)
    te_x, te_y = extract_features(encoder, test_set, batch_size=batch_size, num_workers=num_workers)
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
    from ctrlaug.evaluate import fit_linear_clips

    clf = fit_linear_clips(tr_x[:, None], tr_y, num_classes, epochs=epochs, batch_size=0, seed=seed)
    with torch.no_grad():
        top1 = (clf(te_x).argmax(1) == te_y).float().mean().item() * 100
        train_top1 = (clf(tr_x).argmax(1) == tr_y).float().mean().item() * 100
    return {"top1": top1, "train_top1": train_top1, "num_train": len(tr_y), "num_test": len(te_y)}
