"""L_td, paper eq. 7: local-global temporal order dependency (ordered vs shuffled clip sequences
with the global feature; GRU / MLP / GRU+MLP heads, or the VCOP classification baseline).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.losses.base import ESTIMATORS, OUR_CHOICE, StepContext, loss_config
from ctrlaug.losses.mi import MIBound, _pair_kind, infonce_bound
from ctrlaug.models.heads import VCOPHead, build_order_head
from ctrlaug.utils.cfgtools import opt

__all__ = ["TDConfig", "random_derangement_orders", "TemporalDependencyLoss"]


@loss_config(
    "L_td",
    True,
    0.01,
    f"weight of L_td ({OUR_CHOICE}: 0.01 chosen on the shapes val split, docs/benchmark.md)",
)
class TDConfig:
    """L_td, local-global temporal dependency (eq. 7)."""

    head: str = opt("gru", "order head (Table 6)", choices=("gru", "mlp", "gru_mlp", "vcop"))
    hidden: int = opt(128, f"hidden width of the order head (GRU state / MLP; {OUR_CHOICE})", min=1)
    tau: float = opt(0.1, f"temperature of the GRU head's cosine score ({OUR_CHOICE})", min=1e-6)
    estimator: str = opt("dv", "MI estimator of L_td", choices=ESTIMATORS)
    ema: float = opt(
        0.01, "moving-average rate of MINE's bias-corrected denominator (estimator dv)", min=1e-6
    )
    shuffles: int = opt(1, "shuffled orders per video (the marginal samples)", min=1)


def random_derangement_orders(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[n, k] random orders of range(k), none equal to the identity (k >= 2)."""
    if k < 2:
        raise ValueError(f"shuffled clip orders need at least 2 clips, got {k}")
    orders = torch.argsort(torch.rand(n, k, generator=generator), dim=1)
    ident = torch.arange(k)
    bad = (orders == ident).all(1)
    # An identity draw becomes a rotation by a random non-zero shift (still uniform enough, never identity).
    if bad.any():
        shift = torch.randint(1, k, (int(bad.sum()),), generator=generator)
        orders[bad] = (ident[None, :] + shift[:, None]) % k
    return orders


class TemporalDependencyLoss(nn.Module):
    """L_td, paper eq. 7: MI between the ordered clip sequence and the global feature.

    Joint: (f(v_1) o ... o f(v_K), f'(v)) in the true order; marginal: the same clips in a
    shuffled order with the same global feature. The order head G_psi and the encoder both
    maximise the bound (``loss = -bound``). With ``head="vcop"`` the loss is instead VCOP's
    cross-entropy over the K! clip orders (no global feature; Table 6's baseline).
    """

    stats = ("mi_td", "td_acc")

    def __init__(self, in_dim: int, num_clips: int = 4, cfg: TDConfig | None = None):
        super().__init__()
        cfg = cfg or TDConfig()
        self.head_kind, self.kind, self.shuffles, self.weight = (
            cfg.head,
            cfg.estimator,
            cfg.shuffles,
            cfg.weight,
        )
        self.head = build_order_head(cfg.head, in_dim, cfg.hidden, num_clips, cfg.tau)
        self.bound = MIBound(_pair_kind(cfg.estimator), cfg.ema)  # unused with InfoNCE, see LowLevelMILoss

    def term(self, ctx: StepContext) -> dict:
        """L_td of one step on the pooled clips and global views of the global batch."""
        r = self(*ctx.pooled(), ctx.generator)
        return {"loss": r.pop("loss"), "stats": r}

    def forward(self, clip_feats: torch.Tensor, global_feats: torch.Tensor, generator: torch.Generator):
        """clip_feats [B, K, C] in temporal order, global_feats [B, C]."""
        B, K, C = clip_feats.shape
        dev = clip_feats.device
        z, g = clip_feats.float(), global_feats.float()
        if isinstance(self.head, VCOPHead):
            cls = torch.randint(0, self.head.perms.shape[0], (B,), generator=generator).to(dev)
            order = self.head.perms[cls]  # [B, K]
            logits = self.head(torch.gather(z, 1, order[:, :, None].expand(B, K, C)))
            loss = F.cross_entropy(logits, cls)
            return {"loss": loss, "td_acc": (logits.argmax(1) == cls).float().mean().detach()}
        joint = self.head(z, g)
        orders = random_derangement_orders(B * self.shuffles, K, generator).to(dev)
        zs = z.repeat(self.shuffles, 1, 1)
        marg = self.head(torch.gather(zs, 1, orders[:, :, None].expand(-1, K, C)), g.repeat(self.shuffles, 1))
        if self.kind == "infonce":
            scores = torch.cat([joint[:, None], marg.view(self.shuffles, B).t()], dim=1)
            est, surr = infonce_bound(joint, scores)
        else:
            est, surr = self.bound(joint, marg)
        acc = (joint[:, None] > marg.view(self.shuffles, B).t()).float().mean()
        return {"loss": -surr, "mi_td": est.detach(), "td_acc": acc.detach()}
