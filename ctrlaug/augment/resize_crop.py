"""Apply view boxes to decoded uint8 frames: one bilinear resize-crop per view, flip included.

The crop is sampled straight from the decoded frames with ``grid_sample`` (one resampling, no
crop-then-resize-twice): output pixel ``(i, j)`` of a view with box ``(y0, y1, x0, x1)`` reads the
source at normalised ``y = y0 + (i + 0.5) / h * (y1 - y0)`` and ``x = x0 + (j + 0.5) / w * (x1 - x0)``
(``j`` replaced by ``w - 1 - j`` when flipped), so the pixels are exactly what the box says.
Batched over videos and views; runs on whatever device the frames are on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["apply_views", "view_grid"]


def view_grid(
    boxes: torch.Tensor,
    size: tuple[int, int],
    frame_hw: torch.Tensor,
    padded_hw: tuple[int, int],
) -> torch.Tensor:
    """``grid_sample`` sampling grids for view boxes.

    boxes: [N, 7] float. size: output (h, w). frame_hw: [N, 2] valid (height, width) in pixels of
    each view's source frames, which sit in the top-left corner of a (padded) ``padded_hw`` tensor.
    Returns float32 [N, h, w, 2] in ``align_corners=False`` coordinates of the padded tensor. Sample
    positions are clamped to the centres of the valid border pixels, i.e. ``padding_mode="border"``
    with respect to the valid region (padding is never read).
    """
    h, w = size
    dev = boxes.device
    b = boxes.to(torch.float32)
    iy = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h  # [h]
    ix = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w  # [w]
    ys = b[:, 2:3] + iy[None] * (b[:, 3:4] - b[:, 2:3])  # [N, h] in [0, 1] of the valid frame
    xs = b[:, 4:5] + ix[None] * (b[:, 5:6] - b[:, 4:5])  # [N, w]
    xs = torch.where(b[:, 6:7] > 0.5, xs.flip(1), xs)  # mirrored view: column j shows column w-1-j
    fhw = frame_hw.to(device=dev, dtype=torch.float32)
    vh, vw = fhw[:, 0:1], fhw[:, 1:2]
    ys_px = torch.minimum(torch.clamp(ys * vh, min=0.5), vh - 0.5)
    xs_px = torch.minimum(torch.clamp(xs * vw, min=0.5), vw - 0.5)
    gy = ys_px / padded_hw[0] * 2 - 1
    gx = xs_px / padded_hw[1] * 2 - 1
    return torch.stack([gx[:, None, :].expand(-1, h, w), gy[:, :, None].expand(-1, h, w)], dim=-1)


def apply_views(
    frames: torch.Tensor,
    frame_idx: torch.Tensor,
    boxes: torch.Tensor,
    size: int | tuple[int, int] = 112,
    *,
    frame_hw: torch.Tensor | None = None,
    mode: str = "bilinear",
    max_frames_per_chunk: int = 2048,
) -> torch.Tensor:
    """Resize-crop every view from decoded frames in one resampling, honouring flip.

    Args:
        frames: uint8 (or float) decoded frames, channels last: ``[U, H, W, C]`` for one video or
            ``[B, U, H, W, C]`` for a padded batch of videos.
        frame_idx: int64 positions into ``U`` of each view's frames: ``[V, F]`` or ``[B, V, F]``.
        boxes: float ``[V, 7]`` or ``[B, V, 7]`` view boxes ``(t0, t1, y0, y1, x0, x1, flip)``; only the
            spatial part and flip are used here (the time part is carried by ``frame_idx``).
        size: output side (int) or (h, w); paper: 112.
        frame_hw: optional int ``[B, 2]`` valid (height, width) of each video inside a padded batch.
        mode: ``grid_sample`` interpolation ("bilinear" or "nearest").
        max_frames_per_chunk: bounds the float working memory (frames gathered per chunk).

    Returns:
        ``[V, C, F, h, w]`` (or ``[B, V, C, F, h, w]``) with the dtype of ``frames`` (uint8 values are
        rounded and clamped), on the frames' device.
    """
    if isinstance(size, int):
        size = (size, size)
    batched = frames.dim() == 5
    if not batched:
        if frames.dim() != 4:
            raise ValueError(
                f"apply_views: frames must be [U, H, W, C] or [B, U, H, W, C], got {tuple(frames.shape)}"
            )
        frames, frame_idx, boxes = frames[None], frame_idx[None], boxes[None]
        if frame_hw is not None:
            frame_hw = frame_hw.reshape(1, 2)
    B, U, H, W, C = frames.shape
    if frame_idx.dim() != 3 or frame_idx.shape[0] != B:
        raise ValueError(
            f"apply_views: frame_idx must be [B, V, F] matching frames, got {tuple(frame_idx.shape)}"
        )
    if boxes.shape != (*frame_idx.shape[:2], 7):
        raise ValueError(
            f"apply_views: boxes must be [B, V, 7]={(*frame_idx.shape[:2], 7)}, got {tuple(boxes.shape)}"
        )
    V, Fr = frame_idx.shape[1], frame_idx.shape[2]
    dev = frames.device
    frame_idx = frame_idx.to(dev)
    if frame_idx.numel() and (int(frame_idx.min()) < 0 or int(frame_idx.max()) >= U):
        raise IndexError(
            f"apply_views: frame_idx out of range [0, {U}) (min {int(frame_idx.min())}, max {int(frame_idx.max())})"
        )
    if frame_hw is None:
        fhw = torch.tensor([[H, W]], device=dev).expand(B, 2)
    else:
        fhw = frame_hw.to(dev)
    flat_boxes = boxes.to(dev).reshape(B * V, 7)
    flat_hw = fhw[:, None, :].expand(B, V, 2).reshape(B * V, 2)
    grid = view_grid(flat_boxes, size, flat_hw, (H, W))  # [B*V, h, w, 2]
    vid = torch.arange(B, device=dev)[:, None].expand(B, V).reshape(B * V)
    fidx = frame_idx.reshape(B * V, Fr)
    out_dtype = frames.dtype
    work = torch.float32 if not frames.is_floating_point() else frames.dtype
    out = torch.empty((B * V, C, Fr, size[0], size[1]), dtype=out_dtype, device=dev)
    # All frames of a view share one grid, so they ride in the channel dimension: one grid_sample
    # call over [n, C*F, H, W] writes [n, C, F, h, w] directly (no grid expansion, no output permute).
    views_per_chunk = max(1, max_frames_per_chunk // max(Fr, 1))
    for s in range(0, B * V, views_per_chunk):
        e = min(B * V, s + views_per_chunk)
        n = e - s
        src = frames[vid[s:e, None], fidx[s:e]]  # [n, F, H, W, C]
        src = src.permute(0, 4, 1, 2, 3).to(work).reshape(n, C * Fr, H, W)
        res = F.grid_sample(src, grid[s:e].to(work), mode=mode, padding_mode="border", align_corners=False)
        if out_dtype == torch.uint8:
            # bilinear/nearest weights are convex, so values stay in [0, 255]: +0.5 and truncate = round
            res = res.add_(0.5)
        out[s:e] = res.reshape(n, C, Fr, size[0], size[1]).to(out_dtype)
    out = out.reshape(B, V, C, Fr, size[0], size[1])
    return out if batched else out[0]
