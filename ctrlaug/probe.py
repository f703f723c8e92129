"""Frozen-feature protocols, below training and evaluation: clip features of an encoder, the
linear classifier on them, kNN, retrieval recall, and the demo's per-factor linear probe.

``ctrlaug.train`` (kNN monitor, demo probe), ``ctrlaug.evaluate`` (the §4.2-4.3 protocols and
their CLI), ``ctrlaug.diagnose`` and ``ctrlaug.calibrate`` all build on this module; it imports
none of them.

The demo's linear probe: frozen encoder features -> one linear layer per factor -> top-1.

Features of a video are the global-average-pooled last feature map of its evaluation clips
(:class:`ctrlaug.data.VideoDataset` in ``mode="eval"``: uniformly spaced, centre-cropped),
averaged over the clips. One classifier per labelled factor (``factor_labels()``: the class of a
real dataset; shape, motion, colour and background on the shapes benchmark) is trained
full-batch with Adam on standardised features. This is the quick check the demo prints (trained
vs random-init encoder); the full protocol of §4.2 (10 clips, softmax averaging, finetuning,
retrieval) belongs to evaluation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ctrlaug.data import collate_views
from ctrlaug.models import pool, prepare_input
from ctrlaug.utils.progress import Progress

__all__ = [
    "retrieval_recall",
    "knn_top1",
    "knn_votes",
    "classification_metrics",
    "query_chunks",
    "resolve_precision",
    "autocast",
    "clip_loader",
    "extract_clip_features",
    "fit_linear_clips",
    "evaluate_clips",
    "extract_features",
    "factor_probe",
    "fit_factor_probes",
]


def _l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=1)


# Similarity blocks of at most this many float32 entries (256 MB) when no chunk is given: the
# demo's and the tests' sizes are one block, computed exactly as a single query x gallery product.
CHUNK_ELEMENTS = 1 << 26


def query_chunks(num_queries: int, gallery_size: int, chunk: int | None = None) -> Iterator[slice]:
    """Row slices of the queries for a chunked query x gallery computation: ``chunk`` queries at
    a time (None or 0: as many as fit :data:`CHUNK_ELEMENTS` similarity entries, at least 1), so
    the similarity block is at most ``chunk x gallery_size``."""
    if chunk is not None and chunk < 0:
        raise ValueError(f"chunk must be >= 0, got {chunk}")
    n = chunk or max(1, CHUNK_ELEMENTS // max(gallery_size, 1))
    for a in range(0, num_queries, n):
        yield slice(a, min(a + n, num_queries))


def retrieval_recall(
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_feats: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    chunk: int | None = None,
) -> dict[int, float]:
    """Top-k retrieval recall (paper §4.3, the protocol of its Table 3), cosine similarity.

    Args:
        query_feats: float [Q, C] (test videos); query_labels: int [Q].
        gallery_feats: float [G, C] (train videos); gallery_labels: int [G].
        ks: cut-offs; a k larger than G is clipped to G (its value is still reported under k).
        chunk: queries per similarity block (:func:`query_chunks`; memory O(chunk x G)); the
            result does not depend on it.

    Returns ``{k: recall in %}``: the share of queries with at least one of their k most similar
    gallery items of the same class.
    """
    q, g = _l2n(query_feats), _l2n(gallery_feats)
    ql, gl = torch.as_tensor(query_labels).long(), torch.as_tensor(gallery_labels).long()
    if q.shape[0] != ql.shape[0] or g.shape[0] != gl.shape[0] or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"retrieval_recall: shape mismatch {tuple(q.shape)}/{tuple(ql.shape)} vs "
            f"{tuple(g.shape)}/{tuple(gl.shape)}"
        )
    if g.shape[0] == 0 or q.shape[0] == 0:
        raise ValueError("retrieval_recall: empty query or gallery")
    kmax = min(max(ks), g.shape[0])
    cols = [min(k, kmax) - 1 for k in ks]
    hits = torch.empty(q.shape[0], len(ks), dtype=torch.bool)  # [Q, len(ks)]
    for sl in query_chunks(q.shape[0], g.shape[0], chunk):
        idx = (q[sl] @ g.T).topk(kmax, dim=1).indices  # [chunk, kmax], most similar first
        hit = gl[idx] == ql[sl, None]  # [chunk, kmax]
        first = torch.cumsum(hit.int(), dim=1) > 0  # hit within the first j+1
        hits[sl] = first[:, cols]
    return {int(k): hits[:, i].float().mean().item() * 100 for i, k in enumerate(ks)}


def knn_votes(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    t: float = 0.07,
    num_classes: int | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Weighted kNN class votes float [M, num_classes] of each test item (see :func:`knn_top1`),
    computed ``chunk`` test items at a time (:func:`query_chunks`; memory O(chunk x N)); the
    votes do not depend on ``chunk``. ``num_classes`` defaults to the largest train label + 1."""
    tr, te = _l2n(train_feats), _l2n(test_feats)
    trl = torch.as_tensor(train_labels).long()
    if tr.shape[0] != trl.shape[0] or tr.shape[1] != te.shape[1]:
        raise ValueError(
            f"knn: shape mismatch train {tuple(tr.shape)}/{tuple(trl.shape)} vs test {tuple(te.shape)}"
        )
    if tr.shape[0] == 0:
        raise ValueError("knn: empty train set")
    C = int(num_classes or int(trl.max()) + 1)
    k = min(k, tr.shape[0])
    votes = torch.zeros(te.shape[0], C)
    for sl in query_chunks(te.shape[0], tr.shape[0], chunk):
        sim, idx = (te[sl] @ tr.T).topk(k, dim=1)  # [chunk, k]
        w = (sim / t).exp()
        votes[sl] = torch.zeros(sim.shape[0], C).scatter_add_(1, trl[idx], w)
    return votes


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    t: float = 0.07,
    num_classes: int | None = None,
    chunk: int | None = None,
) -> float:
    """Weighted kNN top-1 (%) on frozen features (instance-discrimination style monitor).

    Features float [N, C] are L2-normalised; each test item takes its k most cosine-similar train
    items, each voting for its class with weight ``exp(sim / t)``; the class with the largest vote
    wins. Labels int [N]. Usable as a cheap monitor during pretraining. ``chunk``: test items
    per similarity block (:func:`knn_votes`); the result does not depend on it.
    """
    trl, tel = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    C = int(num_classes or int(max(trl.max(), tel.max())) + 1)
    votes = knn_votes(train_feats, trl, test_feats, k=k, t=t, num_classes=C, chunk=chunk)
    return (votes.argmax(1) == tel).float().mean().item() * 100


