"""Pictures of a pretrained encoder: class-agnostic activation maps (CAAM, paper §4.3, Fig. 5).

``python -m ctrlaug.viz caam --checkpoint RUN_OR_CKPT --video FILE [--video FILE2 ...] --out PNG``

The CAAM of a clip is the channel mean of the last stage's spatio-temporal feature map
[T', H', W'], upsampled (trilinear) to the clip's frames [F, S, S] and min-max normalised over the
whole clip. The PNG holds, per video, a row of the input frames and a row of the frames with the
map overlaid (jet-like colours, alpha 0.5). Drawing uses Pillow only; ``--gif`` also writes an
animated GIF of the overlay.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.models import prepare_input
from ctrlaug.utils.atomic import atomic_open

__all__ = ["caam", "load_clip", "colorize", "caam_strip"]


@torch.no_grad()
def caam(encoder: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """Class-agnostic activation map of clips.

    Args:
        encoder: R3D returning the last feature map [N, C, T', H', W'].
        clip: uint8 [N, 3, F, S, S] (or [3, F, S, S]) RGB clips.

    Returns float32 [N, F, S, S] in [0, 1]: channel-mean activation upsampled to the frames,
    min-max normalised per clip (a constant map gives zeros).
    """
    single = clip.dim() == 4
    x = clip[None] if single else clip
    was = encoder.training
    encoder.eval()
    try:
        fmap = encoder(prepare_input(x)).float()  # [N, C, T', H', W']
    finally:
        encoder.train(was)
    m = fmap.mean(1, keepdim=True)  # [N, 1, T', H', W']
    m = F.interpolate(m, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
    lo = m.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = m.flatten(1).max(1).values.view(-1, 1, 1, 1)
    m = (m - lo) / (hi - lo).clamp_min(1e-12)
    return m[0] if single else m


def load_clip(
    path: str, num_frames: int = 16, size: int = 112, crop: float = 0.875
) -> tuple[torch.Tensor, list]:
    """``num_frames`` frames uniformly spread over a video (via :mod:`ctrlaug.data.decode`), centre
    square crop of side ``crop * min(H, W)`` resized to ``size``.

    Returns (uint8 [3, F, size, size], frame indices).
    """
    from ctrlaug.data.decode import probe_video, read_frames

    T = probe_video(path).num_frames
    idx = [min(T - 1, int((i + 0.5) * T / num_frames)) for i in range(num_frames)]
    fr = torch.from_numpy(read_frames(path, idx))  # [F, H, W, 3]
    H, W = fr.shape[1:3]
    side = max(1, int(round(crop * min(H, W))))
    y0, x0 = (H - side) // 2, (W - side) // 2
    fr = fr[:, y0 : y0 + side, x0 : x0 + side].permute(0, 3, 1, 2).float()  # [F, 3, s, s]
    fr = F.interpolate(fr, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return fr.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous(), idx


def colorize(m: np.ndarray) -> np.ndarray:
    """float [...] in [0, 1] -> uint8 [..., 3] jet-like colours (blue low, red high)."""
    m = np.clip(m, 0, 1)
    r = np.clip(1.5 - np.abs(4 * m - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * m - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * m - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def overlay(clip: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """uint8 [3, F, S, S] clip + float [F, S, S] map -> uint8 [F, S, S, 3] blended frames."""
    fr = clip.permute(1, 2, 3, 0).numpy().astype(np.float32)
    col = colorize(maps.numpy()).astype(np.float32)
    return ((1 - alpha) * fr + alpha * col).round().clip(0, 255).astype(np.uint8)


def caam_strip(clips: list[torch.Tensor], maps: list[torch.Tensor], columns: int = 8, alpha: float = 0.5):
    """PIL image: per video a row of ``columns`` frames and a row of their overlays (2 px gaps)."""
    from PIL import Image

    S = clips[0].shape[-1]
    gap = 2
    cols = min(columns, clips[0].shape[1])
    W = cols * S + (cols - 1) * gap
    H = len(clips) * (2 * S + gap) + (len(clips) - 1) * 3 * gap
    canvas = np.full((H, W, 3), 255, np.uint8)
    for v, (c, m) in enumerate(zip(clips, maps)):
        F_ = c.shape[1]
        pick = np.linspace(0, F_ - 1, cols).round().astype(int)
        raw = c.permute(1, 2, 3, 0).numpy()
        ov = overlay(c, m, alpha)
        y = v * (2 * S + 4 * gap)
        for j, f in enumerate(pick):
            x = j * (S + gap)
            canvas[y : y + S, x : x + S] = raw[f]
            canvas[y + S + gap : y + 2 * S + gap, x : x + S] = ov[f]
    return Image.fromarray(canvas)


def run_caam(
    videos: list[str],
    out: str,
    *,
    checkpoint: str | None = None,
    config: str | None = None,
    random_init: bool = False,
    gif: str | None = None,
    frames: int = 0,
    size: int = 0,
    columns: int = 8,
) -> list[str]:
    """CAAMs of ``videos`` for the encoder of ``checkpoint`` (or a random-init one) as a PNG strip
    at ``out`` (and an animated GIF at ``gif``); ``frames``/``size`` 0 = the config's clip length
    and crop. Returns the paths written; bad input raises :class:`ctrlaug.errors.EvalError`."""
    from ctrlaug.errors import EvalError
    from ctrlaug.eval.encoder import load_encoder

    enc, cfg, _ = load_encoder(checkpoint, config, random_init)
    size = size or cfg.augment.size
    frames = frames or cfg.augment.clip_frames
    clips, maps = [], []
    for path in videos:
        try:
            clip, _ = load_clip(path, frames, size, cfg.augment.eval_crop)
        except Exception as e:
            raise EvalError(f"cannot read video {path}: {e}".splitlines()[0]) from None
        clips.append(clip)
        maps.append(caam(enc, clip))
    img = caam_strip(clips, maps, columns)
    with atomic_open(out, "wb") as f:  # temp + rename: never through a planted link
        img.save(f, format="PNG")
    written = [out]
    if gif:
        from PIL import Image

        frames_ov = np.concatenate([overlay(c, m) for c, m in zip(clips, maps)], axis=2)  # side by side
        ims = [Image.fromarray(f) for f in frames_ov]
        with atomic_open(gif, "wb") as f:
            ims[0].save(f, format="GIF", save_all=True, append_images=ims[1:], duration=120, loop=0)
        written.append(gif)
    return written
