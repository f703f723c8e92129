"""Position augmentations tau_p: temporal sampling, spatial crop and flip, returned as data.

Every view is described by a box ``(t0, t1, y0, y1, x0, x1, flip)`` in the *source video's*
normalised coordinates (docs/design.md §2), the format ``ctrlaug.ops.correspondence`` consumes:

* time: frame ``f`` of a ``T``-frame video covers ``[f/T, (f+1)/T]``, so a clip of frames
  ``a, a+s, ..., b`` has ``t0 = a/T`` and ``t1 = (b+1)/T``;
* space: ``y`` and ``x`` over the full frame ``[0, 1]``; crops are continuous (not snapped to
  pixels) because :func:`ctrlaug.augment.apply_views` samples exactly the box;
* ``flip = 1.0`` when the view is mirrored horizontally.

The global view spans the whole duration (box ``t = [0, 1]``): its 16 frames are the middle frames
of 16 equal segments of the video, so output frame ``i`` stands for segment ``[i/16, (i+1)/16]``
and the global feature cell ``j`` of an 8-cell grid covers ``[j/8, (j+1)/8]``. Every clip box then
lies inside the global box and correspondence rows sum to 1 (paper §3.1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .config import AugmentConfig

__all__ = ["Views", "sample_views", "sample_eval_views", "crop_rect", "clip_starts_range"]


class Views(NamedTuple):
    """Parameters of one video's views (global first when stacked).

    global_box: float32 [7]; global_frames: int64 [G]; clip_boxes: float32 [K, 7];
    clip_frames: int64 [K, L]. Frame indices are 0-based indices into the (trimmed) video.
    """

    global_box: torch.Tensor
    global_frames: torch.Tensor
    clip_boxes: torch.Tensor
    clip_frames: torch.Tensor

    @property
    def boxes(self) -> torch.Tensor:
        """float32 [1 + K, 7]: the global box in row 0, then the clips."""
        return torch.cat([self.global_box[None], self.clip_boxes], 0)

    @property
    def frames(self) -> torch.Tensor:
        """int64 [1 + K, L]: the global view's frame indices in row 0, then the clips' (needs G == L)."""
        if self.global_frames.shape[0] != self.clip_frames.shape[1]:
            raise ValueError(
                f"cannot stack {self.global_frames.shape[0]} global frames with clips of {self.clip_frames.shape[1]}"
            )
        return torch.cat([self.global_frames[None], self.clip_frames], 0)


class _Uniforms:
    """Pre-drawn U[0, 1) numbers consumed one by one (one torch call per video, then Python floats)."""

    def __init__(self, n: int, generator: torch.Generator | None) -> None:
        self._u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        self._i = 0

    def __call__(self) -> float:
        u = self._u[self._i]
        self._i += 1
        return u


def crop_rect(
    area_frac: float,
    u_aspect: float,
    u_y: float,
    u_x: float,
    container_hw_px: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[float, float, float, float]:
    """A rectangle of ``area_frac`` of a container, placed inside it, in the container's [0,1] units.

    The aspect ratio (width/height in pixels) is log-uniform over the part of ``aspect`` for which
    the rectangle fits; when no aspect in range fits (very wide or tall frames), the nearest fitting
    aspect is used, so the *area* is always exact and the rectangle always inside.
    Returns ``(y0, y1, x0, x1)`` with ``0 <= y0 < y1 <= 1``, ``0 <= x0 < x1 <= 1``.
    """
    ch, cw = container_hw_px
    a_px = area_frac * ch * cw
    lo = math.log(aspect[0])
    hi = math.log(aspect[1])
    fit_lo = math.log(a_px / (ch * ch))  # narrower than this -> taller than the container
    fit_hi = math.log(cw * cw / a_px)  # wider than this -> wider than the container
    lo2, hi2 = max(lo, fit_lo), min(hi, fit_hi)
    if lo2 <= hi2:
        log_r = lo2 + u_aspect * (hi2 - lo2)
    else:  # the requested aspect range does not fit: take the nearest aspect that does
        log_r = fit_lo if fit_lo > hi else fit_hi
    r = math.exp(log_r)
    h = min(1.0, math.sqrt(a_px / r) / ch)
    w = min(1.0, area_frac / h)
    y0 = u_y * (1.0 - h)
    x0 = u_x * (1.0 - w)
    return y0, y0 + h, x0, x0 + w


def clip_starts_range(k: int, num_clips: int, num_frames: int, span: int) -> tuple[int, int]:
    """Inclusive range of start frames putting clip ``k``'s centre in ``[kT/K, (k+1)T/K]`` (paper §3.1).

    The clip of ``span`` frames starting at ``a`` covers ``[a/T, (a+span)/T]``, centre
    ``(a + span/2)/T``; it must also lie inside the video (``0 <= a <= T - span``). When both cannot
    hold (``T < K*span/2``) the range collapses to the inside start nearest the bin's middle.
    """
    T, K = num_frames, num_clips
    lo = max(math.ceil(k * T / K - span / 2 - 1e-9), 0)
    hi = min(math.floor((k + 1) * T / K - span / 2 + 1e-9), T - span)
    if lo > hi:
        mid = round((k + 0.5) * T / K - span / 2)
        lo = hi = min(max(mid, 0), T - span)
    return lo, hi


def _global_indices(T: int, G: int, jitter: bool, uni: _Uniforms | None) -> list[int]:
    out = []
    for i in range(G):
        off = uni() if (jitter and uni is not None) else 0.5
        out.append(min(int(math.floor((i + off) * T / G)), T - 1))
    return out


def sample_views(
    num_frames: int,
    height: int,
    width: int,
    *,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> Views:
    """Draw tau_p for one video: the global view and K local clips (paper §3.1, supp. §1).

    Args:
        num_frames: T, frames of the video (after any trimming). Must be >= 1.
        height, width: frame size in pixels (only the aspect matters; boxes are normalised).
        cfg: :class:`AugmentConfig` (defaults: 16-frame views, K=4, areas 0.8-1.0 / 0.4-0.8).
        generator: torch CPU generator; the same generator state gives the same views.

    Returns:
        :class:`Views` with ``global_box`` float32 [7], ``global_frames`` int64 [16],
        ``clip_boxes`` float32 [K, 7], ``clip_frames`` int64 [K, 16].

    Global view: 16 frames, the middle frame of each of 16 equal segments (box t = [0, 1]); crop of
    area U[0.8, 1.0] of the frame, aspect log-U[3/4, 4/3]; flip with p = 0.5.
    Clip k (0-based): 16 frames with step ``clip_step``, start uniform over the integer starts whose
    centre lies in ``[kT/K, (k+1)T/K]`` and whose frames lie inside the video; crop of area
    U[0.4, 0.8] of the *global crop*, placed inside it; own flip with p = 0.5.

    Short videos: if ``T < (L-1)*step + 1`` the step is reduced to the largest one that fits; if
    even step 1 does not fit (``T < L``) the "stretch" policy samples the clip like the global view
    (16 frames spread over the whole video, box t = [0, 1], frames repeat) so the box stays
    truthful; with ``short_video="skip"`` a ValueError is raised instead. Centres satisfy their bins
    whenever ``T >= K * span / 2`` (32 frames by default); below that, each clip takes the inside
    position nearest its bin.
    """
    cfg = cfg or AugmentConfig()
    T, H, W = int(num_frames), int(height), int(width)
    if T < 1 or H < 1 or W < 1:
        raise ValueError(f"sample_views needs num_frames, height, width >= 1, got {(T, H, W)}")
    K, L, G = cfg.num_clips, cfg.clip_frames, cfg.global_frames
    n_u = 5 + K * 6 + (G if cfg.global_temporal_jitter else 0)
    uni = _Uniforms(n_u, generator)

    # -- global view ------------------------------------------------------------------------------
    a_lo, a_hi = cfg.global_area
    g_area = a_lo + uni() * (a_hi - a_lo)
    gy0, gy1, gx0, gx1 = crop_rect(g_area, uni(), uni(), uni(), (H, W), cfg.aspect)
    g_flip = 1.0 if uni() < cfg.global_flip_prob else 0.0
    g_frames = _global_indices(T, G, cfg.global_temporal_jitter, uni)
    global_box = [0.0, 1.0, gy0, gy1, gx0, gx1, g_flip]

    # -- clips ------------------------------------------------------------------------------------
    step = cfg.clip_step
    while step > 1 and (L - 1) * step + 1 > T:
        step -= 1
    span = (L - 1) * step + 1
    stretch = span > T
    if stretch and cfg.short_video == "skip":
        raise ValueError(f"video too short: {T} frames < clip length {L} (AugmentConfig.short_video='skip')")
    gh_px, gw_px = (gy1 - gy0) * H, (gx1 - gx0) * W
    l_lo, l_hi = cfg.local_area
    clip_boxes, clip_frames = [], []
    for k in range(K):
        u_start = uni()
        if stretch:
            frames = _global_indices(T, L, False, None)
            t0, t1 = 0.0, 1.0
        else:
            lo, hi = clip_starts_range(k, K, T, span)
            a = min(lo + int(u_start * (hi - lo + 1)), hi)
            frames = [a + step * i for i in range(L)]
            t0, t1 = a / T, (a + span) / T
        area = l_lo + uni() * (l_hi - l_lo)
        ly0, ly1, lx0, lx1 = crop_rect(area, uni(), uni(), uni(), (gh_px, gw_px), cfg.aspect)
        flip = 1.0 if uni() < cfg.local_flip_prob else 0.0
        clip_boxes.append(
            [
                t0,
                t1,
                max(gy0, gy0 + ly0 * (gy1 - gy0)),
                min(gy1, gy0 + ly1 * (gy1 - gy0)),
                max(gx0, gx0 + lx0 * (gx1 - gx0)),
                min(gx1, gx0 + lx1 * (gx1 - gx0)),
                flip,
            ]
        )
        clip_frames.append(frames)

    return Views(
        torch.tensor(global_box, dtype=torch.float32),
        torch.tensor(g_frames, dtype=torch.int64),
        torch.tensor(clip_boxes, dtype=torch.float32).reshape(K, 7),
        torch.tensor(clip_frames, dtype=torch.int64).reshape(K, L),
    )


def sample_eval_views(
    num_frames: int, height: int, width: int, *, cfg: AugmentConfig | None = None, crops: int = 1
) -> Views:
    """Deterministic evaluation views (paper §4.2): ``eval_clips`` uniformly spaced 16-frame clips,
    centre square crop of side ``eval_crop * min(H, W)``, no flip.

    ``crops=3`` (the field's 3-crop test; not the paper's): each clip is taken at three square
    crops of that side -- left/centre/right along the longer side (top/centre/bottom for a portrait
    video), centred along the shorter one -- giving ``eval_clips * 3`` views, clip-major (clip 0's
    three crops first).

    Returns :class:`Views` whose ``clip_boxes`` [N, 7] / ``clip_frames`` [N, L] are the N clips; the
    global entries describe the whole video (16 segment-middle frames, same centre crop) so that the
    structure matches :func:`sample_views`.
    """
    cfg = cfg or AugmentConfig()
    T, H, W = int(num_frames), int(height), int(width)
    if T < 1 or H < 1 or W < 1:
        raise ValueError(f"sample_eval_views needs num_frames, height, width >= 1, got {(T, H, W)}")
    L, N = cfg.clip_frames, cfg.eval_clips
    if crops not in (1, 3):
        raise ValueError(f"sample_eval_views: crops must be 1 or 3, got {crops!r}")
    side = cfg.eval_crop * min(H, W)
    hn, wn = side / H, side / W
    y0, x0 = (1 - hn) / 2, (1 - wn) / 2
    if crops == 1:
        offsets = [(y0, x0)]
    elif W >= H:  # left, centre, right
        offsets = [(y0, 0.0), (y0, x0), (y0, 1 - wn)]
    else:  # top, centre, bottom
        offsets = [(0.0, x0), (y0, x0), (1 - hn, x0)]
    step = cfg.clip_step
    while step > 1 and (L - 1) * step + 1 > T:
        step -= 1
    span = (L - 1) * step + 1
    boxes, frames = [], []
    for n in range(N):
        if span > T:
            fr = _global_indices(T, L, False, None)
            t0, t1 = 0.0, 1.0
        else:
            a = round(n * (T - span) / (N - 1)) if N > 1 else (T - span) // 2
            fr = [a + step * i for i in range(L)]
            t0, t1 = a / T, (a + span) / T
        for cy, cx in offsets:
            boxes.append([t0, t1, cy, cy + hn, cx, cx + wn, 0.0])
            frames.append(fr)
    g_frames = _global_indices(T, cfg.global_frames, False, None)
    return Views(
        torch.tensor([0.0, 1.0, y0, y0 + hn, x0, x0 + wn, 0.0], dtype=torch.float32),
        torch.tensor(g_frames, dtype=torch.int64),
        torch.tensor(boxes, dtype=torch.float32).reshape(N * len(offsets), 7),
        torch.tensor(frames, dtype=torch.int64).reshape(N * len(offsets), L),
    )
