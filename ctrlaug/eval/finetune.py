"""Finetuning protocol (paper §4.2): the whole encoder and a linear layer trained end to end on one
random clip of each train video per epoch (plus horizontal flip), with its lr schedules.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.errors import EvalError
from ctrlaug.eval.features import autocast, clip_loader, extract_clip_features
from ctrlaug.eval.linear import evaluate_clips
from ctrlaug.eval.metrics import video_metrics
from ctrlaug.models import pool, prepare_input
from ctrlaug.utils.progress import Progress

__all__ = ["SCHEDULES", "lr_factor", "finetune"]


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
    per-class accuracy of the video scores (:func:`ctrlaug.eval.metrics.classification_metrics`).

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
    res.update(video_metrics(logits.float().softmax(-1).mean(1), labels, test_set))
    res["train_loss"] = losses
    return res
