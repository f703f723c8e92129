"""Downstream evaluation of a pretrained encoder (paper §4.2-4.3): linear probe, finetuning,
nearest-neighbour retrieval and weighted kNN.

``python -m ctrlaug.evaluate {linear,finetune,retrieval,knn} --checkpoint RUN_OR_CKPT`` loads the
encoder of a pretraining checkpoint (or a random-init one with ``--random-init``), builds the
datasets of the checkpoint's own config (or ``--dataset FORMAT --data-root ROOT``) in evaluation
mode (``eval_clips`` = 10 uniformly spaced clips per video, centre crop at the configured size),
and writes ``<out>/eval_<protocol>.json`` and ``.md``. Bad input (missing checkpoint, checkpoint
not matching the model config, bad dataset) prints one ``error:`` line and exits with code 2.

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

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.data import build_train_dataset, get_format
from ctrlaug.floor import random_init_seed
from ctrlaug.models import build_encoder, pool, prepare_input
from ctrlaug.probe import (
    PRECISIONS,
    autocast,
    classification_metrics,
    clip_loader,
    evaluate_clips,
    extract_clip_features,
    fit_linear_clips,
    knn_top1,
    knn_votes,
    resolve_precision,
    retrieval_recall,
)
from ctrlaug.utils.atomic import atomic_open
from ctrlaug.utils.checkpoint import CheckpointError, UnsafeFileError, safe_load, verify_checksum
from ctrlaug.utils.device import resolve_device as _resolve_device
from ctrlaug.utils.progress import Progress
from ctrlaug.utils.provenance import provenance

__all__ = [
    "EvalError",
    "retrieval_recall",
    "knn_top1",
    "load_encoder",
    "resolve_checkpoint",
    "extract_clip_features",
    "fit_linear_clips",
    "evaluate_clips",
    "finetune",
    "lr_factor",
    "feature_cache_key",
    "build_eval_datasets",
    "EvalOptions",
    "run",
    "run_folds",
    "parse_folds",
    "main",
]

PROTOCOLS = ("linear", "finetune", "retrieval", "knn")


class EvalError(ValueError):
    """Bad evaluation input (missing checkpoint, config mismatch, bad dataset): one clear line."""


# ------------------------------------------------------------------------------------------------
# checkpoint and datasets


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or the newest ``ckpt_*.pt`` of a run folder; EvalError if none."""
    from ctrlaug.utils.checkpoint import list_checkpoints

    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise EvalError(f"no checkpoint (ckpt_*.pt) in run folder {path}")
        return found[0]
    if not os.path.isfile(path):
        raise EvalError(f"checkpoint not found: {path}")
    return path


