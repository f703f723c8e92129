"""The factorised synthetic benchmark ("shapes"): every video carries known factors.

One bright object moves in a straight line over a dark background. Each video is a deterministic
function of ``(seed, split, index)`` and carries these factors, all reported by the probes:

============  ====================================================  ===========================
 factor        values                                                role
============  ====================================================  ===========================
 shape         disc, square, triangle, plus, ring, frame, x, tee     primary (appearance) label
 motion        right, left, down, up (left = time reverse of right)   second probe target
 colour        4 hue bins of the object's colour                      nuisance
 background    4 kinds of dark low-contrast texture                   nuisance
============  ====================================================  ===========================

plus the per-frame mask of the object (``render(...)[1]``) for the CAAM focus diagnostic. The
tau_l intensity level, the last nuisance, is applied by the augmentation pipeline, not here.

``shape = index % num_shapes`` and ``motion = (index // num_shapes) % num_motions``, so every
shape x motion pair is balanced when a split holds a multiple of ``num_shapes * num_motions``
videos; colour and background are drawn from the video's own generator. Size, rotation, aspect,
speed, position, hue and background texture vary inside every class, so the area or brightness of
the object does not give its shape away. The object never leaves the frame: its whole straight
path is placed inside it, so the motion label is exactly the displacement's direction.

Why this design (docs/benchmark.md has the calibration): a motion-only benchmark and small
textured objects proved unlearnable at CPU scale even with labels; a large high-contrast object is
learnable by a width-1/8 R3D-18 in a CPU demo budget, and the probes then have room to separate a
random-init encoder from a trained one.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..utils.cfgtools import SEED_MAX, config, opt
from .synthetic import RenderedReader

__all__ = [
    "SHAPES",
    "MOTIONS",
    "MOTION_REVERSE",
    "FACTORS",
    "ShapesConfig",
    "render_shapes",
    "shape_factors",
    "ShapesReader",
    "write_shapes",
]

SHAPES = ("disc", "square", "triangle", "plus", "ring", "frame", "x", "tee")
MOTIONS = ("right", "left", "down", "up")
MOTION_REVERSE = {"right": "left", "left": "right", "down": "up", "up": "down"}
COLOURS = ("red", "yellow-green", "cyan-blue", "magenta")  # 4 hue bins of 90 degrees
BACKGROUNDS = ("noise", "stripes", "checker", "gradient")
FACTORS = {"shape": SHAPES, "motion": MOTIONS, "colour": COLOURS, "background": BACKGROUNDS}
_SPLIT_CODE = {"train": 0, "test": 1, "val": 2}
_DIRECTION = {"right": (0.0, 1.0), "left": (0.0, -1.0), "down": (1.0, 0.0), "up": (-1.0, 0.0)}


@config
class ShapesConfig:
    """Size, signal and seed of the factorised shapes benchmark (defaults: the CPU demo)."""

    num_shapes: int = opt(8, "first N of SHAPES: the primary label", min=2, max=len(SHAPES))
    num_motions: int = opt(4, "first N of MOTIONS", choices=(2, 4))
    train_per_class: int = opt(32, "train videos per shape")
    test_per_class: int = opt(32, "test videos per shape")
    num_frames: int = opt(32, "frames per video", min=2)
    size: int = opt(64, "frame height = width (even, for 4:2:0 mp4)", min=16)
    object_size: tuple[float, float] = opt((0.5, 0.6), "object diameter range, fraction of the frame")
    travel: tuple[float, float] = opt((0.1, 0.3), "straight-line path over the video, fraction of the frame")
    max_rotation: float = opt(0.0, "degrees (<= 20, or squares turn into diamonds); 0 = upright")
    background_contrast: float = opt(40.0, "peak-to-peak grey levels of the background texture")
    noise: float = opt(3.0, "std of per-frame pixel noise (0 disables)")
    fps: int = opt(25, "frame rate written to mp4")
    seed: int = opt(0, "base seed; video i of split s is rendered from (seed, s, i)", min=0, max=SEED_MAX)

    def __post_init__(self) -> None:
        self.object_size = tuple(float(v) for v in self.object_size)  # YAML gives lists
        self.travel = tuple(float(v) for v in self.travel)

    def _problems(self) -> list[str]:
        """Cross-field checks (the bounds of single fields are in their ``opt``)."""
        problems = []
        if self.size % 2:
            problems.append(f"size: {self.size} must be an even number >= 16")
        lo, hi = self.object_size
        if not 0.05 <= lo <= hi <= 0.9:
            problems.append(f"object_size: {self.object_size} must satisfy 0.05 <= lo <= hi <= 0.9")
        tlo, thi = self.travel
        if not 0 <= tlo <= thi:
            problems.append(f"travel: {self.travel} must satisfy 0 <= lo <= hi")
        elif hi + thi > 1.0:
            problems.append(
                f"travel: object_size[1] + travel[1] = {hi + thi:g} > 1: the object would leave the frame"
            )
        return problems

    @property
    def classes(self) -> list[str]:
        return list(SHAPES[: self.num_shapes])

    @property
    def factor_values(self) -> dict[str, tuple[str, ...]]:
        """Class names of every factor (shape and motion cut to the configured counts)."""
        return {
            "shape": SHAPES[: self.num_shapes],
            "motion": MOTIONS[: self.num_motions],
            "colour": COLOURS,
            "background": BACKGROUNDS,
        }

    def split_size(self, split: str) -> int:
        if split not in _SPLIT_CODE:
            raise ValueError(f"shapes split must be one of {sorted(_SPLIT_CODE)}, got {split!r}")
        per = self.train_per_class if split == "train" else self.test_per_class
        return per * self.num_shapes


def _rng(cfg: ShapesConfig, split: str, index: int) -> np.random.Generator:
    n = cfg.split_size(split)
    if not 0 <= index < n:
        raise IndexError(f"shapes {split} has {n} videos, index {index} is out of range")
    return np.random.default_rng([cfg.seed, _SPLIT_CODE[split], index])


def _draw_factors(cfg: ShapesConfig, index: int, rng: np.random.Generator) -> dict[str, int]:
    # The nuisance draws come first from the video's generator, so shape_factors() can compute
    # them without rendering.
    return {
        "shape": index % cfg.num_shapes,
        "motion": (index // cfg.num_shapes) % cfg.num_motions,
        "colour": int(rng.integers(len(COLOURS))),
        "background": int(rng.integers(len(BACKGROUNDS))),
    }


def shape_factors(cfg: ShapesConfig, split: str) -> dict[str, np.ndarray]:
    """Every factor's label of every video of ``split``: ``{factor: int64 [N]}`` (no rendering)."""
    rows = [_draw_factors(cfg, i, _rng(cfg, split, i)) for i in range(cfg.split_size(split))]
    return {k: np.array([r[k] for r in rows], dtype=np.int64) for k in FACTORS}


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of object coordinates (u right, v down, both in [-1, 1] at the object's box)."""
    r = np.sqrt(u * u + v * v)
    box = np.maximum(np.abs(u), np.abs(v))
    if name == "disc":
        return r <= 1.0
    if name == "square":
        return box <= 0.85
    if name == "triangle":  # apex up, base at v = 0.8
        return (v <= 0.8) & (v >= -1.0 + 1.8 * np.abs(u))
    if name == "plus":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "frame":
        return (box <= 0.9) & (box >= 0.55)
    if name == "x":
        a, b = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)
        return ((np.abs(a) <= 0.3) & (np.abs(b) <= 1.0)) | ((np.abs(b) <= 0.3) & (np.abs(a) <= 1.0))
    if name == "tee":
        return ((v >= -0.9) & (v <= -0.4) & (np.abs(u) <= 0.9)) | (
            (np.abs(u) <= 0.25) & (v <= 0.9) & (v >= -0.9)
        )
    raise ValueError(f"unknown shape {name!r}")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _background(kind: int, rng: np.random.Generator, S: int, contrast: float) -> np.ndarray:
    """A dark [S, S, 3] texture of the given kind, peak-to-peak ``contrast`` grey levels."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / max(S - 1, 1)
    name = BACKGROUNDS[kind]
    if name == "noise":  # bilinear upsampling of a coarse random grid
        g = int(rng.integers(3, 7))
        coarse = rng.uniform(0, 1, size=(g + 1, g + 1)).astype(np.float32)
        fy, fx = yy * g, xx * g
        y0, x0 = np.minimum(fy.astype(int), g - 1), np.minimum(fx.astype(int), g - 1)
        ty, tx = fy - y0, fx - x0
        a = coarse[y0, x0] * (1 - tx) + coarse[y0, x0 + 1] * tx
        b = coarse[y0 + 1, x0] * (1 - tx) + coarse[y0 + 1, x0 + 1] * tx
        m = a * (1 - ty) + b * ty
    elif name == "stripes":
        th, period = rng.uniform(0, math.pi), rng.uniform(0.15, 0.4)
        m = 0.5 + 0.5 * np.sin((xx * math.cos(th) + yy * math.sin(th)) * 2 * math.pi / period)
    elif name == "checker":
        cells = int(rng.integers(3, 7))
        m = ((np.floor(yy * cells) + np.floor(xx * cells)) % 2).astype(np.float32)
    else:  # gradient
        th = rng.uniform(0, 2 * math.pi)
        m = xx * math.cos(th) + yy * math.sin(th)
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-6)
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    base = rng.uniform(5, 25)
    return (base + contrast * m[..., None] * tint[None, None]).astype(np.float32)


def render_shapes(cfg: ShapesConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Render video ``index`` of ``split``: (uint8 RGB [T, S, S, 3], bool mask [T, S, S], factors).

    Deterministic in ``(cfg, split, index)``; ``factors`` maps each name of :data:`FACTORS` to its
    class id. The mask is the object's exact pixel support in every frame.
    """
    rng = _rng(cfg, split, index)
    fac = _draw_factors(cfg, index, rng)
    T, S = cfg.num_frames, cfg.size
    bg = _background(fac["background"], rng, S, cfg.background_contrast)
    diam = rng.uniform(*cfg.object_size) * S
    travel = rng.uniform(*cfg.travel) * S
    speed = travel / max(T - 1, 1)  # px / frame
    theta = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    aspect = rng.uniform(0.85, 1.15)
    hue = (fac["colour"] + rng.uniform(0.1, 0.9)) / len(COLOURS)
    colour = 255 * _hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))
    dy, dx = _DIRECTION[MOTIONS[fac["motion"]]]
    r = diam / 2
    # Place the whole straight path inside the frame: the start leaves room for the travel.
    lo_y, hi_y = r + travel * max(-dy, 0), S - r - travel * max(dy, 0)
    lo_x, hi_x = r + travel * max(-dx, 0), S - r - travel * max(dx, 0)
    cy0, cx0 = rng.uniform(lo_y, max(lo_y, hi_y)), rng.uniform(lo_x, max(lo_x, hi_x))
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5  # pixel centres
    c, s = math.cos(theta), math.sin(theta)
    video = np.empty((T, S, S, 3), np.float32)
    masks = np.empty((T, S, S), bool)
    for t in range(T):
        py, px = (yy - (cy0 + dy * speed * t)) / r, (xx - (cx0 + dx * speed * t)) / r
        u = (c * px + s * py) * aspect
        v = (-s * px + c * py) / aspect
        m = _shape_mask(SHAPES[fac["shape"]], u, v)
        masks[t] = m
        video[t] = np.where(m[..., None], colour[None, None], bg)
    if cfg.noise > 0:
        video += rng.normal(0, cfg.noise, size=video.shape).astype(np.float32)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8), masks, fac


