"""Retrieval and classification metrics on frozen features: recall@k, weighted kNN, top-1 /
top-5 / mean-class accuracy, computed in query chunks so a 100k x 100k gallery fits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "CHUNK_ELEMENTS",
    "query_chunks",
    "retrieval_recall",
    "knn_votes",
    "knn_top1",
    "classification_metrics",
    "video_metrics",
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


def video_metrics(scores: torch.Tensor, labels: torch.Tensor, test_set) -> dict:
    """``video_top5``, ``video_mean_class`` and ``per_class`` of video scores [N, K]."""
    m = classification_metrics(scores, labels, ks=(5,), class_names=getattr(test_set, "classes", None))
    return {"video_top5": m["top5"], "video_mean_class": m["mean_class"], "per_class": m["per_class"]}