def load_encoder(
    checkpoint: str | None,
    config_path: str | None = None,
    random_init: bool = False,
    overrides: Sequence[str] = (),
    init: int = 0,
):
    """Encoder of a pretraining checkpoint: ``(encoder, TrainConfig, checkpoint path or None)``.

    The model config is the checkpoint's own, or ``config_path`` (YAML) when given; the
    checkpoint's encoder weights must match it exactly, otherwise EvalError. ``random_init`` keeps
    the freshly initialised encoder as a baseline (init ``init`` of the floor's seed convention,
    :func:`ctrlaug.floor.random_init_seed`: ``seed + 1 + init``); one of the two
    must be asked for, else EvalError.
    """
    from ctrlaug.config import ConfigError, config_from_dict, load_config, migrate_saved_config
    from ctrlaug.config import apply_overrides as _apply

    if not checkpoint and not random_init:
        raise EvalError(
            "no encoder asked for: give a checkpoint (a ckpt_*.pt or a run folder) or --random-init"
        )
    state, path = None, None
    if checkpoint:
        path = resolve_checkpoint(checkpoint)
        try:
            verify_checksum(path)  # when it has one: a damaged file is refused
            state = safe_load(path)  # weights_only: a checkpoint never runs code
        except CheckpointError as e:
            raise EvalError(str(e)) from None
        except Exception as e:
            raise EvalError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise EvalError(f"{path} is not a ctrlaug pretraining checkpoint (no 'model'/'config')")
    try:
        if config_path:
            cfg = load_config(config_path, list(overrides))
        elif state is not None:
            cfg = config_from_dict(_apply(migrate_saved_config(dict(state["config"])), list(overrides)))
        else:
            cfg = load_config(None, list(overrides))
    except (ConfigError, OSError) as e:
        raise EvalError(f"bad config: {e}".splitlines()[0]) from None
    # a random-init encoder follows the floor's seed convention (ctrlaug.floor): init `init` of seed s
    torch.manual_seed(random_init_seed(cfg.seed, init) if random_init else cfg.seed)
    enc = build_encoder(cfg.arch, cfg.width, cfg.spatial_stride1_stages)
    if state is not None and not random_init:
        sd = {k[len("encoder.") :]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        if not sd:
            raise EvalError(f"{path} holds no encoder weights")
        try:
            enc.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            ck = state["config"]
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            raise EvalError(
                f"checkpoint {path} (arch={ck.get('arch')}, width={ck.get('width')}) does not match the "
                f"model config (arch={cfg.arch}, width={cfg.width}): " + detail
            ) from None
    return enc, cfg, path


def resolve_device(want: str) -> torch.device:
    """'auto' -> cuda if available else cpu; EvalError for an unknown or unavailable device
    (:func:`ctrlaug.utils.device.resolve_device`)."""
    return _resolve_device(want, "--device", EvalError)


def build_eval_datasets(
    cfg,
    train_split: str | None = None,
    test_split: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    eval_clips: int = 10,
):
    """(train, test) eval-mode datasets: ``eval_clips`` uniformly spaced clips, centre crop."""
    c = _eval_config(cfg, dataset, data_root, eval_clips)
    tr = _build(c, train_split or cfg.split, "eval")
    te = _build(c, test_split or cfg.probe_split, "eval")
    if len(tr) == 0 or len(te) == 0:
        raise EvalError(f"dataset {c.dataset!r} has an empty split ({len(tr)} train, {len(te)} test)")
    return tr, te


def build_finetune_train_set(
    cfg, train_split: str | None = None, dataset=None, data_root=None, flip: bool = True
):
    """The finetuning training set with spatio-temporal jitter: each sample's ``views`` are the K
    local clips of the pretraining sampler (random temporal position, random resized crop,
    random flip unless ``flip=False``; no colour or blur), see :class:`LocalClips`."""
    c = _eval_config(cfg, dataset, data_root)
    if not flip:
        c = dataclasses.replace(c, augment=dataclasses.replace(c.augment, local_flip_prob=0.0))
    return LocalClips(_build(c, train_split or cfg.split, "pretrain"))


class LocalClips(torch.utils.data.Dataset):
    """Pretrain-mode samples reduced to their K local clips: view 0 (the global view) dropped from
    ``views`` (uint8 [K, 3, F, S, S]), ``boxes`` and ``frame_indices``; the other keys kept."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.ds, "set_epoch"):
            self.ds.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        s = dict(self.ds[index])
        for k in ("views", "boxes", "frame_indices"):
            s[k] = s[k][1:]
        return s


def _eval_config(
    cfg, dataset: str | None = None, data_root: str | None = None, eval_clips: int | None = None
):
    c = (
        cfg
        if eval_clips is None
        else dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, eval_clips=eval_clips))
    )
    if dataset:
        c = dataclasses.replace(c, dataset=dataset)
    if data_root:
        c = dataclasses.replace(c, data_root=data_root)
    return c


def _build(c, split: str, mode: str):
    try:
        return build_train_dataset(c, split, mode=mode)
    except (ValueError, OSError) as e:
        raise EvalError(f"cannot build dataset {c.dataset!r} ({c.data_root or 'no root'}): {e}") from None


SCHEDULES = ("constant", "cosine", "step")


def lr_factor(schedule: str, it: int, total: int, warmup: int = 0, milestones=(0.6, 0.8)) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total``: linear warm-up over the first
    ``warmup`` iterations, then ``constant`` (1), ``cosine`` (half cosine from 1 to 0) or ``step``
    (x0.1 at each fraction of ``total`` in ``milestones``)."""
    if schedule not in SCHEDULES:
        raise EvalError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if it < warmup:
        return (it + 1) / warmup
    if schedule == "cosine":
        span = max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(it - warmup, span) / span))
    if schedule == "step":
        return 0.1 ** sum(it >= m * total for m in milestones)
    return 1.0


