"""What every loss shares: the config decorator (``enabled`` and ``weight`` first), the
estimator names, and :class:`StepContext`, the one object a loss's ``term(ctx)`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ctrlaug.models.heads import pool
from ctrlaug.utils import dist as dist_utils
from ctrlaug.utils.cfgtools import config, opt

__all__ = ["ESTIMATORS", "OUR_CHOICE", "loss_config", "StepContext"]


ESTIMATORS = ("dv", "jsd", "infonce")


OUR_CHOICE = "not specified by the paper; our choice"


def loss_config(name: str, enabled: bool, weight: float, weight_help: str | None = None):
    """:func:`~ctrlaug.utils.cfgtools.config` for one loss's settings, with the two fields every
    loss has put first: ``enabled`` (its switch) and ``weight`` (in the total)."""

    def wrap(cls):
        cls.__annotations__ = {
            "enabled": "bool",
            "weight": "float",
            **cls.__dict__.get("__annotations__", {}),
        }
        cls.enabled = opt(enabled, f"enable {name}")
        cls.weight = opt(weight, weight_help or f"weight of {name}", min=0.0)
        return config(cls)

    return wrap


@dataclass
class StepContext:
    """What the losses of one step read: this rank's share of the global batch.

    fc [B*K, C, Tc, Hc, Wc] and fg [B, C, Tv, Hv, Wv] float32 feature maps of the clips (clip k of
    video b at row b*K + k) and of the global views; clip_boxes [B, K, 7], global_boxes [B, 7];
    levels [B, 1+K] int64 (global view first) or None; video_ids [B] int64; ``generator``: the
    step's CPU generator (identical on every rank; the losses draw from it in a fixed order);
    ``queue``: past global cells or None; ``proj``: the shared per-cell projection head.
    """

    fc: torch.Tensor
    fg: torch.Tensor
    clip_boxes: torch.Tensor
    global_boxes: torch.Tensor
    levels: torch.Tensor | None
    video_ids: torch.Tensor
    generator: torch.Generator
    queue: torch.Tensor | None = None
    proj: nn.Module | None = None
    _pooled: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def B(self) -> int:
        return self.fg.shape[0]

    @property
    def K(self) -> int:
        return self.fc.shape[0] // self.fg.shape[0]

    @property
    def owner(self) -> torch.Tensor:
        """[B*K] local video index of every clip."""
        return torch.arange(self.B, device=self.fc.device).repeat_interleave(self.K)

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features of the *global* batch (all-gathered with gradients), computed once:
        clips [Bg, K, C] and global views [Bg, C]."""
        if self._pooled is None:
            C = self.fc.shape[1]
            pc = dist_utils.gather_with_grad(pool(self.fc)).view(-1, self.K, C)
            pg = dist_utils.gather_with_grad(pool(self.fg))
            self._pooled = (pc, pg)
        return self._pooled
