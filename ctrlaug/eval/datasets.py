"""The datasets of the downstream protocols: the train and test sets of a checkpoint's own config
(or another dataset) in evaluation mode, and finetuning's random-local-clip train set.
"""

from __future__ import annotations

import dataclasses

import torch

from ctrlaug.data import build_train_dataset
from ctrlaug.errors import EvalError

__all__ = ["build_eval_datasets", "build_finetune_train_set", "LocalClips", "eval_config"]


def build_eval_datasets(
    cfg,
    train_split: str | None = None,
    test_split: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    eval_clips: int = 10,
    test_crops: int = 1,
    train_crops: int = 1,
):
    """(train, test) eval-mode datasets: ``eval_clips`` uniformly spaced clips, each at the centre
    crop (``*_crops=1``) or at left/centre/right crops (3; see ``sample_eval_views``)."""
    c = eval_config(cfg, dataset, data_root, eval_clips)
    tr = _build(c, train_split or cfg.split, "eval")
    te = _build(c, test_split or cfg.eval.split, "eval")
    tr.eval_crops, te.eval_crops = train_crops, test_crops
    if len(tr) == 0 or len(te) == 0:
        raise EvalError(f"dataset {c.dataset!r} has an empty split ({len(tr)} train, {len(te)} test)")
    return tr, te


def build_finetune_train_set(
    cfg, train_split: str | None = None, dataset=None, data_root=None, flip: bool = True
):
    """The finetuning training set with spatio-temporal jitter: each sample's ``views`` are the K
    local clips of the pretraining sampler (random temporal position, random resized crop,
    random flip unless ``flip=False``; no colour or blur), see :class:`LocalClips`."""
    c = eval_config(cfg, dataset, data_root)
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


def eval_config(cfg, dataset: str | None = None, data_root: str | None = None, eval_clips: int | None = None):
    """The config the protocols build their datasets from: ``cfg`` with another ``dataset``,
    ``data_root`` or number of ``eval_clips`` where given. Also the key of the feature cache
    (:func:`ctrlaug.eval.features.cached_features`), so both see the same settings."""
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
