"""The module that composes the enabled losses for one training step: :class:`StepBatch` (one
step's inputs) and :class:`CtrlAugObjective` (encoder, heads, losses; one DDP wrapper covers all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ctrlaug.losses.base import StepContext
from ctrlaug.losses.mi import LowLevelMILoss, MIConfig
from ctrlaug.losses.nce import ClipInfoNCELoss, NCEConfig
from ctrlaug.losses.rc import RCConfig, RegionContrastLoss
from ctrlaug.losses.td import TDConfig, TemporalDependencyLoss
from ctrlaug.models.heads import ProjectionHead
from ctrlaug.models.r3d import R3D

__all__ = ["LOSSES", "StepBatch", "CtrlAugObjective"]


@dataclass
class StepBatch:
    """One step's model inputs on the device (this rank's share of the global batch), built by
    :meth:`ctrlaug.engine.trainer.Trainer.prepare_views` and read by :meth:`CtrlAugObjective.forward`.

    ``clips`` [B*K, 3, T, S, S] (clip k of video b at row b*K + k) and ``global_views``
    [B, 3, T, S, S], normalised; ``clip_boxes`` [B, K, 7] and ``global_boxes`` [B, 7];
    ``levels`` [B, 1+K] int64, the tau_l level of every view (global view first; None when L_mi
    is off); ``video_ids`` [B] int64 (dataset indices); ``step_seed``: seed of the step's
    pair/shuffle sampling (identical on every rank).
    """

    clips: torch.Tensor
    global_views: torch.Tensor
    clip_boxes: torch.Tensor
    global_boxes: torch.Tensor
    levels: torch.Tensor | None
    video_ids: torch.Tensor
    step_seed: int


LOSSES = ("rc", "nce", "mi", "td")  # evaluation order: L_mi, then L_td draw from the step generator


class CtrlAugObjective(nn.Module):
    """Encoder + heads + the enabled losses; ``forward`` computes one step's loss terms.

    Args:
        encoder: an :class:`ctrlaug.models.R3D`.
        num_clips: K.
        global_stride1_stages: stages run with temporal stride 1 on the global path (f').
        proj_hidden, proj_dim: per-cell projection head sizes.
        rc, mi, td, nce: each loss's config (:class:`RCConfig`, ...), handed to its constructor;
            a loss is on when its config is given and ``enabled``.

    The MI statistics network lives in ``self.mi.G`` (give it its own optimizer); everything
    else trains with the encoder.
    """

    def __init__(
        self,
        encoder: R3D,
        num_clips: int,
        global_stride1_stages=(3, 4),
        proj_hidden: int = 512,
        proj_dim: int = 128,
        rc: RCConfig | None = None,
        mi: MIConfig | None = None,
        td: TDConfig | None = None,
        nce: NCEConfig | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.K = num_clips
        self.stride1 = tuple(global_stride1_stages)
        C = encoder.out_channels
        on = {n: c is not None and c.enabled for n, c in (("rc", rc), ("mi", mi), ("td", td), ("nce", nce))}
        self.proj = ProjectionHead(C, proj_hidden, proj_dim) if on["rc"] or on["nce"] else None
        # Built in this order (rc, mi, td, nce): the parameters' creation order fixes their init.
        self.rc = RegionContrastLoss(rc) if on["rc"] else None
        self.mi = LowLevelMILoss(C, mi) if on["mi"] else None
        self.td = TemporalDependencyLoss(C, num_clips, td) if on["td"] else None
        self.nce = ClipInfoNCELoss(nce) if on["nce"] else None
        if not self.enabled:
            raise ValueError("CtrlAugObjective: every loss is off; enable at least one of rc, mi, td, nce")

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the enabled losses, in evaluation order."""
        return tuple(n for n in LOSSES if getattr(self, n) is not None)

    @property
    def stat_names(self) -> tuple[str, ...]:
        """Names of the statistics ``forward`` returns under ``"stats"``."""
        return tuple(s for n in self.enabled for s in getattr(self, n).stats)

    def encode(self, clips: torch.Tensor, global_views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clips [B*K, 3, T, H, W] through f, global_views [B, 3, T, H, W] through f' (same weights)."""
        return self.encoder(clips), self.encoder(global_views, self.stride1)

    def forward(self, batch: StepBatch, queue: torch.Tensor | None = None) -> dict:
        """One step on this rank's share of the global batch (:class:`StepBatch`); ``queue``: past
        global cells (L_rc's extra negatives) or None. Returns what :meth:`losses` returns."""
        B = batch.global_views.shape[0]
        K = self.K
        if batch.clips.shape[0] != B * K:
            raise ValueError(f"clips has {batch.clips.shape[0]} rows, expected B*K = {B}*{K}")
        fc, fg = self.encode(batch.clips, batch.global_views)  # under the caller's autocast (bf16 on GPU)
        with torch.autocast(fc.device.type, enabled=False):  # heads and losses in float32
            return self.losses(fc.float(), fg.float(), batch, queue)

    def losses(self, fc, fg, batch: StepBatch, queue=None, only=None) -> dict:
        """Every enabled loss (or those named in ``only``) from float32 feature maps fc [B*K, C, ...]
        of the clips and fg [B, C, ...] of the global views, one loop, each loss through its
        ``term``; ``batch`` supplies the boxes, levels, video ids and step seed (see
        :class:`StepContext`; its ``clips`` and ``global_views`` are not read here).

        Returns ``{"loss": weighted total, "terms": {name: unweighted loss}, "stats": {name: value}}``
        plus ``"keys"`` (detached gathered global cells, for the queue) when L_rc ran.
        """
        ctx = StepContext(
            fc,
            fg,
            batch.clip_boxes,
            batch.global_boxes,
            batch.levels,
            batch.video_ids,
            torch.Generator().manual_seed(int(batch.step_seed)),
            queue,
            self.proj,
        )
        total = fc.new_zeros(())
        out: dict = {"terms": {}, "stats": {}}
        for name in self.enabled:
            if only is not None and name not in only:
                continue
            loss_fn = getattr(self, name)
            r = loss_fn.term(ctx)
            out["terms"][name] = r["loss"]
            out["stats"].update(r["stats"])
            if "keys" in r:
                out["keys"] = r["keys"]
            total = total + loss_fn.weight * r["loss"]
        out["loss"] = total
        return out
