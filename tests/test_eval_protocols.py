"""Downstream evaluation (paper §4.2-4.3): retrieval recall, weighted kNN, linear probe on clip
features with 10-clip softmax averaging, finetuning, and the CLI's outputs and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import yaml
from tiny import TINY as BASE_TINY

from ctrlaug.config import load_config
from ctrlaug.eval.datasets import build_eval_datasets
from ctrlaug.eval.encoder import load_encoder
from ctrlaug.eval.finetune import finetune
from ctrlaug.eval.linear import evaluate_clips, fit_linear_clips
from ctrlaug.eval.metrics import knn_top1, retrieval_recall
from ctrlaug.evaluate import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests/tiny.py with 24-frame videos, so 10 distinct 8-frame evaluation clips exist.
TINY = [*BASE_TINY, "synthetic.num_frames=24", "augment.global_frames=8", "augment.clip_frames=8", "epochs=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch tiny pretraining run; returns its folder."""
    from ctrlaug.engine.trainer import train

    out = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = load_config(None, [*TINY, f"out_dir={out}"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        train(cfg)
    return str(out)


# ------------------------------------------------------------------------------------------------
# retrieval


def _np_recall(q, ql, g, gl, ks):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    order = np.argsort(-(qn @ gn.T), axis=1, kind="stable")
    out = {}
    for k in ks:
        kk = min(k, len(g))
        out[k] = 100.0 * np.mean([(gl[order[i, :kk]] == ql[i]).any() for i in range(len(q))])
    return out


def test_retrieval_recall_matches_numpy():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(40, 16)), rng.normal(size=(70, 16))
    ql, gl = rng.integers(0, 5, 40), rng.integers(0, 5, 70)
    ks = (1, 5, 10, 20, 50, 100)  # 100 > gallery size: clipped
    got = retrieval_recall(torch.tensor(q), torch.tensor(ql), torch.tensor(g), torch.tensor(gl), ks)
    want = _np_recall(q, ql, g, gl, ks)
    assert set(got) == set(ks)
    for k in ks:
        assert got[k] == pytest.approx(want[k], abs=1e-4), (k, got[k], want[k])
    assert got[100] == pytest.approx(100.0)  # the whole gallery holds every class
    vals = [got[k] for k in ks]
    assert vals == sorted(vals)


def test_retrieval_perfect_and_shuffled():
    C, n = 10, 20
    labels = torch.arange(C).repeat_interleave(n)
    centres = torch.randn(C, 32) * 10
    feats = centres[labels] + 0.01 * torch.randn(len(labels), 32)
    r = retrieval_recall(feats, labels, feats + 0.01 * torch.randn_like(feats), labels)
    assert r[1] == 100.0
    # shuffled labels: R@1 about chance (1/C)
    shuffled = labels[torch.randperm(len(labels))]
    gal = torch.randn(2000, 32)
    gl = torch.randint(0, C, (2000,))
    q = torch.randn(1000, 32)
    r = retrieval_recall(q, torch.randint(0, C, (1000,)), gal, gl, ks=(1,))
    assert 5.0 < r[1] < 15.0, r
    r2 = retrieval_recall(feats, shuffled, feats, labels, ks=(1,))
    assert r2[1] < 30.0, r2


# ------------------------------------------------------------------------------------------------
# knn / linear on features that carry the label


def _labelled(n_per_class=30, C=4, V=10, D=24, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=g) * 2
    y = torch.arange(C).repeat_interleave(n_per_class)
    x = centres[y][:, None] + noise * torch.randn(len(y), V, D, generator=g)
    return x, y


def test_knn_above_chance_and_random_at_chance():
    trx, try_ = _labelled(seed=0)
    tex, tey = _labelled(seed=0, noise=1.0)
    tex = tex + torch.randn_like(tex)  # same class centres, fresh noise
    acc = knn_top1(trx.mean(1), try_, tex.mean(1), tey, k=20, t=0.07)
    assert acc > 90.0, acc
    n = 400
    rnd = knn_top1(
        torch.randn(n, 24), torch.randint(0, 4, (n,)), torch.randn(n, 24), torch.randint(0, 4, (n,))
    )
    assert rnd < 40.0, rnd


def test_knn_weighting_prefers_closer_neighbours():
    # one very close neighbour of class 1 vs two far ones of class 0: the temperature-weighted vote
    # picks class 1, a plain majority would pick class 0
    tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    trl = torch.tensor([1, 0, 0])
    assert knn_top1(tr, trl, torch.tensor([[1.0, 0.05]]), torch.tensor([1]), k=3, t=0.07) == 100.0


def test_linear_clip_protocol_above_chance():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 24, generator=g)
    y = torch.arange(4).repeat_interleave(20)
    trx = centres[y][:, None] + 1.5 * torch.randn(len(y), 10, 24, generator=g)
    tex = centres[y][:, None] + 1.5 * torch.randn(len(y), 10, 24, generator=g)
    clf = fit_linear_clips(trx, y, 4, epochs=40, batch_size=400)
    with torch.no_grad():
        res = evaluate_clips(clf(tex), y)
    assert res["clip_top1"] > 50.0
    assert res["video_top1"] >= res["clip_top1"]  # averaging 10 noisy clips helps
    assert res["video_top1"] > 90.0


