"""Low-level augmentations tau_l with intensity levels (paper §3.2, Table 5, supplementary §1).

Colour jitter (brightness B, contrast C, saturation S, hue H) and Gaussian blur are cut into
intensity levels: B, C, S strengths in [0, 0.4] split into 4 bins each, H in [0, 0.1] into 2 bins,
blur into 4 (kernel, sigma-range) combinations: 4*4*4*2*4 = 512 levels. Each step draws 32 of them
(:func:`sample_levels`); each view is assigned one and draws its own parameters inside it
(:func:`sample_level_params`); :func:`low_level_augment` applies them, batched, on any device.
Parameters are constant over the frames of a view, and so is the pixel transform.

Level id layout (mixed radix, blur fastest)::

    level = (((b * n_c + c) * n_s + s) * n_h + h) * n_g + g

Choices where the paper is silent (see docs/data.md):

* a bin bounds the *strength* ``|factor - 1|`` (hue: ``|shift|``); the sign is random, as in the
  usual ColorJitter ranges ``[1 - 0.4, 1 + 0.4]``. ``signed_levels=True`` bins the signed range
  instead so that the sign is part of the level.
* fixed order brightness, contrast, saturation, hue, then blur (a random order would be one more
  hidden parameter inside a level).
* contrast blends towards the mean grey of the whole view (all its frames), so the transform of a
  view is one fixed pixel map applied to every frame.
* blur: separable Gaussian with reflect padding (torchvision's GaussianBlur convention), always on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import AugmentConfig

__all__ = [
    "LowLevelParams",
    "level_components",
    "sample_levels",
    "sample_level_params",
    "low_level_augment",
    "low_level_augment_ref",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "gaussian_kernel1d",
]

_GRAY = (0.299, 0.587, 0.114)


class LowLevelParams(NamedTuple):
    """Per-view tau_l parameters; every field has the same shape (e.g. [N] or [B, V]).

    level: int64 level id; brightness, contrast, saturation: float32 multiplicative factors
    (1 = identity); hue: float32 shift in turns (identity 0); blur_sigma: float32;
    blur_kernel: int64 odd kernel size.
    """

    level: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    blur_sigma: torch.Tensor
    blur_kernel: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LowLevelParams:
        return LowLevelParams(*(t.to(device, non_blocking=non_blocking) for t in self))

    def reshape(self, *shape: int) -> LowLevelParams:
        return LowLevelParams(*(t.reshape(*shape) for t in self))

    def flatten(self) -> LowLevelParams:
        return self.reshape(-1)

    def select(self, idx) -> LowLevelParams:
        """Index every field alike (``params.select(mask)``, ``params.select(slice(0, 4))``)."""
        return LowLevelParams(*(t[idx] for t in self))

    @staticmethod
    def identity(n: int, device: torch.device | str = "cpu") -> LowLevelParams:
        """Parameters that leave ``n`` views unchanged except for the blur (sigma tiny, kernel 1)."""
        f = torch.ones(n, device=device)
        return LowLevelParams(
            torch.full((n,), -1, dtype=torch.int64, device=device),
            f,
            f.clone(),
            f.clone(),
            torch.zeros(n, device=device),
            torch.full((n,), 1e-3, device=device),
            torch.ones(n, dtype=torch.int64, device=device),
        )


def level_components(levels: torch.Tensor, cfg: AugmentConfig | None = None) -> tuple[torch.Tensor, ...]:
    """Split level ids (int64, any shape) into bin indices ``(b, c, s, h, g)``."""
    cfg = cfg or AugmentConfig()
    counts = cfg.level_counts
    if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= cfg.num_levels):
        raise ValueError(f"level ids must lie in [0, {cfg.num_levels}) for level counts {counts}")
    rest = levels.to(torch.int64)
    out = []
    for n in reversed(counts):
        out.append(rest % n)
        rest = rest // n
    return tuple(reversed(out))


def sample_levels(
    num_views: int,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Assign every view of a step to one of ``levels_per_step`` randomly drawn levels (paper §4.4).

    ``n = min(levels_per_step, num_levels, max(1, num_views // min_views_per_level))`` distinct
    levels are drawn without replacement from all ``num_levels``; the views are then dealt to them
    in a random order, round-robin, so each level gets ``num_views // n`` or one more views (a batch
    of 128 videos x 5 views gives 32 groups of 20). Different videos sharing a level form the joint
    pairs of L_mi (eq. 5-6).

    Returns int64 [num_views] level ids in ``[0, num_levels)`` on ``device`` (the generator's device).
    """
    cfg = cfg or AugmentConfig()
    if num_views < 1:
        raise ValueError(f"sample_levels needs num_views >= 1, got {num_views}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    n = min(cfg.levels_per_step, cfg.num_levels, max(1, num_views // cfg.min_views_per_level))
    chosen = torch.randperm(cfg.num_levels, generator=generator, device=gdev)[:n]
    order = torch.randperm(num_views, generator=generator, device=gdev)
    levels = torch.empty(num_views, dtype=torch.int64, device=gdev)
    levels[order] = chosen[torch.arange(num_views, device=gdev) % n]
    return levels.to(device) if device is not None else levels


def _bins(
    max_strength: float, n: int, bin_idx: torch.Tensor, u: torch.Tensor, u_sign: torch.Tensor, signed: bool
):
    """Strength (or signed offset) drawn uniformly inside bin ``bin_idx`` of ``n``."""
    if signed:
        lo = -max_strength + bin_idx.to(u.dtype) * (2 * max_strength / n)
        return lo + u * (2 * max_strength / n)
    lo = bin_idx.to(u.dtype) * (max_strength / n)
    mag = lo + u * (max_strength / n)
    return torch.where(u_sign < 0.5, -mag, mag)


def sample_level_params(
    levels: torch.Tensor,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> LowLevelParams:
    """Draw each view's tau_l parameters inside its level (supplementary §1).

    levels: int64 level ids, any shape. Returns :class:`LowLevelParams` of the same shape on the
    same device (which must be the generator's device when a generator is given).

    Brightness/contrast/saturation factor ``1 +- s`` with ``s`` uniform in the level's bin of
    ``[0, 0.4]``; hue shift ``+- h`` with ``h`` uniform in its bin of ``[0, 0.1]``; blur kernel from the
    level, sigma uniform in the level's sigma range.
    """
    cfg = cfg or AugmentConfig()
    b, c, s, h, g = level_components(levels, cfg)
    dev = levels.device
    shape = levels.shape
    u = torch.rand((9, *shape), generator=generator, device=dev, dtype=torch.float32)
    signed = cfg.signed_levels
    bright = 1 + _bins(cfg.brightness, cfg.levels_brightness, b, u[0], u[1], signed)
    contr = 1 + _bins(cfg.contrast, cfg.levels_contrast, c, u[2], u[3], signed)
    satur = 1 + _bins(cfg.saturation, cfg.levels_saturation, s, u[4], u[5], signed)
    hue = _bins(cfg.hue, cfg.levels_hue, h, u[6], u[7], signed)
    table = torch.tensor([list(x) for x in cfg.blur_levels], dtype=torch.float64, device=dev)  # [G, 3]
    kern = table[g, 0].to(torch.int64)
    sig = (table[g, 1] + u[8].to(torch.float64) * (table[g, 2] - table[g, 1])).to(torch.float32)
    return LowLevelParams(levels.to(torch.int64), bright, contr, satur, hue, sig, kern)


# ------------------------------------------------------------------------------------------------
# colour space helpers
# ------------------------------------------------------------------------------------------------


def rgb_to_hsv(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """RGB in [0, 1] -> HSV in [0, 1] (hue in turns) along channel dimension ``dim``."""
    r, g, b = rgb.unbind(dim)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim)


def hsv_to_rgb(hsv: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """HSV in [0, 1] -> RGB, via ``c_n = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``."""
    h, s, v = hsv.unbind(dim)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h * 6.0, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim)


def gaussian_kernel1d(kernel: int, sigma: float, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd size ``kernel`` (taps at -(k-1)/2 .. (k-1)/2)."""
    x = torch.arange(kernel, dtype=dtype) - (kernel - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


# ------------------------------------------------------------------------------------------------
# batched implementation
# ------------------------------------------------------------------------------------------------


def _bcast(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1, 1)


def _check_params(x: torch.Tensor, params: LowLevelParams, name: str) -> LowLevelParams:
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"{name}: x must be float [N, 3, T, H, W] RGB in [0, 1], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating tensor in [0, 1], got {x.dtype} (divide uint8 by 255)")
    n = x.shape[0]
    for field, t in zip(LowLevelParams._fields, params):
        if t.numel() != n:
            raise ValueError(f"{name}: params.{field} has {t.numel()} entries for {n} views")
    return params.flatten()


def low_level_augment(
    x: torch.Tensor, params: LowLevelParams, *, max_kernel: int | None = None
) -> torch.Tensor:
    """Batched tau_l: colour jitter then Gaussian blur, each view with its own parameters.

    Args:
        x: float [N, 3, T, H, W] RGB in [0, 1] (any device; fp16/bf16 are computed in float32).
        params: :class:`LowLevelParams` with N entries per field (any shape, flattened in order,
            e.g. [B, V] for ``x = views.flatten(0, 1)``).
        max_kernel: pad every blur kernel to this odd size (default: the largest in ``params``).

    Returns:
        float [N, 3, T, H, W] in [0, 1], same dtype and device as ``x``. Same results on CPU and GPU
        up to float rounding; checked against :func:`low_level_augment_ref`.
    """
    p = _check_params(x, params, "low_level_augment")
    out_dtype = x.dtype
    x = x.to(torch.float32, copy=True)  # private working copy: every step below is in place
    N, C, T, H, W = x.shape
    gw = torch.tensor(_GRAY, device=x.device, dtype=torch.float32)
    # colour jitter, fixed order B, C, S, H
    x.mul_(_bcast(p.brightness, x)).clamp_(0.0, 1.0)
    mean = (x.mean(dim=(2, 3, 4)) @ gw).reshape(N, 1, 1, 1, 1)  # mean grey of the whole view
    cf = _bcast(p.contrast, x)
    x.mul_(cf).add_((1 - cf) * mean).clamp_(0.0, 1.0)
    sf = _bcast(p.saturation, x)
    gray = torch.einsum("nc...,c->n...", x, gw).unsqueeze(1)  # [N, 1, T, H, W]
    x.mul_(sf).add_(gray.mul_(1 - sf)).clamp_(0.0, 1.0)
    del gray
    x = _hue_shift(x, _bcast(p.hue, x)[:, 0])
    # separable Gaussian blur, every kernel zero-padded to the same odd size K, reflect padding
    kmax = int(p.blur_kernel.max()) if max_kernel is None else int(max_kernel)
    if kmax % 2 == 0 or kmax < int(p.blur_kernel.max()):
        raise ValueError(f"low_level_augment: max_kernel={kmax} must be odd and >= every blur kernel")
    r = kmax // 2
    if r > 0:
        if H <= r or W <= r:
            raise ValueError(
                f"low_level_augment: views of {H}x{W} are too small for a {kmax}-tap reflect-padded blur"
            )
        taps = torch.arange(kmax, device=x.device, dtype=torch.float32) - r  # [K]
        sig = p.blur_sigma.to(x.device, torch.float32)[:, None]
        half = (p.blur_kernel.to(x.device)[:, None] // 2).to(torch.float32)
        wts = torch.exp(-0.5 * (taps[None] / sig) ** 2) * (taps[None].abs() <= half)
        wts = wts / wts.sum(1, keepdim=True)  # [N, K]
        wts = wts.repeat_interleave(C * T, 0)  # [N*C*T, K]
        y = F.pad(x.reshape(1, N * C * T, H, W), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, wts[:, None, None, :], groups=N * C * T)  # horizontal: [1, NCT, H+2r, W]
        y = F.conv2d(y, wts[:, None, :, None], groups=N * C * T)  # vertical: [1, NCT, H, W]
        x = y.reshape(N, C, T, H, W)
    return x.clamp_(0.0, 1.0).to(out_dtype)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of x [N, 3, T, H, W] by ``shift`` turns ([N, 1, 1, 1] or broadcastable).

    A hue rotation keeps the max ``v`` and the chroma ``c = max - min``, so the new RGB is
    ``v - c * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h') mod 6`` (n = 5, 3, 1): HSV -> hue ->
    RGB without materialising S (fewer full-size temporaries than rgb_to_hsv + hsv_to_rgb).
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    cs = torch.where(c > 0, c, torch.ones_like(c))
    h6 = torch.where(v == r, (g - b) / cs, torch.where(v == g, (b - r) / cs + 2.0, (r - g) / cs + 4.0))
    h6 = h6 + 6.0 * shift
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(v - c * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return _GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]


# ------------------------------------------------------------------------------------------------
# plain per-sample reference (the test oracle)
# ------------------------------------------------------------------------------------------------


def _ref_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """Hue rotation of one view [3, T, H, W], written with the sector formulas of colorsys."""
    r, g, b = img[0], img[1], img[2]
    v = torch.maximum(torch.maximum(r, g), b)
    mn = torch.minimum(torch.minimum(r, g), b)
    d = v - mn
    s = torch.where(v > 0, d / torch.where(v > 0, v, 1.0), 0.0)
    dd = torch.where(d > 0, d, 1.0)
    h = torch.zeros_like(v)
    h = torch.where((v == b) & (d > 0), 4.0 + (r - g) / dd, h)
    h = torch.where((v == g) & (d > 0), 2.0 + (b - r) / dd, h)
    h = torch.where((v == r) & (d > 0), (g - b) / dd, h)
    h = torch.remainder(h / 6.0 + shift, 1.0)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = torch.remainder(i, 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sectors = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(img)
    for k, (cr, cg, cb) in enumerate(sectors):
        m = i == k
        out[0] = torch.where(m, cr, out[0])
        out[1] = torch.where(m, cg, out[1])
        out[2] = torch.where(m, cb, out[2])
    return out


def low_level_augment_ref(x: torch.Tensor, params: LowLevelParams) -> torch.Tensor:
    """Per-view reference of :func:`low_level_augment`: a Python loop over views, scalar parameters,
    the exact k x k 2-D Gaussian (outer product) with ``k // 2`` reflect padding. Same contract."""
    p = _check_params(x, params, "low_level_augment_ref")
    out = torch.empty_like(x)
    wts = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).reshape(3, 1, 1, 1)
    for n in range(x.shape[0]):
        v = x[n]  # [3, T, H, W]
        v = (v * float(p.brightness[n])).clamp(0, 1)
        m = (v * wts).sum(0).mean()
        c = float(p.contrast[n])
        v = (c * v + (1 - c) * m).clamp(0, 1)
        gray = (v * wts).sum(0, keepdim=True)
        s = float(p.saturation[n])
        v = (s * v + (1 - s) * gray).clamp(0, 1)
        v = _ref_hue(v, float(p.hue[n]))
        k = int(p.blur_kernel[n])
        if k > 1:
            g1 = gaussian_kernel1d(k, float(p.blur_sigma[n]), dtype=torch.float64)
            k2 = torch.outer(g1, g1).to(x.dtype).to(x.device)
            frames = v.permute(1, 0, 2, 3)  # [T, 3, H, W]
            frames = F.pad(frames, (k // 2,) * 4, mode="reflect")
            frames = F.conv2d(frames, k2.expand(3, 1, k, k), groups=3)
            v = frames.permute(1, 0, 2, 3)
        out[n] = v.clamp(0, 1)
    return out
