"""Typed configuration of the controllable augmentations (paper §3, supplementary §1).

One flat dataclass so that a training config can embed it and override any field with
``augment.<field>=value``. Every field carries a comment; the defaults are the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AugmentConfig", "PAPER_BLUR_LEVELS"]

# (kernel size, sigma_lo, sigma_hi): supplementary §1, "2 radius (7, 11) x 2 sigma ranges".
PAPER_BLUR_LEVELS: tuple[tuple[int, float, float], ...] = (
    (7, 0.1, 0.5),
    (7, 0.5, 2.0),
    (11, 0.1, 0.5),
    (11, 0.5, 2.0),
)


@dataclass
class AugmentConfig:
    """Parameters of tau_p (crop, flip, temporal sampling) and tau_l (colour jitter, blur)."""

    # ---- output --------------------------------------------------------------------------------
    size: int = 112  # spatial side of every view after the resize-crop (paper §4.2: 16x112x112)

    # ---- tau_p: global view --------------------------------------------------------------------
    global_frames: int = 16  # frames of the global view, sampled uniformly over the whole video
    global_temporal_jitter: bool = False  # False: middle frame of each of the 16 segments; True: random
    global_area: tuple[float, float] = (0.8, 1.0)  # crop area as a fraction of the frame (weak crop)
    global_flip_prob: float = 0.5  # probability of mirroring the global view horizontally

    # ---- tau_p: local clips --------------------------------------------------------------------
    num_clips: int = 4  # K local clips per video (Table 4)
    clip_frames: int = 16  # consecutive frames per clip (must equal global_frames: views are stacked)
    clip_step: int = 1  # frame step inside a clip (1 = consecutive frames)
    local_area: tuple[float, float] = (0.4, 0.8)  # crop area as a fraction of the *global crop* area
    local_flip_prob: float = 0.5  # probability of mirroring each clip, independent of the global flip

    # ---- tau_p: shared -------------------------------------------------------------------------
    aspect: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect (width/height, in pixels), log-uniform
    short_video: str = "stretch"  # fewer frames than a clip: "stretch" (resample the whole video) | "skip"

    # ---- evaluation views (paper §4.2: 10 uniformly spaced clips, centre crop) ---------------------
    eval_clips: int = 10  # clips per video in evaluation mode
    eval_crop: float = 0.875  # centre square side as a fraction of the short side (112/128)

    # ---- tau_l: intensity levels (Table 5, supplementary §1) ------------------------------------
    brightness: float = 0.4  # max brightness strength: factor = 1 +- s, s in [0, brightness]
    contrast: float = 0.4  # max contrast strength
    saturation: float = 0.4  # max saturation strength
    hue: float = 0.1  # max hue shift, in turns of the colour wheel
    levels_brightness: int = 4  # bins of [0, brightness] (paper: 4)
    levels_contrast: int = 4  # bins of [0, contrast] (paper: 4)
    levels_saturation: int = 4  # bins of [0, saturation] (paper: 4)
    levels_hue: int = 2  # bins of [0, hue] (paper: 2)
    blur_levels: tuple[tuple[int, float, float], ...] = PAPER_BLUR_LEVELS  # (kernel, sigma_lo, sigma_hi)
    signed_levels: bool = False  # False: bins over |strength| with a random sign (paper); True: bins
    #                              over the signed range [-max, max], so the sign is part of the level
    levels_per_step: int = 32  # distinct levels drawn per training step (paper: 32)
    min_views_per_level: int = 2  # fewer levels are used when a batch is too small to give each this many

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_views(self) -> int:
        """Views per video: the global view plus the K local clips."""
        return 1 + self.num_clips

    @property
    def level_counts(self) -> tuple[int, int, int, int, int]:
        """Bins of (brightness, contrast, saturation, hue, blur)."""
        return (
            self.levels_brightness,
            self.levels_contrast,
            self.levels_saturation,
            self.levels_hue,
            len(self.blur_levels),
        )

    @property
    def num_levels(self) -> int:
        """Total number of intensity levels: the product of the bin counts (paper default 512)."""
        return math.prod(self.level_counts)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""

        def rng(name: str, lo_min: float, hi_max: float) -> None:
            lo, hi = getattr(self, name)
            if not (lo_min <= lo <= hi <= hi_max) or hi <= 0:
                raise ValueError(
                    f"AugmentConfig.{name}={(lo, hi)} must satisfy {lo_min} <= lo <= hi <= {hi_max}"
                )

        rng("global_area", 0.0, 1.0)
        rng("local_area", 0.0, 1.0)
        if not (0 < self.aspect[0] <= self.aspect[1]):
            raise ValueError(f"AugmentConfig.aspect={self.aspect} must satisfy 0 < lo <= hi")
        for name in ("size", "global_frames", "num_clips", "clip_frames", "clip_step", "eval_clips"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)} must be >= 1")
        if self.global_frames != self.clip_frames:
            raise ValueError(
                f"AugmentConfig.global_frames={self.global_frames} must equal clip_frames={self.clip_frames}: "
                "the global view and the clips are stacked into one [V, C, T, H, W] tensor"
            )
        for name in ("global_flip_prob", "local_flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)} must lie in [0, 1]")
        if self.short_video not in ("stretch", "skip"):
            raise ValueError(f"AugmentConfig.short_video={self.short_video!r} must be 'stretch' or 'skip'")
        if not 0.0 < self.eval_crop <= 1.0:
            raise ValueError(f"AugmentConfig.eval_crop={self.eval_crop} must lie in (0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)} must lie in [0, 1)")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentConfig.hue={self.hue} must lie in [0, 0.5]")
        for name in ("levels_brightness", "levels_contrast", "levels_saturation", "levels_hue"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)} must be >= 1")
        if len(self.blur_levels) < 1:
            raise ValueError("AugmentConfig.blur_levels must hold at least one (kernel, sigma_lo, sigma_hi)")
        for lvl in self.blur_levels:
            if len(lvl) != 3:
                raise ValueError(
                    f"AugmentConfig.blur_levels entry {lvl!r} must be (kernel, sigma_lo, sigma_hi)"
                )
            k, lo, hi = lvl
            if int(k) != k or k < 1 or k % 2 == 0 or not (0 < lo <= hi):
                raise ValueError(
                    f"AugmentConfig.blur_levels entry {lvl!r}: kernel must be a positive odd integer "
                    "and 0 < sigma_lo <= sigma_hi"
                )
        if self.levels_per_step < 1 or self.min_views_per_level < 1:
            raise ValueError("AugmentConfig.levels_per_step and min_views_per_level must be >= 1")

    @property
    def max_blur_kernel(self) -> int:
        return int(max(k for k, _, _ in self.blur_levels))
