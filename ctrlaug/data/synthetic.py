"""Synthetic motion videos: the class is defined only by motion.

Each video shows one or two textured objects over a textured background. The background type and
colours, the object textures, shapes, sizes, count, start positions, speeds and phases are all drawn
independently of the class; the class only decides *how the objects move*:

====  ==============  =======================================================================
 id    name            motion
====  ==============  =======================================================================
 0     right           straight line, left to right (wraps around the frame)
 1     left            straight line, right to left -- the time reverse of ``right``
 2     down            straight line, top to bottom
 3     up              straight line, bottom to top
 4     clockwise       circle, clockwise on screen
 5     anticlockwise   circle, anticlockwise -- the time reverse of ``clockwise``
 6     shake_h         fast horizontal back-and-forth around a fixed point (rhythm)
 7     shake_v         fast vertical back-and-forth
====  ==============  =======================================================================

A single frame says nothing about the class (every position, colour and texture is possible for
every class), and pairs of classes differ only by the direction of time, so a model must use
motion and temporal order -- the paper's Diving-48 point. Videos are deterministic functions of
``(seed, split, index)``; labels are ``index % num_classes`` (balanced). They are rendered on the
fly by :class:`SyntheticMotion` or written to disk as mp4 by :func:`write_synthetic` in the
class-per-folder layout, so the real decoding path can be exercised end to end.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..utils.cfgtools import SEED_MAX, config, opt

__all__ = ["SyntheticConfig", "MOTION_CLASSES", "render_video", "write_synthetic", "SyntheticReader"]

MOTION_CLASSES = ("right", "left", "down", "up", "clockwise", "anticlockwise", "shake_h", "shake_v")
_SPLIT_CODE = {"train": 0, "test": 1, "val": 2}


@config
class SyntheticConfig:
    """Size and seed of the synthetic motion set (defaults sized for a CPU demo)."""

    num_classes: int = opt(8, "first N of MOTION_CLASSES", min=2, max=len(MOTION_CLASSES))
    train_per_class: int = opt(64, "videos per class in the train split")
    test_per_class: int = opt(16, "videos per class in the test split")
    num_frames: int = opt(48, "frames per video (>= 32 so K=4 clips of 16 keep their centre bins)", min=2)
    size: int = opt(64, "frame height = width in pixels (even, for 4:2:0 mp4)", min=16)
    fps: int = opt(25, "frame rate written to mp4")
    max_objects: int = opt(2, "1..max_objects moving objects per video, all with the class's motion", min=1)
    noise: float = opt(3.0, "std of per-frame pixel noise (0 disables)")
    seed: int = opt(0, "base seed; video i of split s is rendered from (seed, s, i)", min=0, max=SEED_MAX)

    def _problems(self) -> list[str]:
        return [f"size: {self.size} must be an even number >= 16"] if self.size % 2 else []

    @property
    def classes(self) -> list[str]:
        return list(MOTION_CLASSES[: self.num_classes])

    def split_size(self, split: str) -> int:
        if split not in _SPLIT_CODE:
            raise ValueError(f"synthetic split must be one of {sorted(_SPLIT_CODE)}, got {split!r}")
        per = self.train_per_class if split == "train" else self.test_per_class
        return per * self.num_classes


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random float32 [h, w, 3] texture: smooth noise, stripes, checker or gradient."""
    kind = int(rng.integers(4))
    c0, c1 = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # smooth noise: bilinear upsampling of a coarse grid
        g = int(rng.integers(3, 7))
        coarse = rng.uniform(0, 1, size=(g + 1, g + 1)).astype(np.float32)
        fy, fx = yy / max(h - 1, 1) * g, xx / max(w - 1, 1) * g
        y0, x0 = np.minimum(fy.astype(int), g - 1), np.minimum(fx.astype(int), g - 1)
        ty, tx = fy - y0, fx - x0
        a = coarse[y0, x0] * (1 - tx) + coarse[y0, x0 + 1] * tx
        b = coarse[y0 + 1, x0] * (1 - tx) + coarse[y0 + 1, x0 + 1] * tx
        m = a * (1 - ty) + b * ty
    elif kind == 1:  # stripes at a random angle and period
        th = rng.uniform(0, math.pi)
        period = rng.uniform(4, max(6.0, min(h, w) / 2))
        m = 0.5 + 0.5 * np.sin((xx * math.cos(th) + yy * math.sin(th)) * 2 * math.pi / period)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(3, max(4, min(h, w) // 3)))
        m = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    else:  # linear gradient
        th = rng.uniform(0, 2 * math.pi)
        m = xx * math.cos(th) + yy * math.sin(th)
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-6)
    return (c0[None, None] * (1 - m[..., None]) + c1[None, None] * m[..., None]).astype(np.float32)


def _trajectory(label: int, rng: np.random.Generator, T: int, S: int, r: float) -> np.ndarray:
    """Object centre [T, 2] (y, x) in pixels for motion class ``label``."""
    t = np.arange(T, dtype=np.float64)
    name = MOTION_CLASSES[label]
    if name in ("right", "left", "down", "up"):
        speed = rng.uniform(0.6, 1.6) * S / 64  # px / frame, same range for every class
        y0, x0 = rng.uniform(0, S, size=2)
        d = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}[name]
        return np.stack([y0 + d[0] * speed * t, x0 + d[1] * speed * t], 1)
    if name in ("clockwise", "anticlockwise"):
        rad = rng.uniform(0.15, 0.3) * S
        cy, cx = rng.uniform(rad + r, S - rad - r, size=2) if S - 2 * (rad + r) > 0 else (S / 2, S / 2)
        omega = rng.uniform(1.0, 2.0) * 2 * math.pi / T  # 1-2 turns per video
        sign = 1.0 if name == "clockwise" else -1.0  # image y points down: +angle = clockwise
        th = rng.uniform(0, 2 * math.pi) + sign * omega * t
        return np.stack([cy + rad * np.sin(th), cx + rad * np.cos(th)], 1)
    # shake: fast oscillation around a random point
    amp = rng.uniform(0.08, 0.16) * S
    period = rng.uniform(6.0, 12.0)
    phase = rng.uniform(0, 2 * math.pi)
    cy, cx = rng.uniform(0, S, size=2)
    osc = amp * np.sin(2 * math.pi * t / period + phase)
    if name == "shake_h":
        return np.stack([np.full(T, cy), cx + osc], 1)
    return np.stack([cy + osc, np.full(T, cx)], 1)


