"""Downstream evaluation of a pretrained encoder (paper §4.2-4.3): linear probe, finetuning,
nearest-neighbour retrieval and weighted kNN.

:func:`run` (``python -m ctrlaug.evaluate {linear,finetune,retrieval,knn} --checkpoint RUN_OR_CKPT``) loads the
encoder of a pretraining checkpoint (or a random-init one with ``--random-init``), builds the
datasets of the checkpoint's own config (or ``--dataset FORMAT --data-root ROOT``) in evaluation
mode (``eval_clips`` = 10 uniformly spaced clips per video, centre crop at the configured size),
and writes ``<out>/eval_<protocol>.json`` and ``.md``. Bad input (missing checkpoint, checkpoint
not matching the model config, bad dataset) raises :class:`ctrlaug.errors.EvalError`.

Protocols (see docs/evaluation.md):

* linear: frozen encoder; a linear classifier on the global-average-pooled last feature map,
  trained on every train clip; test: softmax of each of the 10 clips, averaged per video.
  Top-1 at clip level and video level.
* finetune: the whole encoder + a linear layer end to end on one random clip of each train video
  per epoch (plus horizontal flip); tested like linear.
* retrieval: test videos query the train set; video feature = mean of its 10 clips' pooled
  features, cosine similarity; R@k = a top-k neighbour shares the query's class (k = 1,5,10,20,50).
* knn: temperature-weighted kNN (k=20, t=0.07) on the same L2-normalised video features.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import torch

from ctrlaug.data import get_format
from ctrlaug.errors import EvalError
from ctrlaug.eval.datasets import build_eval_datasets, build_finetune_train_set, eval_config
from ctrlaug.eval.encoder import load_encoder, resolve_device
from ctrlaug.eval.features import cached_features, resolve_precision
from ctrlaug.eval.finetune import finetune
from ctrlaug.eval.linear import evaluate_clips, fit_linear_clips
from ctrlaug.eval.metrics import classification_metrics, knn_votes, retrieval_recall, video_metrics
from ctrlaug.eval.options import PROTOCOLS, EvalOptions
from ctrlaug.reports import write_report
from ctrlaug.utils.dist import init_distributed
from ctrlaug.utils.dist import rank as dist_rank
from ctrlaug.utils.provenance import provenance
from ctrlaug.utils.safeio import check_output_dir

__all__ = ["PROTOCOLS", "build_eval_datasets", "EvalOptions", "run", "run_folds", "parse_folds"]


def run(opts: EvalOptions, log=print) -> dict:
    """Run one protocol; writes ``<out>/eval_<protocol>.json`` and ``.md`` and returns the result
    dict. Bad input raises :class:`EvalError`."""
    if opts.folds:
        return run_folds(opts, log)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = resolve_device(opts.device)
    _check_precision(opts.precision, device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: shard feature extraction over ranks
        if opts.protocol == "finetune":
            raise EvalError("finetune runs in one process; start it without torchrun")
        _, _, local_rank = init_distributed(device.type)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
    fold = [f"fold={opts.fold}"] if opts.fold else []
    enc, cfg, ckpt = load_encoder(opts.checkpoint, opts.config, opts.random_init, fold)
    enc.to(device)
    out = opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir)
    check_output_dir(out, "evaluation output folder")  # before any feature is computed
    # --crops 3: the test clips of every protocol; for knn/retrieval the train (gallery) videos too,
    # so both sides average the same views (linear and finetune train on centre crops, as before)
    train_crops = opts.crops if opts.protocol in ("knn", "retrieval") else 1
    train_set, test_set = build_eval_datasets(
        cfg, opts.train_split, opts.test_split, opts.dataset, opts.data_root, opts.clips,
        test_crops=opts.crops, train_crops=train_crops,
    )  # fmt: skip
    suffix = "_random" if opts.random_init else ""
    num_classes = int(train_set.num_classes) if train_set.num_classes else 0
    num_classes = max(num_classes, int(max(train_set.labels)) + 1)
    t0 = time.perf_counter()
    res: dict = {
        "protocol": opts.protocol,
        "checkpoint": ckpt,
        "random_init": bool(opts.random_init),
        "dataset": opts.dataset or cfg.dataset,
        "device": str(device),
        "num_train": len(train_set),
        "num_test": len(test_set),
        "clips": opts.clips,
        "crops": opts.crops,
        "num_classes": num_classes,
        "precision": opts.precision,
    }
    if get_format(res["dataset"]).folds:
        res["fold"] = cfg.fold
    res["provenance"] = provenance(device)
    class_names = getattr(test_set, "classes", None)
    cache = out if opts.cache else None
    if opts.protocol == "finetune":
        crop = opts.finetune_aug == "crop"
        auto = not getattr(train_set, "mirror_changes_labels", False)
        flip = auto if opts.flip == "auto" else opts.flip == "yes"
        res["flip"] = flip
        ft_train = (
            build_finetune_train_set(cfg, opts.train_split, opts.dataset, opts.data_root, flip=flip)
            if crop
            else train_set
        )
        res["finetune_aug"] = opts.finetune_aug
        res.update(
            finetune(
                enc,
                ft_train,
                test_set,
                num_classes,
                epochs=opts.epochs or 5,
                lr=opts.lr or 1e-3,
                batch_size=opts.batch_size,
                seed=cfg.seed,
                num_workers=opts.workers,
                flip=flip and not crop,
                log=log,
                weight_decay=opts.weight_decay or 1e-5,
                optimizer=opts.optimizer,
                schedule=opts.schedule,
                warmup_epochs=opts.warmup_epochs,
                dropout=opts.dropout,
                amp=opts.amp,
                precision=opts.precision,
                progress=opts.progress,
            )
        )
        res.update(
            {k: getattr(opts, k) for k in ("optimizer", "schedule", "warmup_epochs", "dropout", "amp")}
        )
    else:
        ecfg = eval_config(cfg, opts.dataset, opts.data_root, opts.clips)
        trf, trl = cached_features(enc, train_set, "train", opts, ckpt, cache, ecfg)
        tef, tel = cached_features(enc, test_set, "test", opts, ckpt, cache, ecfg)
        chunk = opts.chunk or None
        if opts.protocol == "linear":
            clf = fit_linear_clips(
                trf, trl, num_classes, epochs=opts.epochs or 100, lr=opts.lr or 1e-2, seed=cfg.seed
            )
            with torch.no_grad():
                logits = clf(tef)
                res.update(evaluate_clips(logits, tel))
            res.update(video_metrics(logits.float().softmax(-1).mean(1), tel, test_set))
        elif opts.protocol == "retrieval":
            r = retrieval_recall(tef.mean(1), tel, trf.mean(1), trl, chunk=chunk)
            res.update({f"R@{k}": v for k, v in r.items()})
        else:
            votes = knn_votes(
                trf.mean(1), trl, tef.mean(1), k=opts.k, t=opts.t, num_classes=num_classes, chunk=chunk
            )
            # the formula of knn_top1, on the votes computed once
            res["knn_top1"] = (votes.argmax(1) == tel).float().mean().item() * 100
            m = classification_metrics(votes, tel, ks=(5,), class_names=class_names)
            res.update(
                {"knn_top5": m["top5"], "knn_mean_class": m["mean_class"], "per_class": m["per_class"]}
            )
            res.update({"k": opts.k, "t": opts.t})
    res["seconds"] = round(time.perf_counter() - t0, 2)
    if dist_rank() != 0:  # every rank holds the same gathered features and result; rank 0 reports
        return res
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"eval_{opts.protocol}{suffix}")
    metrics = {k: v for k, v in res.items() if isinstance(v, float) and k not in ("seconds", "t", "dropout")}
    md = [
        f"# {opts.protocol} evaluation\n\n",
        f"checkpoint: `{ckpt}`{' (random init)' if opts.random_init else ''}; dataset: {res['dataset']} "
        f"({res['num_train']} train / {res['num_test']} test videos, {opts.clips} clips x {opts.crops} crops)\n\n",
        "| metric | value |\n|---|---|\n",
        *(f"| {k} | {v:.2f} |\n" for k, v in metrics.items()),
    ]
    write_report(stem, res, "".join(md))
    res["json"], res["md"] = stem + ".json", stem + ".md"
    log(f"{opts.protocol}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()) + f" -> {stem}.json")
    return res


def _check_precision(precision: str, device: torch.device) -> None:
    try:
        resolve_precision(precision, device)
    except ValueError as e:
        raise EvalError(str(e)) from None


def parse_folds(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]; EvalError for anything else than distinct positive integers."""
    try:
        folds = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise EvalError(f"--folds must be comma-separated fold numbers like 1,2,3, got {text!r}") from None
    if not folds or min(folds) < 1 or len(set(folds)) != len(folds):
        raise EvalError(f"--folds must be distinct fold numbers >= 1, got {text!r}")
    return folds