def finetune(
    encoder: nn.Module,
    train_set,
    test_set,
    num_classes: int,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 4,
    weight_decay: float = 1e-5,
    seed: int = 0,
    flip: bool = True,
    num_workers: int = 0,
    log=None,
    optimizer: str = "adam",
    momentum: float = 0.9,
    schedule: str = "constant",
    warmup_epochs: int = 0,
    dropout: float = 0.0,
    amp: str = "off",
    precision: str = "fp32",
    progress: bool = False,
) -> dict:
    """Finetune encoder + linear layer end to end; returns losses per epoch and the 10-clip test.

    Each epoch every train video contributes one random clip of its sample's ``views`` (random
    horizontal flip unless ``flip=False``). ``train_set``: an eval-mode dataset (the
    ``centre`` augmentation: its uniformly spaced centre crops), :func:`build_finetune_train_set`
    (the ``crop`` augmentation: jittered local clips, which bring their own flip), or a list of
    samples; ``set_epoch(epoch)`` is called on it when it has one. ``test_set``: eval-mode.
    Runs on the encoder's device. Test as in :func:`evaluate_clips`, plus top-5, mean-class and
    per-class accuracy of the video scores (:func:`ctrlaug.probe.classification_metrics`).

    The recipe: ``optimizer`` ``adam`` or ``sgd`` (with ``momentum``, Nesterov), ``schedule``
    (:func:`lr_factor`, per iteration, after ``warmup_epochs`` of linear warm-up), ``dropout``
    before the linear layer, ``amp`` ``off``/``bf16``/``fp16`` (CUDA: mixed precision training,
    fp16 with a gradient scaler), ``precision`` of the test pass. The defaults (Adam, constant lr,
    no dropout, fp32) are the recipe of earlier versions, step for step: ``ctrlaug.calibrate``
    relies on them.
    """
    if schedule not in SCHEDULES:
        raise EvalError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if optimizer not in ("adam", "sgd"):
        raise EvalError(f"optimizer must be adam or sgd, got {optimizer!r}")
    if amp not in ("off", "bf16", "fp16"):
        raise EvalError(f"amp must be off, bf16 or fp16, got {amp!r}")
    if not 0.0 <= dropout < 1.0:
        raise EvalError(f"dropout must be in [0, 1), got {dropout}")
    g = torch.Generator().manual_seed(seed)
    dev = next(encoder.parameters()).device
    if amp != "off" and dev.type != "cuda":
        raise EvalError(f"amp={amp} needs a CUDA device, the encoder is on {dev}")
    head = nn.Linear(encoder.out_channels, num_classes).to(dev)
    params = list(encoder.parameters()) + list(head.parameters())
    if dropout > 0:  # only then: the default head is exactly the earlier one
        head = nn.Sequential(nn.Dropout(dropout), head)
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    bar = Progress(total, "finetune", unit="steps") if progress else None
    losses, it = [], 0
    for ep in range(epochs):
        encoder.train()
        head.train()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(ep)
        tot, n = 0.0, 0
        for b in clip_loader(train_set, batch_size, shuffle=True, seed=seed + ep, num_workers=num_workers):
            v = b["views"]  # [B, V, 3, F, S, S]
            pick = torch.randint(v.shape[1], (v.shape[0],), generator=g)
            x = v[torch.arange(v.shape[0]), pick]
            if flip:
                f = torch.rand(v.shape[0], generator=g) < 0.5
                x[f] = x[f].flip(-1)
            if schedule != "constant" or warmup:
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(schedule, it, total, warmup)
            with autocast(dev, amp_dtype):
                logits = head(pool(encoder(prepare_input(x.to(dev)))))
            loss = F.cross_entropy(logits.float(), b["label"].to(dev))
            opt.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            tot, n = tot + loss.item() * len(x), n + len(x)
            it += 1
            if bar:
                bar.update(1, f"ep {ep + 1}/{epochs} loss {tot / max(n, 1):.4f}")
        losses.append(tot / max(n, 1))
        if log:
            log(f"finetune epoch {ep + 1}/{epochs}: loss {losses[-1]:.4f}")
    if bar:
        bar.close()
    encoder.eval()
    head.eval()
    logits, labels = extract_clip_features(
        encoder,
        test_set,
        batch_size,
        num_workers,
        head=head,
        precision=precision,
        progress="features test" if progress else None,
    )
    res = evaluate_clips(logits, labels)
    res.update(_video_metrics(logits.float().softmax(-1).mean(1), labels, test_set))
    res["train_loss"] = losses
    return res


