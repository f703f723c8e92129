"""Scalable, standard evaluation (issue 21): chunked kNN / retrieval equal to the unchunked
computation with bounded memory, top-5 / mean-class / per-class against numpy, --folds, the
finetune recipe (its defaults are the earlier loop, step for step), precision and progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny import TINY

from ctrlaug.config import config_to_dict, load_config
from ctrlaug.errors import EvalError
from ctrlaug.eval.datasets import build_eval_datasets
from ctrlaug.eval.features import clip_loader, extract_clip_features, feature_cache_key, resolve_precision
from ctrlaug.eval.finetune import finetune, lr_factor
from ctrlaug.eval.linear import evaluate_clips
from ctrlaug.eval.metrics import classification_metrics, knn_top1, knn_votes, query_chunks, retrieval_recall
from ctrlaug.eval.options import EvalOptions
from ctrlaug.eval.protocols import parse_folds, run, run_folds
from ctrlaug.models import build_encoder, pool, prepare_input
from ctrlaug.utils.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# chunked kNN and retrieval


def _knn_unchunked(tr, trl, te, tel, k, t, C):
    """knn_top1 as it was before chunking: the whole test x train similarity matrix at once."""
    tr, te = F.normalize(tr.float(), dim=1), F.normalize(te.float(), dim=1)
    sim, idx = (te @ tr.T).topk(min(k, tr.shape[0]), dim=1)
    votes = torch.zeros(te.shape[0], C).scatter_add_(1, trl[idx], (sim / t).exp())
    return votes, (votes.argmax(1) == tel).float().mean().item() * 100


def _recall_unchunked(q, ql, g, gl, ks):
    """retrieval_recall as it was before chunking."""
    q, g = F.normalize(q.float(), dim=1), F.normalize(g.float(), dim=1)
    kmax = min(max(ks), g.shape[0])
    idx = (q @ g.T).topk(kmax, dim=1).indices
    first = torch.cumsum((gl[idx] == ql[:, None]).int(), dim=1) > 0
    return {k: first[:, min(k, kmax) - 1].float().mean().item() * 100 for k in ks}


def _random(Q=97, G=203, C=16, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(G, C, generator=g),
        torch.randint(classes, (G,), generator=g),
        torch.randn(Q, C, generator=g),
        torch.randint(classes, (Q,), generator=g),
    )


@pytest.mark.parametrize("chunk", [1, 5, 64, 97, 1000, None])
def test_chunked_knn_and_retrieval_equal_the_unchunked_result(chunk):
    tr, trl, te, tel = _random()
    votes_ref, top1_ref = _knn_unchunked(tr, trl, te, tel, 20, 0.07, 7)
    votes = knn_votes(tr, trl, te, k=20, t=0.07, num_classes=7, chunk=chunk)
    assert torch.equal(votes.argmax(1), votes_ref.argmax(1))
    # same neighbours, same weights: a one-row product may round the similarity differently in its
    # last bit, which exp(sim / 0.07) turns into ~1e-6 relative
    torch.testing.assert_close(votes, votes_ref, rtol=1e-5, atol=0)
    assert knn_top1(tr, trl, te, tel, k=20, t=0.07, num_classes=7, chunk=chunk) == top1_ref
    ks = (1, 5, 10, 20, 50, 500)  # 500 > G: clipped
    assert retrieval_recall(te, tel, tr, trl, ks=ks, chunk=chunk) == _recall_unchunked(te, tel, tr, trl, ks)


def test_default_chunk_is_one_block_for_small_problems_and_bounded_for_large():
    assert [(s.start, s.stop) for s in query_chunks(97, 203)] == [(0, 97)]
    blocks = list(query_chunks(100_000, 250_000))
    assert all((s.stop - s.start) * 250_000 <= 1 << 26 for s in blocks)
    assert blocks[0].start == 0 and blocks[-1].stop == 100_000
    assert [(s.start, s.stop) for s in query_chunks(5, 10, chunk=2)] == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="chunk"):
        list(query_chunks(5, 10, chunk=-1))


_PEAK = textwrap.dedent(
    """
    import sys, torch
    from ctrlaug.eval.metrics import knn_top1, retrieval_recall

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":"))

    torch.set_num_threads(1)
    chunk = int(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    N, C = 12000, 32
    tr, te = torch.randn(N, C, generator=g), torch.randn(N, C, generator=g)
    trl, tel = torch.randint(10, (N,), generator=g), torch.randint(10, (N,), generator=g)
    knn_top1(tr[:300], trl[:300], te[:300], tel[:300], chunk=100)  # warm up kernels and allocators
    retrieval_recall(te[:300], tel[:300], tr[:300], trl[:300], chunk=100)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the resident-set high-water mark (VmHWM) to the current RSS
    except OSError as e:
        print("unsupported", e)
        sys.exit(0)
    base = status("VmRSS")
    knn_top1(tr, trl, te, tel, chunk=chunk)
    retrieval_recall(te, tel, tr, trl, chunk=chunk)
    print((status("VmHWM") - base) / 1024)
    """
)


def _peak_mb(chunk: int) -> float:
    # a fixed mmap threshold: every large block is fresh pages, so the high-water mark sees it
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", _PEAK, str(chunk)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("unsupported"):
        pytest.skip(f"the resident-set high-water mark cannot be reset here: {r.stdout.strip()}")
    return float(r.stdout.split()[-1])


def test_chunked_peak_memory_is_bounded_by_the_block_not_the_matrix():
    # 12000 x 12000 similarities are 576 MB; blocks of 256 queries are 12 MB
    chunked = _peak_mb(256)
    whole = _peak_mb(12000)  # one block = the old full matrix: shows the measurement sees it
    assert whole > 500, whole
    assert chunked < 64, chunked


# ------------------------------------------------------------------------------------------------
# top-5, mean-class, per-class


def test_classification_metrics_match_numpy():
    g = torch.Generator().manual_seed(1)
    N, K = 120, 9
    scores = torch.randn(N, K, generator=g)
    labels = torch.randint(K - 1, (N,), generator=g)  # class K-1 never appears: not averaged
    names = [f"c{i}" for i in range(K)]
    m = classification_metrics(scores, labels, ks=(1, 5), class_names=names)
    s, y = scores.numpy().astype(np.float64), labels.numpy()
    order = np.argsort(-s, axis=1, kind="stable")
    top1 = (order[:, 0] == y).mean() * 100
    top5 = np.mean([y[i] in order[i, :5] for i in range(N)]) * 100
    per = {c: (order[y == c, 0] == c).mean() * 100 for c in np.unique(y)}
    assert m["top1"] == pytest.approx(top1, abs=1e-4)
    assert m["top5"] == pytest.approx(top5, abs=1e-4)
    assert m["mean_class"] == pytest.approx(np.mean(list(per.values())), abs=1e-4)
    assert set(m["per_class"]) == {names[c] for c in per}
    for c, v in per.items():
        assert m["per_class"][names[c]]["top1"] == pytest.approx(v, abs=1e-4)
        assert m["per_class"][names[c]]["n"] == int((y == c).sum())
    # mean-class differs from top-1 on an imbalanced set: 9 of class 0 right, 1 of class 1 wrong
    sc = torch.tensor([[1.0, 0.0]] * 10)
    m2 = classification_metrics(sc, torch.tensor([0] * 9 + [1]), ks=(1, 5))
    assert m2["top1"] == pytest.approx(90.0) and m2["mean_class"] == pytest.approx(50.0)
    assert m2["top5"] == pytest.approx(100.0)  # k clipped to the 2 classes


# ------------------------------------------------------------------------------------------------
# the evaluation driver: cache key, reports, folds


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    cfg = load_config(None, [*TINY, "synthetic.num_frames=24", "augment.clip_frames=8"])
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f)
    return str(path)


def test_cache_key_covers_every_input_of_the_features(tiny_yaml):
    cfg = load_config(tiny_yaml)
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.arch, cfg.model.width)
    tr, _ = build_eval_datasets(cfg, eval_clips=2)

    def key(opts=None, c=cfg, e=enc):
        return feature_cache_key(e, c, tr, "train", opts or EvalOptions("knn", random_init=True), None)

    base = key()
    assert key() == base  # deterministic
    assert key(EvalOptions("knn", random_init=True, clips=3)) != base
    assert key(EvalOptions("knn", random_init=True, precision="bf16")) != base
    assert key(c=load_config(tiny_yaml, ["augment.size=24"])) != base
    assert key(c=load_config(tiny_yaml, ["augment.eval_crop=0.5"])) != base
    torch.manual_seed(1)
    assert key(e=build_encoder(cfg.model.arch, cfg.model.width)) != base  # other weights
    assert key(e=build_encoder(cfg.model.arch, cfg.model.width, [4])) != base  # other architecture
    json.dumps(base)  # JSON-able (it is stored beside the features)


def test_cache_is_not_reused_across_clips_and_reports_are_complete(tiny_yaml, tmp_path):
    out = str(tmp_path / "ev")
    common = dict(config=tiny_yaml, random_init=True, cache=True, out=out, progress=False)
    r2 = run(EvalOptions("knn", clips=2, **common), log=lambda *_: None)
    assert torch.load(os.path.join(out, "features_test.pt"), weights_only=False)["feats"].shape[1] == 2
    run(EvalOptions("knn", clips=3, **common), log=lambda *_: None)
    # the earlier key had no clips: the 2-clip features were reused for a 3-clip run
    assert torch.load(os.path.join(out, "features_test.pt"), weights_only=False)["feats"].shape[1] == 3
    with open(r2["json"]) as f:
        rep = json.load(f)
    assert {"knn_top1", "knn_top5", "knn_mean_class", "per_class", "provenance"} <= set(rep)
    assert set(rep["per_class"]) <= {
        "right",
        "left",
        "up",
        "down",
        "clockwise",
        "anticlockwise",
        "zoom_in",
        "zoom_out",
    }
    assert sum(v["n"] for v in rep["per_class"].values()) == rep["num_test"]
    from ctrlaug.utils.provenance import PROVENANCE_KEYS

    assert set(PROVENANCE_KEYS) <= set(rep["provenance"])
    assert rep["provenance"]["device"] == rep["device"]
    lin = run(EvalOptions("linear", clips=2, epochs=3, **common), log=lambda *_: None)
    assert {"video_top1", "video_top5", "video_mean_class", "per_class"} <= set(lin)


def test_folds_are_parsed_refused_without_official_splits_and_averaged(tiny_yaml, tmp_path, monkeypatch):
    assert parse_folds("1,2,3") == [1, 2, 3]
    for bad in ("a", "0", "1,1", ""):
        with pytest.raises(EvalError, match="--folds"):
            parse_folds(bad)
    with pytest.raises(EvalError, match="official folds none"):
        run_folds(EvalOptions("knn", config=tiny_yaml, random_init=True, folds="1,2", out=str(tmp_path)))
    with pytest.raises(EvalError, match="official folds 1, 2, 3"):
        run_folds(EvalOptions("knn", config=tiny_yaml, random_init=True, folds="1,4", dataset="ucf101"))
    import ctrlaug.eval.protocols as ev

    seen = []

    def fake_run(opts, log=print):
        seen.append((opts.fold, opts.out, opts.folds))
        return {
            "checkpoint": None,
            "device": "cpu",
            "json": f"{opts.out}/x.json",
            "knn_top1": 10.0 * opts.fold,
        }

    monkeypatch.setattr(ev, "run", fake_run)
    out = str(tmp_path / "f")
    s = run_folds(
        EvalOptions("knn", config=tiny_yaml, random_init=True, folds="1,2,3", dataset="ucf101", out=out)
    )
    assert [f for f, _, _ in seen] == [1, 2, 3] and all(o.endswith(f"fold{f}") for f, o, _ in seen)
    assert all(fs is None for _, _, fs in seen)
    m = s["metrics"]["knn_top1"]
    assert (
        m["per_fold"] == [10.0, 20.0, 30.0]
        and m["mean"] == pytest.approx(20.0)
        and m["std"] == pytest.approx(10.0)
    )
    with open(os.path.join(out, "eval_knn_random_folds.json")) as f:
        assert json.load(f)["metrics"]["knn_top1"]["mean"] == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------------
# finetune recipe


def _finetune_before(
    encoder, train_set, test_set, num_classes, *, epochs, lr, batch_size, weight_decay, seed, flip
):
    """The finetune loop of earlier versions, verbatim in substance (Adam, constant lr)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(encoder.out_channels, num_classes)
    opt = torch.optim.Adam(
        list(encoder.parameters()) + list(head.parameters()), lr=lr, weight_decay=weight_decay
    )
    losses = []
    for ep in range(epochs):
        encoder.train()
        tot, n = 0.0, 0
        for b in clip_loader(train_set, batch_size, shuffle=True, seed=seed + ep):
            v = b["views"]
            pick = torch.randint(v.shape[1], (v.shape[0],), generator=g)
            x = v[torch.arange(v.shape[0]), pick]
            if flip:
                f = torch.rand(v.shape[0], generator=g) < 0.5
                x[f] = x[f].flip(-1)
            loss = F.cross_entropy(head(pool(encoder(prepare_input(x)))), b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot, n = tot + loss.item() * len(x), n + len(x)
        losses.append(tot / max(n, 1))
    encoder.eval()
    logits, labels = extract_clip_features(encoder, test_set, batch_size, 0, head=head)
    return {**evaluate_clips(logits, labels), "train_loss": losses}, encoder.state_dict()


def test_finetune_defaults_are_the_earlier_loop_step_for_step(tiny_yaml):
    cfg = load_config(tiny_yaml)
    tr, te = build_eval_datasets(cfg, eval_clips=2)
    tr, te = [tr[i] for i in range(len(tr))], [te[i] for i in range(len(te))]
    kw = dict(epochs=2, lr=1e-3, batch_size=3, weight_decay=1e-5, seed=0, flip=True)
    results = []
    for fn in (_finetune_before, finetune):
        torch.manual_seed(0)
        enc = build_encoder(cfg.model.arch, cfg.model.width)
        torch.manual_seed(5)  # the head's init draws from the global RNG in both
        res = fn(enc, tr, te, 2, **kw)
        results.append((res[0], res[1]) if isinstance(res, tuple) else (res, enc.state_dict()))
    (old, old_sd), (new, new_sd) = results
    assert new["train_loss"] == old["train_loss"]
    assert new["video_top1"] == old["video_top1"] and new["clip_top1"] == old["clip_top1"]
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)
    # a recipe setting does change the run
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.arch, cfg.model.width)
    torch.manual_seed(5)
    cos = finetune(enc, tr, te, 2, **kw, schedule="cosine", dropout=0.5)
    assert cos["train_loss"] != old["train_loss"]
    with pytest.raises(EvalError, match="CUDA"):
        finetune(enc, tr, te, 2, epochs=1, amp="bf16")
    with pytest.raises(EvalError, match="dropout"):
        finetune(enc, tr, te, 2, epochs=1, dropout=1.0)


