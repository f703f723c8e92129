"""Controllable augmentations (paper §3, supplementary §1).

* tau_p, position: :func:`sample_views` draws the global view and K local clips as boxes
  ``(t0, t1, y0, y1, x0, x1, flip)`` plus frame indices, the format ``ctrlaug.ops.correspondence``
  consumes; :func:`apply_views` cuts them from decoded uint8 frames in one resize-crop.
* tau_l, low level: :func:`sample_levels` / :func:`sample_level_params` draw intensity levels and
  per-view parameters (:func:`sample_batch_levels` does both for a batch: the one sampler training,
  the collate and :func:`augment_batch` use); :func:`low_level_augment` applies colour jitter +
  blur, batched, on device.

Importing this package needs only torch (no triton, no compiled extension, no PyAV).
"""

from .batch import augment_batch, sample_batch_levels
from .config import PAPER_BLUR_LEVELS, AugmentConfig
from .lowlevel import (
    LowLevelParams,
    gaussian_kernel1d,
    hsv_to_rgb,
    level_components,
    low_level_augment,
    low_level_augment_ref,
    rgb_to_hsv,
    sample_level_params,
    sample_levels,
)
from .position import Views, clip_starts_range, crop_rect, sample_eval_views, sample_views
from .resize_crop import apply_views, view_grid

__all__ = [
    "AugmentConfig",
    "PAPER_BLUR_LEVELS",
    "Views",
    "sample_views",
    "sample_eval_views",
    "crop_rect",
    "clip_starts_range",
    "apply_views",
    "view_grid",
    "LowLevelParams",
    "level_components",
    "sample_levels",
    "sample_level_params",
    "low_level_augment",
    "low_level_augment_ref",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "gaussian_kernel1d",
    "augment_batch",
    "sample_batch_levels",
]