def render_video(cfg: SyntheticConfig, split: str, index: int) -> tuple[np.ndarray, int]:
    """Render video ``index`` of ``split``: (uint8 RGB [T, S, S, 3], label). Deterministic."""
    n = cfg.split_size(split)
    if not 0 <= index < n:
        raise IndexError(f"synthetic {split} has {n} videos, index {index} is out of range")
    label = index % cfg.num_classes
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], index])
    T, S = cfg.num_frames, cfg.size
    bg = _texture(rng, S, S)
    objs = []
    for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
        side = int(rng.integers(max(4, S // 8), max(5, S // 4) + 1))
        tex = _texture(rng, side, side)
        if rng.random() < 0.5:  # disc
            yy, xx = np.mgrid[0:side, 0:side]
            c = (side - 1) / 2
            mask = (yy - c) ** 2 + (xx - c) ** 2 <= (side / 2) ** 2
        else:  # square
            mask = np.ones((side, side), bool)
        traj = _trajectory(label, rng, T, S, side / 2)
        objs.append((tex, mask, traj, side))
    video = np.empty((T, S, S, 3), np.float32)
    for t in range(T):
        frame = bg.copy()
        for tex, mask, traj, side in objs:
            top = int(round(traj[t, 0] - side / 2))
            left = int(round(traj[t, 1] - side / 2))
            ys = (top + np.arange(side)) % S  # the frame is a torus: objects wrap around
            xs = (left + np.arange(side)) % S
            region = frame[np.ix_(ys, xs)]
            frame[np.ix_(ys, xs)] = np.where(mask[..., None], tex, region)
        video[t] = frame
    if cfg.noise > 0:
        video += rng.normal(0, cfg.noise, size=video.shape).astype(np.float32)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), label


def resize_frames(frames: np.ndarray, short_side: int | None, upscale: bool = False) -> np.ndarray:
    """uint8 [T, H, W, 3] resized like a decoded video (short side ``short_side``, antialiased
    bilinear); returned as is when the size does not change."""
    from .decode import resized_hw

    H, W = frames.shape[1:3]
    h, w = resized_hw(H, W, short_side, upscale)
    if (h, w) == (H, W):
        return frames
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class RenderedReader:
    """Reader interface (``num_frames``, ``height``, ``width``, ``fps``, ``get``) over a video
    rendered in memory, uint8 ``self.video`` [T, H, W, 3]; subclasses render it."""

    video: np.ndarray
    fps: float
    path: str

    @property
    def num_frames(self) -> int:
        return self.video.shape[0]

    @property
    def height(self) -> int:
        return self.video.shape[1]

    @property
    def width(self) -> int:
        return self.video.shape[2]

    def get(self, indices, short_side: int | None = None, *, upscale: bool = False) -> np.ndarray:
        return resize_frames(self.video[np.asarray(list(indices), dtype=np.int64)], short_side, upscale)

    def close(self) -> None:
        pass

    def __enter__(self) -> RenderedReader:
        return self

    def __exit__(self, *exc) -> None:
        pass


class SyntheticReader(RenderedReader):
    """A video of the synthetic motion set (see :func:`render_video`)."""

    def __init__(self, cfg: SyntheticConfig, split: str, index: int) -> None:
        self.video, self.label = render_video(cfg, split, index)
        self.fps = float(cfg.fps)
        self.path = f"synthetic://{split}/{index}"


def write_synthetic(
    root: str | os.PathLike, cfg: SyntheticConfig | None = None, splits=("train", "test")
) -> str:
    """Write the synthetic set as mp4 (libx264) in the class-per-folder layout
    ``ROOT/<split>/<class>/<index:05d>.mp4`` plus ``ROOT/classes.txt``; returns ROOT.
    Read it back with ``build_dataset("folder", ROOT, split)``."""
    from .decode import write_video

    cfg = cfg or SyntheticConfig()
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(cfg.classes) + "\n")
    for split in splits:
        for i in range(cfg.split_size(split)):
            video, label = render_video(cfg, split, i)
            path = os.path.join(root, split, cfg.classes[label], f"{i:05d}.mp4")
            write_video(path, video, fps=cfg.fps)
    return root
