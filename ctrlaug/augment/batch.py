"""tau_l for a batch: the one level sampler (:func:`sample_batch_levels`) and the device-side
finishing of a collated batch (:func:`augment_batch`: resize-crop if deferred, then tau_l)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ctrlaug.models import to_unit

from .config import AugmentConfig
from .lowlevel import LowLevelParams, low_level_augment, sample_level_params, sample_levels
from .resize_crop import apply_views

__all__ = ["augment_batch", "sample_batch_levels"]


def sample_batch_levels(
    num_videos: int,
    num_views: int,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    rows: slice | None = None,
) -> tuple[torch.Tensor, LowLevelParams]:
    """tau_l levels and parameters of a batch of ``num_videos`` x ``num_views`` views (paper §3.2).

    ``levels_per_step`` levels over the whole batch (:func:`sample_levels`), then each view's
    parameters inside its level (:func:`sample_level_params`), both from ``generator``. ``rows``
    keeps only those videos: a DDP rank draws for the global batch and keeps its share, so the draw
    is the same whatever the number of ranks. Returns levels int64 [B, V] and
    :class:`LowLevelParams` [B, V] (B = the kept videos).
    """
    levels = sample_levels(num_videos * num_views, cfg, generator=generator).reshape(num_videos, num_views)
    params = sample_level_params(levels, cfg, generator=generator)
    if rows is not None:
        levels, params = levels[rows], params.select(rows)
    return levels, params


def augment_batch(
    batch: Mapping[str, object],
    device: torch.device | str | None = None,
    *,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    non_blocking: bool = True,
) -> torch.Tensor:
    """Turn a batch from :func:`ctrlaug.data.collate_views` into augmented float views on ``device``.

    Uses ``batch["views"]`` (uint8 [B, V, 3, F, S, S]) or, when the dataset deferred the crop
    (``DataConfig.crop_in_worker=False``), crops ``batch["frames"]`` (uint8 [B, U, H, W, 3]) with
    ``batch["frame_pos"]``, ``batch["boxes"]`` and ``batch["frame_hw"]`` on the device first. Applies
    tau_l with ``batch["lowlevel"]`` (drawing them with :func:`sample_batch_levels` and ``generator``
    if the batch has none).

    Returns float32 [B, V, 3, F, S, S] in [0, 1] (view 0 = global view, then the K clips).
    """
    cfg = cfg or AugmentConfig()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if "views" in batch:
        views = batch["views"].to(dev, non_blocking=non_blocking)  # type: ignore[union-attr]
    else:
        views = apply_views(
            batch["frames"].to(dev, non_blocking=non_blocking),  # type: ignore[union-attr]
            batch["frame_pos"].to(dev),  # type: ignore[union-attr]
            batch["boxes"].to(dev),  # type: ignore[union-attr]
            cfg.size,
            frame_hw=batch["frame_hw"].to(dev),  # type: ignore[union-attr]
        )
    B, V = views.shape[:2]
    params = batch.get("lowlevel")
    if params is None:
        _, params = sample_batch_levels(B, V, cfg, generator)
    assert isinstance(params, LowLevelParams)
    x = to_unit(views.flatten(0, 1))
    y = low_level_augment(x, params.to(dev), max_kernel=cfg.max_blur_kernel)
    return y.reshape(B, V, *y.shape[1:])