def test_lr_schedules():
    assert [lr_factor("constant", i, 10) for i in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0, 10) == pytest.approx(1.0)
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert [lr_factor("step", i, 10) for i in (0, 5, 6, 8, 9)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    assert [lr_factor("cosine", i, 12, warmup=2) for i in (0, 1)] == pytest.approx([0.5, 1.0])
    assert lr_factor("cosine", 2, 12, warmup=2) == pytest.approx(1.0)
    with pytest.raises(EvalError, match="schedule"):
        lr_factor("linear", 0, 10)


# ------------------------------------------------------------------------------------------------
# precision and progress


def test_precision_logic(monkeypatch):
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("auto", "cpu") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") is torch.bfloat16
    assert resolve_precision("fp16", "cuda") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") is None


def test_bf16_extraction_runs_under_autocast_and_returns_float32(tiny_yaml):
    cfg = load_config(tiny_yaml)
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.arch, cfg.model.width)
    _, te = build_eval_datasets(cfg, eval_clips=2)
    f32, y = extract_clip_features(enc, te, 2)
    b16, y2 = extract_clip_features(enc, te, 2, precision="bf16")
    assert b16.dtype == torch.float32 and b16.shape == f32.shape and torch.equal(y, y2)
    assert not torch.equal(b16, f32)  # the bf16 path really ran
    torch.testing.assert_close(b16, f32, rtol=0.1, atol=0.1)  # bf16: ~3 significant digits
    assert torch.equal(extract_clip_features(enc, te, 2, precision="fp32")[0], f32)


def test_progress_bar_lines():
    s = io.StringIO()
    bar = Progress(100, "features test", unit="videos", stream=s)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = s.getvalue().splitlines()
    assert 10 <= len(lines) <= 11, lines  # one line per tenth on a non-TTY stream
    assert lines[-1].startswith("features test [####################] 100/100") and "videos/s" in lines[-1]
    s2 = io.StringIO()
    Progress(10, "x", stream=s2, enabled=False).update(5)
    assert s2.getvalue() == ""
