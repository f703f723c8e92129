"""L_mi, paper eq. 5-6: low-level shortcut elimination, and the mutual-information bounds that
L_mi and L_td share.

The bounds (Belghazi et al. 2018 "MINE"; Hjelm et al. 2019 for JSD; van den Oord et al. 2018 for
InfoNCE) all take scores of a critic on joint and marginal samples and return
``(estimate, surrogate)``: the estimate is what gets logged, the surrogate is what to *maximise*
(equal in value; for MINE its gradient uses the moving-average denominator).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.losses.base import ESTIMATORS, OUR_CHOICE, StepContext, loss_config
from ctrlaug.models.heads import StatisticsNetwork
from ctrlaug.utils import dist as dist_utils
from ctrlaug.utils.cfgtools import opt

__all__ = [
    "MIConfig",
    "grad_reverse",
    "dv_bound",
    "jsd_bound",
    "infonce_bound",
    "MIBound",
    "same_level_partners",
    "LowLevelMILoss",
]


@loss_config("L_mi", True, 0.1, "weight of the level term (theta maximises, encoder minimises via GRL)")
class MIConfig:
    """L_mi, low-level shortcut elimination (eq. 5-6)."""

    lg_weight: float = opt(
        1.0,
        "relative weight, inside L_mi, of G_theta on local-global pairs (minimised by the encoder only)",
        min=0.0,
    )
    estimator: str = opt(
        "dv", "MI estimator: MINE/Donsker-Varadhan, Jensen-Shannon or InfoNCE", choices=ESTIMATORS
    )
    hidden: int = opt(128, f"hidden width of the statistics network G_theta ({OUR_CHOICE})", min=1)
    ema: float = opt(0.01, "moving-average rate of MINE's bias-corrected denominator", min=1e-6)
    grl: float = opt(1.0, "gradient-reversal scale from G_theta to the encoder", min=0.0)
    max_pairs: int = opt(1024, "cap on joint pairs per step (InfoNCE scores pairs x pairs)", min=1)
    lr: float = opt(1e-3, "Adam learning rate of G_theta (its own optimizer)", min=0.0)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the incoming gradient by ``-scale`` (Ganin & Lempitsky 2015).

    Used by L_mi (§3.2): the statistics network maximises the MI bound, while the features below
    this point receive the negated gradient, so the encoder minimises the same bound.
    """
    return _GradReverse.apply(x, float(scale))