def _video_metrics(scores: torch.Tensor, labels: torch.Tensor, test_set) -> dict:
    """``video_top5``, ``video_mean_class`` and ``per_class`` of video scores [N, K]."""
    m = classification_metrics(scores, labels, ks=(5,), class_names=getattr(test_set, "classes", None))
    return {"video_top5": m["top5"], "video_mean_class": m["mean_class"], "per_class": m["per_class"]}


# ------------------------------------------------------------------------------------------------
# driver


@dataclasses.dataclass
class EvalOptions:
    """One evaluation run (the ``python -m ctrlaug.evaluate`` arguments; see :func:`build_parser`
    for each field's help). ``epochs``/``lr`` 0 = the protocol's default."""

    protocol: str  # one of PROTOCOLS
    checkpoint: str | None = None  # ckpt_*.pt or a run folder (its newest checkpoint)
    config: str | None = None  # model/data config YAML (default: the checkpoint's own)
    random_init: bool = False  # random-init encoder baseline
    dataset: str | None = None  # dataset format (default: the checkpoint config's)
    data_root: str | None = None
    train_split: str | None = None  # default: config split
    test_split: str | None = None  # default: config probe_split
    clips: int = 10  # uniformly spaced clips per video
    epochs: int = 0  # linear 100, finetune 5
    lr: float = 0.0  # linear 1e-2, finetune 1e-3
    batch_size: int = 4
    finetune_aug: str = "crop"  # "crop" or "centre"
    flip: str = "auto"  # "auto", "yes" or "no"
    k: int = 20  # knn neighbours
    t: float = 0.07  # knn vote temperature
    cache: bool = False  # cache clip features in the out folder
    out: str | None = None  # default: the checkpoint's run folder
    threads: int = 0  # torch CPU threads (0 = default)
    device: str = "auto"
    workers: int = 0  # DataLoader worker processes
    fold: int = 0  # official split of ucf101/hmdb51 (0 = the config's `fold`)
    folds: str | None = None  # "1,2,3": one run per fold, then mean and spread
    precision: str = "fp32"  # forward precision of feature extraction: fp32, bf16, fp16, auto
    chunk: int = 0  # queries per similarity block of knn/retrieval (0 = auto, <= 256 MB blocks)
    weight_decay: float = 0.0  # finetune (0 = 1e-5)
    optimizer: str = "adam"  # finetune: adam or sgd
    schedule: str = "constant"  # finetune lr schedule: constant, cosine, step
    warmup_epochs: int = 0  # finetune linear warm-up
    dropout: float = 0.0  # finetune: dropout before the linear layer
    amp: str = "off"  # finetune mixed precision (CUDA): off, bf16, fp16
    progress: bool = True  # progress bars on stderr

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EvalError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")


def _tensor_digest(sd: dict) -> str:
    h = hashlib.sha1()
    for k, v in sd.items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_cache_key(enc: nn.Module, cfg, ds, split: str, opts: EvalOptions, ckpt: str | None) -> dict:
    """Everything the clip features of ``ds`` depend on: the encoder (architecture and a digest
    of its weights and BN statistics, so checkpoint, ``--random-init`` and ``--config`` are all
    covered), the dataset (format, root, fold, split, size, the rendered sets' and the decoder's
    settings), the clip geometry (``--clips`` and every ``augment`` field: size, frames, crop) and
    the forward precision. ``cfg``: the model/data config the datasets were built from."""
    from ctrlaug.config import config_to_dict

    c = config_to_dict(cfg)
    fmt = (opts.dataset or cfg.dataset).lower()
    return {
        "checkpoint": os.path.abspath(ckpt) if ckpt else None,
        "random_init": bool(opts.random_init),
        "encoder": {
            "arch": cfg.arch,
            "width": cfg.width,
            "spatial_stride1_stages": list(cfg.spatial_stride1_stages),
            "sha1": _tensor_digest(enc.state_dict()),
        },
        "dataset": fmt,
        "data_root": opts.data_root or cfg.data_root,
        "fold": cfg.fold,
        "split": split,
        "n": len(ds),
        "clips": opts.clips,
        "augment": c["augment"],
        "data": c["data"],
        "rendered": c.get(fmt),  # the synthetic / shapes settings; None for a dataset of files
        "precision": opts.precision,
    }