def classification_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    class_names: Sequence[str] | None = None,
) -> dict:
    """Standard classification numbers from scores float [N, K] (logits, probabilities or kNN
    votes; larger = more likely) and labels int [N], all in %:

    ``top{k}`` for each k (the label among the k highest scores; top-1 by ``argmax``, k clipped
    to K), ``mean_class`` (top-1 per class, averaged over the classes present in ``labels``) and
    ``per_class`` ``{class name or index: {"n": videos, "top1": %}}`` for the classes present.
    """
    scores = scores.float()
    labels = torch.as_tensor(labels).long()
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"classification_metrics: scores {tuple(scores.shape)} vs labels {tuple(labels.shape)}"
        )
    out: dict = {}
    correct = scores.argmax(1) == labels
    for k in ks:
        if k == 1:
            out["top1"] = correct.float().mean().item() * 100
        else:
            top = scores.topk(min(k, scores.shape[1]), dim=1).indices
            out[f"top{k}"] = (top == labels[:, None]).any(1).float().mean().item() * 100
    per_class = {}
    for c in labels.unique().tolist():
        m = labels == c
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        per_class[name] = {"n": int(m.sum()), "top1": correct[m].float().mean().item() * 100}
    out["mean_class"] = sum(v["top1"] for v in per_class.values()) / max(len(per_class), 1)
    out["per_class"] = per_class
    return out


def clip_loader(
    ds, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    collate = functools.partial(collate_views, levels=False)  # tau_l is not applied in evaluation
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g, num_workers=num_workers
    )


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a forward-only pass: None (float32) for ``fp32``, bfloat16 for
    ``bf16``, float16 for ``fp16`` (CUDA only), and for ``auto`` bfloat16 on a CUDA device with
    bf16 support, else None. ValueError for an unknown name or fp16 off CUDA."""
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        ok = dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else None
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, got {dev}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device``'s type with ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@torch.no_grad()
def extract_clip_features(
    encoder: nn.Module,
    dataset,
    batch_size: int = 4,
    num_workers: int = 0,
    head: nn.Module | None = None,
    *,
    precision: str = "fp32",
    progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every clip of an eval-mode dataset, on the encoder's device.

    Returns (features float32 [N videos, V clips, C] on the CPU, labels int64 [N]); with ``head``
    (on the same device), ``head(features)`` instead, e.g. a classifier's logits [N, V, K]. The
    encoder runs in eval mode (BN running statistics) and is put back in its previous mode.
    ``precision`` (:func:`resolve_precision`): ``bf16`` runs the forward under bfloat16 autocast
    (features still returned as float32); ``fp32`` (default) is plain float32. ``progress``: a
    label to show a progress bar (:class:`ctrlaug.utils.progress.Progress`) on stderr.
    """
    was = encoder.training
    encoder.eval()
    dev = next(encoder.parameters()).device
    dtype = resolve_precision(precision, dev)
    bar = Progress(len(dataset), progress, unit="videos") if progress else None
    feats, labels = [], []
    try:
        for b in clip_loader(dataset, batch_size, num_workers=num_workers):
            v = b["views"].to(dev)  # uint8 [B, V, 3, F, S, S]
            B, V = v.shape[:2]
            with autocast(dev, dtype):
                f = pool(encoder(prepare_input(v.flatten(0, 1))))
                f = f if head is None else head(f)
            feats.append(f.float().view(B, V, -1).cpu())
            labels.append(b["label"])
            if bar:
                bar.update(B)
    finally:
        encoder.train(was)
        if bar:
            bar.close()
    return torch.cat(feats), torch.cat(labels)


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


def extract_features(
    encoder: nn.Module,
    dataset,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-averaged pooled features of every video of an eval-mode dataset, computed on the
    encoder's device: (features float32 [N, C], labels int64 [N])."""
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
