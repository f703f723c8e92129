"""``--crops 3`` (issue 30): left/centre/right crops of every test clip, averaged with the clips."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from tiny import TINY

import ctrlaug.eval.features as features
from ctrlaug.augment import AugmentConfig, sample_eval_views
from ctrlaug.config import load_config, save_config
from ctrlaug.errors import EvalError
from ctrlaug.eval.options import EvalOptions
from ctrlaug.eval.protocols import build_eval_datasets
from ctrlaug.evaluate import main as evaluate_main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_three_crops_along_the_longer_side():
    cfg = AugmentConfig(eval_clips=2, eval_crop=0.875)
    one = sample_eval_views(64, 120, 160, cfg=cfg)
    three = sample_eval_views(64, 120, 160, cfg=cfg, crops=3)
    assert three.clip_boxes.shape == (6, 7) and three.clip_frames.shape == (6, cfg.clip_frames)
    b = three.clip_boxes
    side_w = 0.875 * 120 / 160
    # clip-major: clip 0's left, centre, right, then clip 1's
    assert torch.equal(b[1], one.clip_boxes[0]) and torch.equal(b[4], one.clip_boxes[1])
    assert b[0, 4].item() == 0.0 and b[2, 5].item() == pytest.approx(1.0)
    assert b[0, 5].item() == pytest.approx(side_w) and torch.equal(b[:3, 2:4], b[1:2, 2:4].expand(3, 2))
    assert torch.equal(three.clip_frames[0], three.clip_frames[2]) and torch.equal(
        three.clip_frames[3], one.clip_frames[1]
    )
    tall = sample_eval_views(64, 160, 120, cfg=cfg, crops=3).clip_boxes  # portrait: top/centre/bottom
    assert tall[0, 2].item() == 0.0 and tall[2, 3].item() == pytest.approx(1.0)
    assert torch.equal(tall[:3, 4:6], tall[1:2, 4:6].expand(3, 2))
    with pytest.raises(ValueError, match="crops must be 1 or 3"):
        sample_eval_views(64, 120, 160, cfg=cfg, crops=2)
    with pytest.raises(EvalError, match="--crops must be 1 or 3"):
        EvalOptions("knn", crops=5)


def test_dataset_views_hold_clips_times_crops():
    cfg = load_config(None, TINY)
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, eval_clips=2))
    tr, te = build_eval_datasets(cfg, eval_clips=2, test_crops=3)
    assert (tr.eval_crops, te.eval_crops) == (1, 3)
    a, b = tr[0]["views"], te[0]["views"]
    assert a.shape[0] == 2 and b.shape[0] == 6
    te1 = build_eval_datasets(cfg, eval_clips=2)[1]
    centre = te1[0]["views"]
    assert torch.equal(b[1::3], centre)  # the middle crop of each clip is the 1-crop view
    assert not torch.equal(b[0::3], centre)  # the side crops are other pixels


@pytest.mark.parametrize("protocol, train_crops", [("knn", 3), ("retrieval", 3), ("linear", 1)])
def test_cli_crops_reach_the_right_sets(tmp_path, monkeypatch, protocol, train_crops):
    seen = {}

    def fake_extract(encoder, dataset, *a, **k):
        n, v = len(dataset), dataset.augment.eval_clips * dataset.eval_crops
        seen.setdefault("crops", []).append(dataset.eval_crops)
        y = torch.tensor(dataset.labels)
        return torch.randn(n, v, 4, generator=torch.Generator().manual_seed(n)), y

    monkeypatch.setattr(features, "extract_clip_features", fake_extract)
    cfg_path = tmp_path / "tiny.yaml"
    save_config(load_config(None, [*TINY, f"out_dir={tmp_path / 'run'}"]), str(cfg_path))
    out = tmp_path / "ev"
    argv = [protocol, "--random-init", "--config", str(cfg_path), "--out", str(out), "--clips", "2"]
    assert evaluate_main([*argv, "--crops", "3", "--epochs", "2"]) == 0
    assert seen["crops"] == [train_crops, 3]  # train features, then test features
    with open(os.path.join(out, f"eval_{protocol}_random.json")) as f:
        assert json.load(f)["crops"] == 3
    with open(os.path.join(out, f"eval_{protocol}_random.md")) as f:
        assert "2 clips x 3 crops" in f.read()