def _features(enc, ds, split: str, opts: EvalOptions, ckpt: str | None, cache_dir: str | None, cfg=None):
    """Clip features, cached as ``<out>/features_<split>.pt`` under :func:`feature_cache_key`
    (reused only when every input of the features matches)."""
    path = os.path.join(cache_dir, f"features_{split}.pt") if cache_dir else None
    key = feature_cache_key(enc, cfg, ds, split, opts, ckpt) if path else None
    if path and os.path.isfile(path):
        try:
            c = safe_load(path)  # weights_only: a planted cache never runs code
            if isinstance(c, dict) and c.get("key") == key:
                return c["feats"], c["labels"]
        except UnsafeFileError as e:
            print(f"[ctrlaug.evaluate] ignoring the feature cache, recomputing it: {e}", file=sys.stderr)
        except Exception:
            pass
    f, y = extract_clip_features(
        enc,
        ds,
        opts.batch_size,
        num_workers=opts.workers,
        precision=opts.precision,
        progress=f"features {split}" if opts.progress else None,
    )
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            torch.save({"key": key, "feats": f, "labels": y}, fh)
    return f, y


def run(opts: EvalOptions, log=print) -> dict:
    """Run one protocol; writes ``<out>/eval_<protocol>.json`` and ``.md`` and returns the result
    dict. Bad input raises :class:`EvalError`."""
    if opts.folds:
        return run_folds(opts, log)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = resolve_device(opts.device)
    _check_precision(opts.precision, device)
    fold = [f"fold={opts.fold}"] if opts.fold else []
    enc, cfg, ckpt = load_encoder(opts.checkpoint, opts.config, opts.random_init, fold)
    enc.to(device)
    train_set, test_set = build_eval_datasets(
        cfg, opts.train_split, opts.test_split, opts.dataset, opts.data_root, opts.clips
    )
    out = opts.out or (os.path.dirname(ckpt) if ckpt else cfg.out_dir)
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
        ecfg = _eval_config(cfg, opts.dataset, opts.data_root, opts.clips)
        trf, trl = _features(enc, train_set, "train", opts, ckpt, cache, ecfg)
        tef, tel = _features(enc, test_set, "test", opts, ckpt, cache, ecfg)
        chunk = opts.chunk or None
        if opts.protocol == "linear":
            clf = fit_linear_clips(
                trf, trl, num_classes, epochs=opts.epochs or 100, lr=opts.lr or 1e-2, seed=cfg.seed
            )
            with torch.no_grad():
                logits = clf(tef)
                res.update(evaluate_clips(logits, tel))
            res.update(_video_metrics(logits.float().softmax(-1).mean(1), tel, test_set))
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
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"eval_{opts.protocol}{suffix}")
    with atomic_open(stem + ".json", "w") as f:
        json.dump(res, f, indent=2)
    metrics = {k: v for k, v in res.items() if isinstance(v, float) and k not in ("seconds", "t", "dropout")}
    with atomic_open(stem + ".md", "w") as f:
        f.write(f"# {opts.protocol} evaluation\n\n")
        f.write(
            f"checkpoint: `{ckpt}`{' (random init)' if opts.random_init else ''}; dataset: {res['dataset']} "
            f"({res['num_train']} train / {res['num_test']} test videos, {opts.clips} clips)\n\n"
        )
        f.write("| metric | value |\n|---|---|\n")
        for k, v in metrics.items():
            f.write(f"| {k} | {v:.2f} |\n")
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
    per_fold = {}
    for f in folds:
        log(f"fold {f} of {','.join(map(str, folds))}")
        one = dataclasses.replace(opts, folds=None, fold=f, out=os.path.join(out, f"fold{f}"))
        per_fold[f] = run(one, log)
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
    with atomic_open(stem + ".json", "w") as fh:
        json.dump(summary, fh, indent=2)
    with atomic_open(stem + ".md", "w") as fh:
        fh.write(f"# {opts.protocol} evaluation, folds {','.join(map(str, folds))}\n\n")
        fh.write(f"checkpoint: `{summary['checkpoint']}`; dataset: {fmt.name}\n\n")
        fh.write("| metric | mean | std | " + " | ".join(f"fold {f}" for f in folds) + " |\n")
        fh.write("|---|---|---|" + "---|" * len(folds) + "\n")
        for k, m in summary["metrics"].items():
            cells = " | ".join(f"{v:.2f}" for v in m["per_fold"])
            fh.write(f"| {k} | {m['mean']:.2f} | {m['std']:.2f} | {cells} |\n")
    summary["json"], summary["md"] = stem + ".json", stem + ".md"
    log(
        f"{opts.protocol} over folds {','.join(map(str, folds))}: "
        + ", ".join(f"{k} {m['mean']:.1f}+-{m['std']:.1f}" for k, m in summary["metrics"].items())
        + f" -> {stem}.json"
    )
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctrlaug.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("--checkpoint", help="ckpt_*.pt file or a run folder (its newest checkpoint)")
    p.add_argument("--config", help="model/data config YAML (default: the checkpoint's own)")
    p.add_argument("--random-init", action="store_true", help="random-init encoder baseline")
    p.add_argument("--dataset", help="dataset format (default: the checkpoint config's)")
    p.add_argument("--data-root", help="dataset root (default: the checkpoint config's)")
    p.add_argument("--train-split", help="train / gallery split (default: config split)")
    p.add_argument("--test-split", help="test / query split (default: config probe_split)")
    p.add_argument("--clips", type=int, default=10, help="uniformly spaced clips per video (paper: 10)")
    p.add_argument("--epochs", type=int, default=0, help="epochs (default: linear 100, finetune 5)")
    p.add_argument(
        "--lr", type=float, default=0.0, help="learning rate (default: linear 1e-2, finetune 1e-3)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="videos per batch")
    p.add_argument(
        "--finetune-aug",
        choices=("crop", "centre"),
        default="crop",
        help="finetune training clips: 'crop' = the pretraining sampler's local clips (random temporal "
        "position, random resized crop, flip; default), 'centre' = one of the --clips centre crops + flip",
    )
    p.add_argument(
        "--flip",
        choices=("auto", "yes", "no"),
        default="auto",
        help="random horizontal flip while finetuning; auto = no when the dataset says a mirror can "
        "change the class (the synthetic set: right/left), yes otherwise",
    )
    p.add_argument("--k", type=int, default=20, help="knn neighbours")
    p.add_argument("--t", type=float, default=0.07, help="knn vote temperature")
    p.add_argument("--cache", action="store_true", help="cache clip features in the out folder")
    p.add_argument("--out", help="output folder (default: the checkpoint's run folder)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--device",
        default="auto",
        help="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N' (default auto)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes for decoding (default 0)"
    )
    p.add_argument(
        "--fold", type=int, default=0, help="official split of ucf101/hmdb51 (default: the config's fold)"
    )
    p.add_argument(
        "--folds",
        help="comma-separated official splits, e.g. 1,2,3 (ucf101/hmdb51): one run per fold in "
        "<out>/fold<N>/, then eval_<protocol>_folds.json with mean and std",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="forward precision of feature extraction and testing: fp32 (default), bf16, fp16 "
        "(CUDA), auto (bf16 on a CUDA device that has it, else fp32)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="knn/retrieval: queries per similarity block (memory chunk x gallery; 0 = auto, "
        "blocks of at most 256 MB); results do not depend on it",
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="finetune weight decay (default 1e-5)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="finetune optimizer")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default="constant", help="finetune lr schedule (per iteration)"
    )
    p.add_argument("--warmup-epochs", type=int, default=0, help="finetune linear lr warm-up epochs")
    p.add_argument("--dropout", type=float, default=0.0, help="finetune dropout before the linear layer")
    p.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="finetune mixed precision on CUDA (fp16 with a gradient scaler)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    return p


def run_cli(parser: argparse.ArgumentParser, run_fn, argv: list[str] | None = None) -> int:
    """Parse ``argv``, call ``run_fn(args)`` (the CLI's adapter from the parsed namespace to the
    library call); an :class:`EvalError` (bad input the user can fix) prints one ``error:`` line
    and returns 2. Shared by the evaluate, diagnose and viz CLIs."""
    args = parser.parse_args(argv)
    try:
        run_fn(args)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), lambda args: run(EvalOptions(**vars(args))), argv)


if __name__ == "__main__":
    sys.exit(main())
