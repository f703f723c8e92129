"""Frozen clip features of an encoder, and their on-disk cache.

Features of a video are the global-average-pooled last feature map of its evaluation clips
(:class:`ctrlaug.data.VideoDataset` in ``mode="eval"``: uniformly spaced, centre-cropped). The
cache key names everything the features depend on (weights digest, dataset, split, clip geometry,
precision), so a changed input never reads stale features.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from ctrlaug.data import collate_views
from ctrlaug.eval.options import EvalOptions
from ctrlaug.models import pool, prepare_input
from ctrlaug.utils.atomic import atomic_open
from ctrlaug.utils.checkpoint import UnsafeFileError, safe_load
from ctrlaug.utils.dist import all_gather_object, is_dist, rank, world_size
from ctrlaug.utils.progress import Progress

__all__ = [
    "PRECISIONS",
    "resolve_precision",
    "autocast",
    "clip_loader",
    "extract_clip_features",
    "extract_features",
    "feature_cache_key",
    "cached_features",
]


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
    shard: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every clip of an eval-mode dataset, on the encoder's device.

    ``shard=True`` under torchrun (an initialised process group of more than one process): rank r
    computes the videos r, r + W, r + 2W, ... and the parts are gathered once
    (``all_gather_object``), so every rank returns the features of every video, in dataset order.
    Every rank must call it (a collective); without a process group it is the one-process path.

    Returns (features float32 [N videos, V clips, C] on the CPU, labels int64 [N]); with ``head``
    (on the same device), ``head(features)`` instead, e.g. a classifier's logits [N, V, K]. The
    encoder runs in eval mode (BN running statistics) and is put back in its previous mode.
    ``precision`` (:func:`resolve_precision`): ``bf16`` runs the forward under bfloat16 autocast
    (features still returned as float32); ``fp32`` (default) is plain float32. ``progress``: a
    label to show a progress bar (:class:`ctrlaug.utils.progress.Progress`) on stderr.
    """
    if shard and is_dist():
        return _sharded(encoder, dataset, batch_size, num_workers, head, precision, progress)
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


def _sharded(encoder, dataset, batch_size, num_workers, head, precision, progress):
    """Rank r's strided share of ``dataset``, then one gather of every rank's (features, labels)."""
    r, w, n = rank(), world_size(), len(dataset)
    mine = list(range(r, n, w))
    if mine:
        f, y = extract_clip_features(
            encoder,
            Subset(dataset, mine),
            batch_size,
            num_workers,
            head,
            precision=precision,
            progress=progress if r == 0 else None,
        )
    else:
        f, y = None, None
    parts = all_gather_object((f, y))
    shape = next(p[0].shape[1:] for p in parts if p[0] is not None)
    feats = torch.empty((n, *shape), dtype=torch.float32)
    labels = torch.empty(n, dtype=torch.int64)
    for k, (pf, py) in enumerate(parts):
        if pf is not None:
            feats[k::w], labels[k::w] = pf, py
    return feats, labels


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


def _tensor_digest(sd: dict) -> str:
    h = hashlib.sha1()
    for k, v in sd.items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_cache_key(enc: nn.Module, cfg, ds, split: str, opts: EvalOptions, ckpt: str | None) -> dict:
    """Everything the clip features of ``ds`` depend on: the encoder (architecture and a digest
    of its weights and BN statistics, so checkpoint, ``--random-init`` and ``--config`` are all
    covered), the dataset (format, root, fold, split, size, the rendered sets' and the decoder's
    settings), the clip geometry (``--clips``, the set's crops and every ``augment`` field: size,
    frames, crop) and
    the forward precision. ``cfg``: the model/data config the datasets were built from."""
    from ctrlaug.config import config_to_dict

    c = config_to_dict(cfg)
    fmt = (opts.dataset or cfg.dataset).lower()
    return {
        "checkpoint": os.path.abspath(ckpt) if ckpt else None,
        "random_init": bool(opts.random_init),
        "encoder": {
            "arch": cfg.model.arch,
            "width": cfg.model.width,
            "spatial_stride1_stages": list(cfg.model.spatial_stride1_stages),
            "sha1": _tensor_digest(enc.state_dict()),
        },
        "dataset": fmt,
        "data_root": opts.data_root or cfg.data_root,
        "fold": cfg.fold,
        "split": split,
        "n": len(ds),
        "clips": opts.clips,
        "crops": int(getattr(ds, "eval_crops", 1)),
        "augment": c["augment"],
        "data": c["data"],
        "rendered": c.get(fmt),  # the synthetic / shapes settings; None for a dataset of files
        "precision": opts.precision,
    }


def cached_features(
    enc, ds, split: str, opts: EvalOptions, ckpt: str | None, cache_dir: str | None, cfg=None
):
    """Clip features, cached as ``<out>/features_<split>.pt`` under :func:`feature_cache_key`
    (reused only when every input of the features matches)."""
    path = os.path.join(cache_dir, f"features_{split}.pt") if cache_dir else None
    key = feature_cache_key(enc, cfg, ds, split, opts, ckpt) if path else None
    if path and os.path.isfile(path):
        try:
            c = safe_load(path)  # weights_only: a planted cache never runs code
            if isinstance(c, dict) and c.get("key") == key:
                return c["feats"], c["labels"]
        except UnsafeFileError as e:
            print(f"[ctrlaug.evaluate] ignoring the feature cache, recomputing it: {e}", file=sys.stderr)
        except Exception:
            pass
    f, y = extract_clip_features(
        enc,
        ds,
        opts.batch_size,
        num_workers=opts.workers,
        precision=opts.precision,
        progress=f"features {split}" if opts.progress else None,
        shard=True,  # under torchrun each rank computes its share; one process: unchanged
    )
    if path and rank() == 0:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            torch.save({"key": key, "feats": f, "labels": y}, fh)
    return f, y
