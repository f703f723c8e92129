"""Typed configuration of the controllable augmentations (paper §3, supplementary §1).

One flat dataclass so that a training config can embed it and override any field with
``augment.<field>=value``. Every field carries its help and bounds (:func:`ctrlaug.utils.cfgtools.opt`);
the defaults are the paper's.
"""

from __future__ import annotations

import math

from ctrlaug.utils.cfgtools import config, opt

__all__ = ["AugmentConfig", "PAPER_BLUR_LEVELS"]

# (kernel size, sigma_lo, sigma_hi): supplementary §1, "2 radius (7, 11) x 2 sigma ranges".
PAPER_BLUR_LEVELS: tuple[tuple[int, float, float], ...] = (
    (7, 0.1, 0.5),
    (7, 0.5, 2.0),
    (11, 0.1, 0.5),
    (11, 0.5, 2.0),
)


@config
class AugmentConfig:
    """Parameters of tau_p (crop, flip, temporal sampling) and tau_l (colour jitter, blur)."""

    # ---- output --------------------------------------------------------------------------------
    size: int = opt(112, "spatial side of every view after the resize-crop (paper §4.2: 16x112x112)", min=1)

    # ---- tau_p: global view --------------------------------------------------------------------
    global_frames: int = opt(16, "frames of the global view, sampled uniformly over the whole video", min=1)
    global_temporal_jitter: bool = opt(
        False, "False: middle frame of each of the 16 segments; True: a random frame of each"
    )
    global_area: tuple[float, float] = opt((0.8, 1.0), "crop area as a fraction of the frame (weak crop)")
    global_flip_prob: float = opt(
        0.5, "probability of mirroring the global view horizontally", min=0.0, max=1.0
    )

    # ---- tau_p: local clips --------------------------------------------------------------------
    num_clips: int = opt(4, "K local clips per video (Table 4)", min=1)
    clip_frames: int = opt(
        16, "consecutive frames per clip (must equal global_frames: views are stacked)", min=1
    )
    clip_step: int = opt(1, "frame step inside a clip (1 = consecutive frames)", min=1)
    local_area: tuple[float, float] = opt((0.4, 0.8), "crop area as a fraction of the *global crop* area")
    local_flip_prob: float = opt(
        0.5, "probability of mirroring each clip, independent of the global flip", min=0.0, max=1.0
    )

    # ---- tau_p: shared -------------------------------------------------------------------------
    aspect: tuple[float, float] = opt((3 / 4, 4 / 3), "crop aspect (width/height, in pixels), log-uniform")
    short_video: str = opt(
        "stretch",
        "fewer frames than a clip: 'stretch' (resample the whole video) or 'skip'",
        choices=("stretch", "skip"),
    )

    # ---- evaluation views (paper §4.2: 10 uniformly spaced clips, centre crop) ---------------------
    eval_clips: int = opt(10, "clips per video in evaluation mode", min=1)
    eval_crop: float = opt(0.875, "centre square side as a fraction of the short side (112/128)", max=1.0)

    # ---- tau_l: intensity levels (Table 5, supplementary §1) ------------------------------------
    brightness: float = opt(0.4, "max brightness strength: factor = 1 +- s, s in [0, brightness]", min=0.0)
    contrast: float = opt(0.4, "max contrast strength", min=0.0)
    saturation: float = opt(0.4, "max saturation strength", min=0.0)
    hue: float = opt(0.1, "max hue shift, in turns of the colour wheel", min=0.0, max=0.5)
    levels_brightness: int = opt(4, "bins of [0, brightness] (paper: 4)", min=1)
    levels_contrast: int = opt(4, "bins of [0, contrast] (paper: 4)", min=1)
    levels_saturation: int = opt(4, "bins of [0, saturation] (paper: 4)", min=1)
    levels_hue: int = opt(2, "bins of [0, hue] (paper: 2)", min=1)
    blur_levels: tuple[tuple[int, float, float], ...] = opt(
        PAPER_BLUR_LEVELS, "blur levels: (kernel size, sigma_lo, sigma_hi) each"
    )
    signed_levels: bool = opt(
        False,
        "the paper bins [0, max] without saying whether a level fixes the sign (our reading either way): "
        "False: bins over |strength| with a random sign (views of one level may be brighter or darker); "
        "True: bins over the signed range [-max, max], so views of one level share low-level "
        "statistics (measured: docs/ablation.md, level reading)",
    )
    levels_per_step: int = opt(32, "distinct levels drawn per training step (paper: 32)", min=1)
    min_views_per_level: int = opt(
        2, "fewer levels are used when a batch is too small to give each this many views", min=1
    )

    def _problems(self) -> list[str]:
        """Cross-field checks (the bounds of single fields are in their ``opt``)."""
        errs = []
        for name in ("global_area", "local_area"):
            lo, hi = getattr(self, name)
            if not (0.0 <= lo <= hi <= 1.0) or hi <= 0:
                errs.append(f"{name}: {(lo, hi)} must satisfy 0.0 <= lo <= hi <= 1.0")
        if not (0 < self.aspect[0] <= self.aspect[1]):
            errs.append(f"aspect: {self.aspect} must satisfy 0 < lo <= hi")
        if self.global_frames != self.clip_frames:
            errs.append(
                f"global_frames: {self.global_frames} must equal clip_frames={self.clip_frames}: "
                "the global view and the clips are stacked into one [V, C, T, H, W] tensor"
            )
        if not 0.0 < self.eval_crop:
            errs.append(f"eval_crop: {self.eval_crop} must lie in (0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            if not getattr(self, name) < 1.0:
                errs.append(f"{name}: {getattr(self, name)} must lie in [0, 1)")
        if len(self.blur_levels) < 1:
            errs.append("blur_levels: must hold at least one (kernel, sigma_lo, sigma_hi)")
        for lvl in self.blur_levels:
            if len(lvl) != 3:
                errs.append(f"blur_levels: entry {lvl!r} must be (kernel, sigma_lo, sigma_hi)")
                continue
            k, lo, hi = lvl
            if int(k) != k or k < 1 or k % 2 == 0 or not (0 < lo <= hi):
                errs.append(
                    f"blur_levels: entry {lvl!r}: kernel must be a positive odd integer "
                    "and 0 < sigma_lo <= sigma_hi"
                )
        return errs

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

    @property
    def max_blur_kernel(self) -> int:
        return int(max(k for k, _, _ in self.blur_levels))