def run_folds(opts: EvalOptions, log=print) -> dict:
    """One run per official fold of ``opts.folds`` (UCF-101 / HMDB-51: 1,2,3), each in
    ``<out>/fold<N>/`` (its own report and feature cache; a finetune starts each fold from the
    checkpoint again), then ``<out>/eval_<protocol>[_random]_folds.json`` and ``.md`` with, for
    every number the protocol reports, the per-fold values, their mean and their spread (sample
    standard deviation, 0 for one fold). Returns that summary dict."""
    folds = parse_folds(opts.folds)
    # the dataset decides whether folds exist: read it from the config the run would use
    _, cfg, ckpt = load_encoder(opts.checkpoint, opts.config, opts.random_init)
    fmt = get_format(opts.dataset or cfg.dataset)
    bad = [f for f in folds if f not in fmt.folds]
    if not fmt.folds or bad:
        have = ", ".join(map(str, fmt.folds)) or "none"
        raise EvalError(f"--folds {opts.folds}: dataset {fmt.name!r} has official folds {have}")
    out = opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir)
    check_output_dir(out, "evaluation output folder")
    per_fold = {}
    for f in folds:
        log(f"fold {f} of {','.join(map(str, folds))}")
        one = dataclasses.replace(opts, folds=None, fold=f, out=os.path.join(out, f"fold{f}"))
        per_fold[f] = run(one, log)
    if dist_rank() != 0:  # under torchrun rank 0 writes the reports
        return {"per_fold": per_fold}
    skip = ("seconds", "t", "dropout")
    names = [k for k, v in per_fold[folds[0]].items() if isinstance(v, float) and k not in skip]
    summary: dict = {
        "protocol": opts.protocol,
        "checkpoint": per_fold[folds[0]]["checkpoint"],
        "random_init": bool(opts.random_init),
        "dataset": fmt.name,
        "folds": folds,
        "metrics": {},
        "reports": {f: r["json"] for f, r in per_fold.items()},
        "provenance": provenance(per_fold[folds[0]]["device"]),
    }
    for k in names:
        vals = [float(per_fold[f][k]) for f in folds]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        summary["metrics"][k] = {"mean": mean, "std": std, "per_fold": vals}
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"eval_{opts.protocol}{'_random' if opts.random_init else ''}_folds")
    md = [
        f"# {opts.protocol} evaluation, folds {','.join(map(str, folds))}\n\n",
        f"checkpoint: `{summary['checkpoint']}`; dataset: {fmt.name}\n\n",
        "| metric | mean | std | " + " | ".join(f"fold {f}" for f in folds) + " |\n",
        "|---|---|---|" + "---|" * len(folds) + "\n",
    ]
    for k, m in summary["metrics"].items():
        cells = " | ".join(f"{v:.2f}" for v in m["per_fold"])
        md.append(f"| {k} | {m['mean']:.2f} | {m['std']:.2f} | {cells} |\n")
    write_report(stem, summary, "".join(md))
    summary["json"], summary["md"] = stem + ".json", stem + ".md"
    log(
        f"{opts.protocol} over folds {','.join(map(str, folds))}: "
        + ", ".join(f"{k} {m['mean']:.1f}+-{m['std']:.1f}" for k, m in summary["metrics"].items())
        + f" -> {stem}.json"
    )
    return summary