class ShapesReader(RenderedReader):
    """A video of the shapes benchmark, with its ``masks`` and ``factors``."""

    def __init__(self, cfg: ShapesConfig, split: str, index: int) -> None:
        self.video, self.masks, self.factors = render_shapes(cfg, split, index)
        self.label = self.factors["shape"]
        self.fps = float(cfg.fps)
        self.path = f"shapes://{split}/{index}"


def write_shapes(root: str | os.PathLike, cfg: ShapesConfig | None = None, splits=("train", "test")) -> str:
    """Write the benchmark as mp4 (libx264) in the class-per-folder layout of the primary factor,
    ``ROOT/<split>/<shape>/<index:05d>.mp4``, plus ``ROOT/classes.txt`` and
    ``ROOT/<split>_factors.csv`` (index, path and every factor); returns ROOT."""
    from .decode import write_video

    cfg = cfg or ShapesConfig()
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(cfg.classes) + "\n")
    for split in splits:
        rows = ["index,path," + ",".join(FACTORS)]
        for i in range(cfg.split_size(split)):
            video, _, fac = render_shapes(cfg, split, i)
            rel = os.path.join(split, cfg.classes[fac["shape"]], f"{i:05d}.mp4")
            write_video(os.path.join(root, rel), video, fps=cfg.fps)
            rows.append(f"{i},{rel}," + ",".join(str(fac[k]) for k in FACTORS))
        with open(os.path.join(root, f"{split}_factors.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return root
