"""DataLoader collate for view samples: uint8 views plus every parameter, ready for the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import AugmentConfig, sample_batch_levels

__all__ = ["collate_views"]


def collate_views(
    samples: list[dict],
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    levels: bool = True,
) -> dict:
    """Stack samples of :class:`ctrlaug.data.VideoDataset` into a batch.

    Returns a dict with

    * ``views``: uint8 [B, V, 3, F, S, S] (view 0 = global view in pretrain mode), or, for datasets
      with ``crop_in_worker=False``: ``frames`` uint8 [B, U, H, W, 3] (zero-padded), ``frame_pos``
      int64 [B, V, F] positions into U and ``frame_hw`` int64 [B, 2] valid sizes;
    * ``boxes``: float32 [B, V, 7]; ``frame_indices``: int64 [B, V, F]; ``num_frames``: int64 [B];
    * ``video_index``: int64 [B]; ``label``: int64 [B] (only when every sample has a label >= 0);
    * ``levels``: int64 [B, V] intensity level ids and ``lowlevel``: :class:`LowLevelParams` [B, V]
      from :func:`ctrlaug.augment.sample_batch_levels` with ``generator``, unless ``levels=False``
      (training draws them per step instead: :meth:`ctrlaug.engine.trainer.Trainer.prepare_views`);
    * ``skipped``: list of ``(path, reason)`` of bad videos replaced while building this batch.

    ``boxes``, ``frame_indices``, ``num_frames`` and ``video_index`` are stacked when every sample
    has them (dataset samples do); samples of ``views`` and ``label`` alone (e.g. relabelled for
    evaluation) give a batch of those.

    Use ``functools.partial(collate_views, cfg=...)`` as ``collate_fn`` (picklable, so it works
    with DataLoader worker processes).
    """
    if not samples:
        raise ValueError("collate_views: empty batch")
    out: dict = {}
    for key in ("boxes", "frame_indices"):  # absent from views-and-label samples
        if all(key in s for s in samples):
            out[key] = torch.stack([s[key] for s in samples])
    for key in ("num_frames", "video_index"):
        if all(key in s for s in samples):
            out[key] = torch.tensor([int(s[key]) for s in samples], dtype=torch.int64)
    if all("views" in s for s in samples):
        out["views"] = torch.stack([s["views"] for s in samples])
    else:
        U = max(s["frames"].shape[0] for s in samples)
        H = max(s["frames"].shape[1] for s in samples)
        W = max(s["frames"].shape[2] for s in samples)
        out["frames"] = torch.stack(
            [
                F.pad(
                    s["frames"],
                    (
                        0,
                        0,
                        0,
                        W - s["frames"].shape[2],
                        0,
                        H - s["frames"].shape[1],
                        0,
                        U - s["frames"].shape[0],
                    ),
                )
                for s in samples
            ]
        )
        out["frame_pos"] = torch.stack([s["frame_pos"] for s in samples])
        out["frame_hw"] = torch.tensor([list(s["frames"].shape[1:3]) for s in samples], dtype=torch.int64)
    labels = [int(s.get("label", -1)) for s in samples]
    if all(lab >= 0 for lab in labels):
        out["label"] = torch.tensor(labels, dtype=torch.int64)
    B, V = (out["boxes"] if "boxes" in out else out["views"]).shape[:2]
    if levels:
        out["levels"], out["lowlevel"] = sample_batch_levels(B, V, cfg, generator)
    out["skipped"] = [x for s in samples for x in s.get("skipped", [])]
    return out
