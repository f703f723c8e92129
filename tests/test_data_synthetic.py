"""The synthetic motion set: deterministic, balanced, class carried by motion only, and readable
back through the real mp4 decoding path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlaug.augment import AugmentConfig
from ctrlaug.data import (
    MOTION_CLASSES,
    DataConfig,
    SyntheticConfig,
    SyntheticMotion,
    build_dataset,
    collate_views,
    render_video,
    write_synthetic,
)
from ctrlaug.data.synthetic import _trajectory

TINY = SyntheticConfig(train_per_class=16, test_per_class=8, num_frames=16, size=32)


def test_deterministic_and_balanced():
    a, la = render_video(TINY, "train", 5)
    b, lb = render_video(TINY, "train", 5)
    c, _ = render_video(TINY, "test", 5)
    assert a.shape == (16, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and la == lb == 5
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, render_video(SyntheticConfig(**{**TINY.__dict__, "seed": 1}), "train", 5)[0])
    ds = SyntheticMotion("train", TINY)
    assert len(ds) == 128 and ds.classes == list(MOTION_CLASSES)
    assert np.bincount(ds.labels).tolist() == [16] * 8
    with pytest.raises(IndexError):
        render_video(TINY, "test", 64)


@pytest.mark.parametrize("label", range(8))
def test_motion_defines_the_class(label):
    rng = np.random.default_rng(label)
    for _ in range(20):
        tr = _trajectory(label, rng, 48, 64, 4.0)
        dy, dx = np.diff(tr[:, 0]), np.diff(tr[:, 1])
        name = MOTION_CLASSES[label]
        if name == "right":
            assert (dx > 0).all() and (dy == 0).all()
        elif name == "left":
            assert (dx < 0).all() and (dy == 0).all()
        elif name == "down":
            assert (dy > 0).all() and (dx == 0).all()
        elif name == "up":
            assert (dy < 0).all() and (dx == 0).all()
        elif name in ("clockwise", "anticlockwise"):
            c = tr.mean(0)
            v = tr - c
            cross = v[:-1, 1] * v[1:, 0] - v[:-1, 0] * v[1:, 1]  # > 0: clockwise on screen (y down)
            assert (cross > 0).all() if name == "clockwise" else (cross < 0).all()
        else:
            moving = dx if name == "shake_h" else dy
            still = dy if name == "shake_h" else dx
            assert (still == 0).all()
            assert (np.diff(np.sign(moving)) != 0).sum() >= 4  # several back-and-forth swings


def _static_features(cfg, split):
    feats, labels = [], []
    for i in range(cfg.split_size(split)):
        v, lab = render_video(cfg, split, i)
        f0 = v[0].astype(np.float64)
        feats.append(np.concatenate([f0.mean((0, 1)), f0.std((0, 1)), v.astype(np.float64).mean((0, 1, 2))]))
        labels.append(lab)
    return np.array(feats), np.array(labels)


def test_appearance_does_not_give_the_class_away():
    """A nearest-centroid classifier on colour statistics stays near chance (1/8)."""
    xtr, ytr = _static_features(TINY, "train")
    xte, yte = _static_features(TINY, "test")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    cent = np.stack([xtr[ytr == k].mean(0) for k in range(8)])
    pred = ((xte[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    acc = float((pred == yte).mean())
    assert acc < 0.3, acc


def test_on_the_fly_views_and_loader():
    aug = AugmentConfig(size=24)
    ds = build_dataset("synthetic", split="test", synth=TINY, augment=aug, data=DataConfig(seed=0))
    assert isinstance(ds, SyntheticMotion) and len(ds) == 64
    s = ds[3]
    assert s["views"].shape == (5, 3, 16, 24, 24) and s["label"] == 3 and s["skipped"] == []
    # T = 16 < K * 16 / 2: clips overlap but stay inside; the global view covers every frame
    assert s["frame_indices"][0].tolist() == list(range(16))
    b = collate_views([ds[i] for i in range(4)], cfg=aug)
    assert b["label"].tolist() == [0, 1, 2, 3] and b["views"].shape == (4, 5, 3, 16, 24, 24)


def test_written_to_disk_and_decoded_back(tmp_path):
    cfg = SyntheticConfig(num_classes=3, train_per_class=2, test_per_class=1, num_frames=20, size=32, seed=4)
    write_synthetic(tmp_path, cfg)
    assert (tmp_path / "classes.txt").read_text().split() == ["right", "left", "down"]
    tr = build_dataset(
        "folder", tmp_path, "train", augment=AugmentConfig(size=32), data=DataConfig(short_side=0)
    )
    te = build_dataset(
        "folder", tmp_path, "test", augment=AugmentConfig(size=32), data=DataConfig(short_side=0)
    )
    assert (len(tr), len(te)) == (6, 3) and tr.classes == cfg.classes
    for i, rec in enumerate(tr.records):
        idx = int(rec.path.rsplit("/", 1)[1][:5])
        want, label = render_video(cfg, "train", idx)
        assert rec.label == label
        with tr.open(i) as r:
            got = r.get(range(r.num_frames))
        assert got.shape == want.shape
        # luma PSNR (4:2:0 chroma subsampling blurs the sharp colour edges of the textures)
        luma = np.array([0.299, 0.587, 0.114])
        yg, yw = got.astype(np.float64) @ luma, want.astype(np.float64) @ luma
        psnr = 10 * np.log10(255**2 / ((yg - yw) ** 2).mean())
        shifted = 10 * np.log10(255**2 / ((yg[1:] - yw[:-1]) ** 2).mean())
        assert psnr > 30 and psnr > shifted, (psnr, shifted)  # same video, same frame order
    assert tr[0]["views"].dtype == torch.uint8