def test_evaluate_clips_softmax_average():
    # video 0: two confident-wrong-ish clips lose to one very confident right clip after averaging
    logits = torch.tensor([[[0.0, 0.2], [0.0, 0.2], [10.0, 0.0]]])
    r = evaluate_clips(logits, torch.tensor([0]))
    assert r["clip_top1"] == pytest.approx(100 / 3)
    assert r["video_top1"] == 100.0


# ------------------------------------------------------------------------------------------------
# datasets, checkpoints and the CLI


def test_ten_distinct_uniform_clips():
    cfg = load_config(None, TINY)
    tr, te = build_eval_datasets(cfg)
    s = te[0]
    fi = s["frame_indices"]
    assert s["views"].shape[:3] == (10, 3, 8) and s["views"].shape[-1] == 32
    assert fi.shape == (10, 8)
    assert len({tuple(r.tolist()) for r in fi}) == 10  # 10 distinct clips
    starts = fi[:, 0]
    assert (starts.diff() > 0).all()  # ordered, spread over the video
    assert starts[0] == 0 and fi[-1, -1] == s["num_frames"] - 1
    assert ((fi.diff(dim=1)) == 1).all()  # consecutive frames per clip


def test_cli_writes_json_for_each_frozen_protocol(tiny_run, tmp_path):
    out = str(tmp_path / "ev")
    for proto, keys in [
        ("knn", {"knn_top1", "k", "t"}),
        ("retrieval", {"R@1", "R@5", "R@10", "R@20", "R@50"}),
        ("linear", {"clip_top1", "video_top1"}),
    ]:
        rc = main([proto, "--checkpoint", tiny_run, "--out", out, "--epochs", "5", "--cache"])
        assert rc == 0
        with open(os.path.join(out, f"eval_{proto}.json")) as f:
            res = json.load(f)
        assert keys <= set(res), (proto, res)
        assert res["num_train"] == 8 and res["num_test"] == 4 and res["clips"] == 10
        assert res["checkpoint"].endswith(".pt") and res["device"] == (
            "cuda" if torch.cuda.is_available() else "cpu"
        )
        assert os.path.isfile(os.path.join(out, f"eval_{proto}.md"))
    assert os.path.isfile(os.path.join(out, "features_train.pt"))  # cached once, reused
    assert main(["finetune", "--checkpoint", tiny_run, "--out", out, "--epochs", "1", "--clips", "2"]) == 0
    with open(os.path.join(out, "eval_finetune.json")) as f:
        res = json.load(f)
    assert {"clip_top1", "video_top1", "train_loss"} <= set(res) and len(res["train_loss"]) == 1
    assert res["finetune_aug"] == "crop"
    assert res["flip"] is False  # auto: mirroring changes the synthetic set's direction classes
    from ctrlaug.data.dataset import SyntheticMotion, VideoDataset

    assert SyntheticMotion.mirror_changes_labels and not VideoDataset.mirror_changes_labels
    assert main(["knn", "--checkpoint", tiny_run, "--random-init", "--out", out]) == 0
    with open(os.path.join(out, "eval_knn_random.json")) as f:
        assert json.load(f)["random_init"] is True


def test_finetune_reduces_training_loss(tiny_run):
    enc, cfg, _ = load_encoder(tiny_run)
    tr, te = build_eval_datasets(cfg, eval_clips=1)
    tr, te = [tr[i] for i in range(len(tr))], [te[i] for i in range(len(te))]  # render once
    # fixed data (one centre clip, no flip), full batch: the loss of the same 8 clips must go down
    res = finetune(enc, tr, te, 2, epochs=5, lr=1e-3, batch_size=8, seed=0, flip=False)
    losses = res["train_loss"]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    assert losses[-1] < 0.9 * losses[0], losses
    assert {"clip_top1", "video_top1"} <= set(res)