def _log_mean_exp(t: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(t, 0) - math.log(t.numel())


def dv_bound(
    joint: torch.Tensor, marginal: torch.Tensor, log_ema: torch.Tensor | None = None, rate: float = 0.01
):
    """Donsker-Varadhan bound of eq. 5: E_P[T] - log E_Q[e^T], with MINE's bias correction.

    ``log_ema`` (a 0-d buffer, NaN before the first update) is the log of the moving average of
    E_Q[e^T]; when given, it is updated in place and the surrogate's gradient becomes
    grad E_Q[e^T] / ema instead of the biased minibatch grad E_Q[e^T] / E_Q[e^T] (Belghazi et al.
    §3.2). Returns ``(estimate, surrogate)``, equal in value.
    """
    log_et = _log_mean_exp(marginal)
    est = joint.mean() - log_et
    if log_ema is None:
        return est, est
    with torch.no_grad():
        cur = log_et.detach().to(log_ema.dtype)
        if torch.isnan(log_ema) or rate >= 1.0:
            log_ema.copy_(cur)
        elif rate > 0.0:
            log_ema.copy_(torch.logaddexp(log_ema + math.log1p(-rate), cur + math.log(rate)))
    det = log_et.detach()
    corrected = det + torch.exp(det - log_ema.to(det.dtype)) * (log_et - det)
    return est, joint.mean() - corrected


def jsd_bound(joint: torch.Tensor, marginal: torch.Tensor):
    """Jensen-Shannon MI estimator (Hjelm et al. 2019): E_P[-sp(-T)] - E_Q[sp(T)]."""
    est = (-F.softplus(-joint)).mean() - F.softplus(marginal).mean()
    return est, est


def infonce_bound(pos: torch.Tensor, scores: torch.Tensor):
    """InfoNCE bound: mean_i [T(x_i, y_i) - log sum_j e^{T(x_i, y_j)}] + log n.

    pos [N] joint scores; scores [N, n] every candidate of row i (the positive included).
    """
    est = (pos - torch.logsumexp(scores, dim=1)).mean() + math.log(scores.shape[1])
    return est, est


class MIBound(nn.Module):
    """One selectable MI lower bound on (joint, marginal) scores, with its own MINE moving-average
    state: ``"dv"`` or ``"jsd"``. InfoNCE scores every candidate of a row instead of one marginal
    sample, so it is not a kind here: the losses call :func:`infonce_bound` on their score matrix."""

    def __init__(self, kind: str = "dv", ema_rate: float = 0.01):
        super().__init__()
        if kind == "infonce":
            raise ValueError(
                "MIBound: 'infonce' has no (joint, marginal) form; score every candidate and call "
                "infonce_bound (LowLevelMILoss and TemporalDependencyLoss do so for estimator='infonce')"
            )
        if kind not in ("dv", "jsd"):
            raise ValueError(f"MI estimator must be one of ('dv', 'jsd'), got {kind!r}")
        self.kind, self.rate = kind, ema_rate
        self.register_buffer("log_ema", torch.tensor(float("nan")))

    def forward(self, joint: torch.Tensor, marginal: torch.Tensor, update: bool = True):
        if self.kind == "dv":
            return dv_bound(joint, marginal, self.log_ema if update else None, self.rate)
        return jsd_bound(joint, marginal)


def _pair_kind(estimator: str) -> str:
    """The :class:`MIBound` kind built for an estimator (InfoNCE leaves it unused)."""
    return "jsd" if estimator == "infonce" else estimator


def same_level_partners(
    levels: torch.Tensor, videos: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """For every view i, a uniformly drawn partner j with the same level and another video.

    levels, videos: [V] int64 (CPU). Returns [V] int64, -1 where view i has no such partner.
    """
    same = (levels[:, None] == levels[None, :]) & (videos[:, None] != videos[None, :])
    has = same.any(1)
    out = torch.full_like(levels, -1)
    if has.any():
        w = same[has].double()
        out[has] = torch.multinomial(w, 1, generator=generator).squeeze(1)
    return out


class LowLevelMILoss(nn.Module):
    """L_mi, paper eq. 5-6: low-level shortcut elimination with a MINE statistics network.

    Level term: joint samples are pooled features of two views of *different* videos drawn from
    the *same* intensity level of tau_l; marginal samples pair each of those views with an
    arbitrary view. G_theta maximises the bound; the features pass through gradient reversal,
    so the encoder minimises it (min_f max_theta of eq. 6).

    Local-global term: the same G_theta, with its parameters detached (theta is not updated),
    scores (f(v_k), f'(v)) pairs of one video (joint) against clips paired with the global view
    of an arbitrary video (marginal); the encoder minimises that bound.

    ``forward`` returns the loss to *minimise* and the two estimates for logging.
    """

    stats = ("mi_level", "mi_lg", "mi_pairs")

    def __init__(self, in_dim: int, cfg: MIConfig | None = None):
        super().__init__()
        cfg = cfg or MIConfig()
        self.G = StatisticsNetwork(in_dim, cfg.hidden)
        self.kind, self.grl, self.lg_weight, self.max_pairs = (
            cfg.estimator,
            cfg.grl,
            cfg.lg_weight,
            cfg.max_pairs,
        )
        self.weight = cfg.weight
        # With InfoNCE the bounds stay unused (``_bound`` calls infonce_bound); they are built as
        # "jsd" so that checkpoints hold the same buffers whatever the estimator.
        self.bound_level = MIBound(_pair_kind(cfg.estimator), cfg.ema)
        self.bound_lg = MIBound(_pair_kind(cfg.estimator), cfg.ema)

    def term(self, ctx: StepContext) -> dict:
        """L_mi of one step on the pooled views of the global batch, each with its level and video."""
        if ctx.levels is None:
            raise ValueError("L_mi needs the per-view intensity levels of the batch")
        pc, pg = ctx.pooled()
        Bg, K, dev = pg.shape[0], ctx.K, ctx.fc.device
        views = torch.cat([pg[:, None], pc], 1).reshape(Bg * (1 + K), -1)
        lv = dist_utils.all_gather_nograd(ctx.levels.to(dev).long()).reshape(-1)
        vid = dist_utils.all_gather_nograd(ctx.video_ids.to(dev).long()).repeat_interleave(1 + K)
        r = self(views, lv, vid, pc, pg, ctx.generator)
        return {"loss": r.pop("loss"), "stats": r}

    def _bound(self, bound: MIBound, x, y, y_marg, detach: bool):
        if self.kind == "infonce":
            scores = self.G.score_matrix(x, y, detach_params=detach)  # [n, n], diagonal = joint
            return infonce_bound(scores.diagonal(), scores)
        joint = self.G(x, y, detach_params=detach)
        marg = self.G(x, y_marg, detach_params=detach)
        return bound(joint, marg)

    def forward(
        self,
        view_feats: torch.Tensor,
        view_levels: torch.Tensor,
        view_videos: torch.Tensor,
        clip_feats: torch.Tensor,
        global_feats: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """view_feats [V, C] pooled features of every view (global batch); view_levels and
        view_videos [V] int64; clip_feats [B, K, C] and global_feats [B, C] (global batch).
        ``generator``: CPU generator seeded identically on every rank."""
        dev = view_feats.device
        out: dict[str, torch.Tensor] = {}
        x_all = grad_reverse(view_feats.float(), self.grl)
        partner = same_level_partners(view_levels.cpu(), view_videos.cpu(), generator)
        rows = torch.nonzero(partner >= 0).squeeze(1)
        if rows.numel() > self.max_pairs:
            rows = rows[torch.randperm(rows.numel(), generator=generator)[: self.max_pairs]]
        marg = torch.randint(0, view_feats.shape[0], (rows.numel(),), generator=generator)
        out["mi_pairs"] = torch.tensor(float(rows.numel()), device=dev)
        if rows.numel() >= 2:
            rows_d, part_d, marg_d = rows.to(dev), partner[rows].to(dev), marg.to(dev)
            est, surr = self._bound(
                self.bound_level, x_all[rows_d], x_all[part_d], x_all[marg_d], detach=False
            )
            level_loss = -surr  # theta ascends the bound; through the GRL the encoder descends it
        else:  # no same-level pair of different videos in this batch: a zero that still touches
            # every parameter of G, so DDP (find_unused_parameters=False) sees a gradient for each
            est = view_feats.new_zeros(())
            level_loss = sum(p.sum() for p in self.G.parameters()) * 0.0 + view_feats.sum() * 0.0
        out["mi_level"] = est.detach()

        B, K, C = clip_feats.shape
        x = clip_feats.reshape(B * K, C).float()
        y = global_feats.float().repeat_interleave(K, 0)
        y_m = global_feats.float()[torch.randint(0, B, (B * K,), generator=generator).to(dev)]
        est_lg, surr_lg = self._bound(self.bound_lg, x, y, y_m, detach=True)
        out["mi_lg"] = est_lg.detach()
        out["loss"] = level_loss + self.lg_weight * surr_lg  # the encoder descends the LG bound
        return out
