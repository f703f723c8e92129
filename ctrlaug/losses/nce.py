"""L_nce, paper eq. 2: clip-level InfoNCE, the instance-contrast baseline of Table 7."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.losses.base import OUR_CHOICE, StepContext, loss_config
from ctrlaug.models.heads import pool
from ctrlaug.utils import dist as dist_utils
from ctrlaug.utils.cfgtools import opt

__all__ = ["NCEConfig", "ClipInfoNCELoss"]


@loss_config("L_nce", enabled=False, weight=1.0)
class NCEConfig:
    """L_nce, the clip-level InfoNCE baseline (eq. 2, Table 7)."""

    tau: float = opt(0.07, f"temperature of L_nce ({OUR_CHOICE})", min=1e-6)
    mode: str = opt(
        "clip_global",
        "positives: the clip's own global view, or the other clips of its video",
        choices=("clip_global", "clip_clip"),
    )


class ClipInfoNCELoss(nn.Module):
    """L_nce, paper eq. 2: instance-level InfoNCE on pooled, projected clip embeddings.

    ``mode="clip_global"``: each clip's positive is its own video's global view, negatives are
    the global views of every other video of the global batch (the hard-target counterpart of
    L_rc on the same views). ``mode="clip_clip"``: positives are the other clips of the same
    video, negatives all clips of other videos (the usual clip-level contrast).
    """

    stats: tuple[str, ...] = ()

    def __init__(self, cfg: NCEConfig | None = None):
        super().__init__()
        cfg = cfg or NCEConfig()
        self.tau, self.mode, self.weight = cfg.tau, cfg.mode, cfg.weight

    def term(self, ctx: StepContext) -> dict:
        """L_nce of one step on pooled, projected clip and global embeddings."""
        return {"loss": self(ctx.proj(pool(ctx.fc)), ctx.proj(pool(ctx.fg)), ctx.owner), "stats": {}}

    def forward(self, clip_emb: torch.Tensor, global_emb: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """clip_emb [P, D], global_emb [B, D] (L2-normalised, this rank), owner [P] local video."""
        q = clip_emb.float()
        off_v = dist_utils.rank() * global_emb.shape[0]
        if self.mode == "clip_global":
            k = dist_utils.gather_with_grad(global_emb.float())
            return F.cross_entropy(q @ k.t() / self.tau, owner + off_v)
        k = dist_utils.gather_with_grad(q)
        vid_k = dist_utils.all_gather_nograd(owner + off_v)
        logits = q @ k.t() / self.tau
        self_idx = torch.arange(q.shape[0], device=q.device) + dist_utils.rank() * q.shape[0]
        not_self = torch.ones_like(logits, dtype=torch.bool)
        not_self[torch.arange(q.shape[0]), self_idx] = False
        logits = logits.masked_fill(~not_self, float("-inf"))
        pos = ((owner + off_v)[:, None] == vid_k[None, :]) & not_self
        logp = torch.log_softmax(logits, dim=1)
        npos = pos.sum(1).clamp_min(1)
        return -(logp.masked_fill(~pos, 0.0).sum(1) / npos).mean()