def test_finetune_crop_augmentation_jitters_local_clips(tiny_run):
    from ctrlaug.eval.datasets import build_finetune_train_set

    _, cfg, _ = load_encoder(tiny_run)
    ft = build_finetune_train_set(cfg)
    eval_tr, _ = build_eval_datasets(cfg, eval_clips=1)
    assert len(ft) == len(eval_tr) == 8
    ft.set_epoch(0)
    a, again = ft[3], ft[3]
    ft.set_epoch(1)
    b = ft[3]
    K, S = cfg.augment.num_clips, cfg.augment.size
    assert a["views"].shape == (K, 3, cfg.augment.clip_frames, S, S) and a["views"].dtype == torch.uint8
    assert a["label"] == b["label"] == eval_tr[3]["label"]
    # seeded by (seed, epoch, video): reproducible within an epoch, fresh crops / positions the next
    assert torch.equal(a["views"], again["views"])
    assert not torch.equal(a["views"], b["views"])
    # flip=False: no local clip is mirrored, whatever the epoch (flip=True: about half are)
    noflip = build_finetune_train_set(cfg, flip=False)
    flips = {True: [], False: []}
    for ep in range(4):
        for d, key in ((ft, True), (noflip, False)):
            d.set_epoch(ep)
            flips[key] += [float(d.ds[i]["boxes"][1:, 6].sum()) for i in range(len(d))]
    assert sum(flips[False]) == 0 and sum(flips[True]) > 0


def test_finetune_sets_the_epoch_of_its_training_set(tiny_run):
    class Spy(list):
        epochs: list[int] = []

        def set_epoch(self, e):
            self.epochs.append(e)

    enc, cfg, _ = load_encoder(tiny_run)
    tr, te = build_eval_datasets(cfg, eval_clips=1)
    spy = Spy(tr[i] for i in range(len(tr)))
    finetune(enc, spy, [te[0]], 2, epochs=3, batch_size=8)
    assert spy.epochs == [0, 1, 2]


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "ctrlaug.evaluate", "knn", "--checkpoint", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint not found" in lines[0], p.stderr


def test_empty_run_folder_and_mismatched_config(tiny_run, tmp_path, capsys):
    assert main(["knn", "--checkpoint", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with open(os.path.join(tiny_run, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["model"]["width"] = 0.125  # checkpoint was trained at 0.0625
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["knn", "--checkpoint", tiny_run, "--config", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match the model config" in err[0] and "width=0.125" in err[0], err


def test_bad_or_unavailable_device_is_one_clear_error(tiny_run, tmp_path, capsys):
    assert main(["knn", "--checkpoint", tiny_run, "--device", "tpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad --device 'tpu'" in err[0], err
    n = torch.cuda.device_count()
    assert main(["knn", "--checkpoint", tiny_run, "--device", f"cuda:{n}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cuda:{n}" in err[0], err
    assert not os.path.exists(tmp_path / "eval_knn.json")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_evaluation_matches_cpu(tiny_run, tmp_path, monkeypatch):
    # The same frozen features on GPU and CPU (TF32 convolutions off): identical retrieval recall.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    res = {}
    for dev in ("cpu", "cuda"):
        out = str(tmp_path / dev)
        assert (
            main(["retrieval", "--checkpoint", tiny_run, "--out", out, "--device", dev, "--clips", "2"]) == 0
        )
        with open(os.path.join(out, "eval_retrieval.json")) as f:
            res[dev] = json.load(f)
    assert res["cuda"]["device"].startswith("cuda")
    for k in ("R@1", "R@5", "R@10"):
        assert res["cuda"][k] == res["cpu"][k], (k, res)


def test_library_call_takes_options_and_matches_the_cli(tiny_run, tmp_path):
    from ctrlaug.errors import EvalError
    from ctrlaug.eval.options import EvalOptions
    from ctrlaug.eval.protocols import run

    assert main(["knn", "--checkpoint", tiny_run, "--out", str(tmp_path / "cli")]) == 0
    with open(tmp_path / "cli" / "eval_knn.json") as f:
        cli = json.load(f)
    lib = run(EvalOptions("knn", checkpoint=tiny_run, out=str(tmp_path / "lib")), log=lambda msg: None)
    assert lib["knn_top1"] == cli["knn_top1"] and lib["num_test"] == cli["num_test"]
    with pytest.raises(EvalError, match="protocol must be one of"):
        EvalOptions("linaer")
    with pytest.raises(EvalError, match="--random-init"):
        run(EvalOptions("knn"))


def test_load_encoder_needs_a_checkpoint_or_random_init():
    from ctrlaug.errors import EvalError
    from ctrlaug.eval.encoder import load_encoder

    with pytest.raises(EvalError, match="give a checkpoint .* or --random-init"):
        load_encoder(None)
    assert load_encoder(None, random_init=True)[2] is None  # the baseline: no checkpoint path
