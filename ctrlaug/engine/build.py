"""What a pretraining run is built from its config: the objective (encoder, heads, enabled
losses) and the lr schedule's milestones.
"""

from __future__ import annotations

from ctrlaug.config import (
    TrainConfig,
)
from ctrlaug.data import get_format
from ctrlaug.losses import CtrlAugObjective
from ctrlaug.models import build_encoder

__all__ = ["build_objective", "lr_milestones"]


def lr_milestones(cfg: TrainConfig) -> list[int]:
    """cfg.optim.lr_milestones, or the paper rule of the dataset format (ctrlaug.data.formats): /10 at 75%
    of the epochs (150 of 200 on UCF-101), 70% on Kinetics-400 (70 of 100)."""
    if cfg.optim.lr_milestones is not None:
        return sorted(cfg.optim.lr_milestones)
    frac = get_format(cfg.dataset).lr_decay_fraction
    m = int(round(frac * cfg.epochs))
    return [m] if 0 < m < cfg.epochs else []


def build_objective(cfg: TrainConfig) -> CtrlAugObjective:
    """Encoder + heads + enabled losses, from the config (CPU, fp32, not yet wrapped)."""
    return CtrlAugObjective(
        build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages),
        cfg.augment.num_clips,
        tuple(cfg.model.global_stride1_stages),
        cfg.model.proj_hidden,
        cfg.model.proj_dim,
        rc=cfg.rc,
        mi=cfg.mi,
        td=cfg.td,
        nce=cfg.nce,
    )
