"""Tube-intersection correspondence between clip and video feature grids (supplementary eq. 1-5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _registry
from .reference import correspondence_ref

__all__ = ["correspondence"]


def _check_grid(name: str, grid: Sequence[int]) -> tuple[int, int, int]:
    g = tuple(int(x) for x in grid)
    if len(g) != 3 or min(g) <= 0:
        raise ValueError(f"{name} must be three positive ints (T, H, W), got {tuple(grid)!r}")
    return g


def correspondence(
    clip_boxes: torch.Tensor,
    video_boxes: torch.Tensor,
    clip_grid: Sequence[int],
    video_grid: Sequence[int],
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft correspondence S between each clip's feature cells and its video's feature cells.

    S[p, i, j] = |tube(clip p, cell i) ∩ tube(video of clip p, cell j)| / |tube(clip p, cell i)|
    (paper eq. 1; supplementary eq. 1-5). It factorises into 1-D overlaps in t, y and x, so each
    row has few non-zeros, and a row sums to the fraction of the clip cell covered by the video
    (1 when the clip box is nested in the video box, as the sampler guarantees).

    Args:
        clip_boxes: [P, 7] float boxes ``(t0, t1, y0, y1, x0, x1, flip)`` in source-video
            normalised coordinates (docs/design.md §2). ``flip`` = 1 mirrors the view horizontally.
        video_boxes: [P, 7], row p is the box of clip p's video (gather by owner beforehand).
        clip_grid: (Tc, H, W) of the clip feature map, e.g. (2, 4, 4).
        video_grid: (Tv, Hv, Wv) of the global feature map, e.g. (8, 4, 4).
        backend: "auto", "reference", "cpp", "triton" or "cuda".

    Returns:
        float32 [P, Tc*H*W, Tv*Hv*Wv], cells flattened t-major, then h, then w. One launch for
        the whole batch on every fused backend.
    """
    cg = _check_grid("clip_grid", clip_grid)
    vg = _check_grid("video_grid", video_grid)
    for name, b in (("clip_boxes", clip_boxes), ("video_boxes", video_boxes)):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 7:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{name} must be a [P, 7] tensor (t0, t1, y0, y1, x0, x1, flip), got {shape}")
        if not b.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {b.dtype}")
    if clip_boxes.shape[0] != video_boxes.shape[0]:
        raise ValueError(
            f"clip_boxes and video_boxes need one row per clip: got {clip_boxes.shape[0]} and "
            f"{video_boxes.shape[0]} rows (gather video boxes by owner first)"
        )
    if clip_boxes.device != video_boxes.device:
        raise ValueError(f"clip_boxes on {clip_boxes.device} but video_boxes on {video_boxes.device}")

    chosen = _registry.resolve(backend, clip_boxes.device, "correspondence")
    if chosen == "reference":
        return correspondence_ref(clip_boxes, video_boxes, cg, vg)
    op = _registry.op_handle(chosen, "correspondence")
    return op(
        clip_boxes.detach().to(torch.float32).contiguous(),
        video_boxes.detach().to(torch.float32).contiguous(),
        list(cg),
        list(vg),
    )
