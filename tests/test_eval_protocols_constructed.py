"""The evaluation protocols on constructed features whose right answer is known.

The CLI (``python -m ctrlaug.evaluate``) runs end to end on the tiny synthetic set, but the clip
features of each split are replaced by hand-made ones (train split: 8 videos, test split: 4), built
so that the protocol's number changes when query and gallery are swapped, when the linear probe is
scored on the train split, or when the clip softmax is replaced by the clip logits in averaging.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny import TINY

import ctrlaug.eval.features as features
from ctrlaug.config import load_config, save_config
from ctrlaug.eval.linear import evaluate_clips, fit_linear_clips
from ctrlaug.eval.metrics import knn_top1, retrieval_recall
from ctrlaug.evaluate import main as evaluate_main

pytestmark = pytest.mark.usefixtures("one_thread")

V, C = 3, 4  # clips per video, feature dim
E = torch.eye(C)
TRAIN_Y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
TEST_Y = torch.tensor([0, 0, 1, 1])


def _clips(rows: list[torch.Tensor], noise: float, seed: int) -> torch.Tensor:
    """[N, V, C]: each video's clips scattered around its row; the clip mean is the row itself."""
    g = torch.Generator().manual_seed(seed)
    base = torch.stack(rows)[:, None, :].expand(-1, V, -1)
    n = torch.randn(len(rows), V, C, generator=g) * noise
    return base + (n - n.mean(1, keepdim=True))


def _decoy():
    return torch.nn.functional.normalize(E[1] + 0.1 * E[2], dim=0)


def retrieval_features():
    """Test queries e0, e0, e1, e1. Gallery: class 0 at e0 (x3) plus one class-0 decoy next to e1;
    class 1 exactly at e1 (x4). Test->train: every top-1 is right (R@1 100). Train->test: the
    decoy's nearest test video is class 1 (R@1 87.5)."""
    train = _clips([E[0], E[0], E[0], _decoy(), E[1], E[1], E[1], E[1]], 0.0, 0)
    test = _clips([E[0], E[0], E[1], E[1]], 0.0, 1)
    return train, test


def linear_features():
    """Separable train split (class 0 at +e0, class 1 at -e0); in the test split the second class-0
    video lies with class 1. Test top-1 75 (clip and video); on the train split it would be 100."""
    s = 3.0
    train = _clips([s * E[0]] * 4 + [-s * E[0]] * 4, 0.3, 2)
    test = _clips([s * E[0], -s * E[0], -s * E[0], -s * E[0]], 0.3, 3)
    return train, test


def _run_cli(tmp_path, monkeypatch, protocol, feats, *extra):
    train, test = feats

    def fake_extract(encoder, dataset, *a, **k):  # the split is told apart by its size
        return (train, TRAIN_Y) if len(dataset) == len(TRAIN_Y) else (test, TEST_Y)

    monkeypatch.setattr(features, "extract_clip_features", fake_extract)
    cfg_path = tmp_path / "tiny.yaml"
    save_config(load_config(None, [*TINY, f"out_dir={tmp_path / 'run'}"]), str(cfg_path))
    out = tmp_path / "ev"
    argv = [
        protocol,
        "--random-init",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        "--clips",
        str(V),
        *extra,
    ]
    assert evaluate_main(argv) == 0
    with open(os.path.join(out, f"eval_{protocol}_random.json")) as f:
        res = json.load(f)
    assert res["num_train"] == len(TRAIN_Y) and res["num_test"] == len(TEST_Y)
    return res


def test_retrieval_queries_are_test_videos_against_the_train_gallery(tmp_path, monkeypatch):
    train, test = retrieval_features()
    # the constructed case: right answer one way, another answer the other way
    fwd = retrieval_recall(test.mean(1), TEST_Y, train.mean(1), TRAIN_Y, ks=(1, 5))
    swapped = retrieval_recall(train.mean(1), TRAIN_Y, test.mean(1), TEST_Y, ks=(1, 5))
    assert fwd[1] == 100.0 and swapped[1] == 87.5
    res = _run_cli(tmp_path, monkeypatch, "retrieval", (train, test))
    assert res["R@1"] == pytest.approx(100.0) and res["R@5"] == pytest.approx(100.0)


def test_knn_classifies_test_videos_with_the_train_bank(tmp_path, monkeypatch):
    train, test = retrieval_features()
    assert knn_top1(train.mean(1), TRAIN_Y, test.mean(1), TEST_Y, k=1) == 100.0
    assert knn_top1(test.mean(1), TEST_Y, train.mean(1), TRAIN_Y, k=1) == 87.5
    res = _run_cli(tmp_path, monkeypatch, "knn", (train, test), "--k", "1")
    assert res["knn_top1"] == pytest.approx(100.0)


def test_linear_probe_is_fitted_on_train_and_scored_on_test(tmp_path, monkeypatch):
    res = _run_cli(tmp_path, monkeypatch, "linear", linear_features(), "--epochs", "30")
    assert res["clip_top1"] == pytest.approx(75.0) and res["video_top1"] == pytest.approx(75.0)


def test_video_score_averages_softmax_not_logits():
    """Video 0 (label 1): one clip very sure of class 0, two clips fairly sure of class 1.
    Mean softmax -> class 1; mean logits (or max-confidence) -> class 0."""
    logits = torch.tensor([[[20.0, 0.0], [0.0, 2.0], [0.0, 2.0]], [[0.0, 3.0], [1.0, 0.0], [0.0, 3.0]]])
    labels = torch.tensor([1, 1])
    assert logits[0].mean(0).argmax().item() == 0  # logit averaging would get video 0 wrong
    assert logits[0].softmax(-1).mean(0).argmax().item() == 1
    r = evaluate_clips(logits, labels)
    assert r["video_top1"] == pytest.approx(100.0)
    assert r["clip_top1"] == pytest.approx(100.0 * 4 / 6)


def test_linear_probe_applies_the_train_standardisation_at_test_time():
    # Features with a tiny spread around a large offset: only the train mean *and* std make the
    # classes separable for the linear layer, so forgetting either one at test time shows.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 4
    centres = torch.randn(4, 16, generator=g) * 3
    x = (centres[y] + 0.3 * torch.randn(64, 16, generator=g)) * 1e-3 + 5.0
    clf = fit_linear_clips(x[:, None], y, 4, epochs=100, seed=0)
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
    assert acc > 0.95, acc
