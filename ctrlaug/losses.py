"""The four objectives of the paper and the module that composes them for one training step.

- :class:`RegionContrastLoss` L_rc, eq. 3-4 (soft-target region contrast over all global cells
  of the batch on every rank, plus an optional memory queue).
- :class:`LowLevelMILoss` L_mi, eq. 5-6 (MINE on same-intensity-level pairs, adversarial through
  gradient reversal; then the frozen estimator on local-global pairs).
- :class:`TemporalDependencyLoss` L_td, eq. 7 (ordered vs shuffled clip sequences with the global
  feature; GRU / MLP / GRU+MLP heads, or the VCOP classification baseline).
- :class:`ClipInfoNCELoss` L_nce, eq. 2 (clip-level InfoNCE, the baseline of Table 7).
- :class:`CtrlAugObjective` holds the encoder, the heads and the losses; its ``forward`` runs one
  step's encoder passes and returns every loss term, so one DDP wrapper covers all parameters.

Each loss has a small config dataclass (:class:`RCConfig`, :class:`MIConfig`, :class:`TDConfig`,
:class:`NCEConfig`) that the training config nests as ``rc``, ``mi``, ``td``, ``nce`` and that is
handed straight to the loss's constructor. Each loss also has the same per-step entry point,
``term(ctx)``: it reads what it needs from one :class:`StepContext` and returns
``{"loss": ..., "stats": {...}}`` (L_rc adds ``"keys"`` for the memory queue).

Mutual-information bounds (Belghazi et al. 2018 "MINE"; Hjelm et al. 2019 for JSD; van den Oord
et al. 2018 for InfoNCE) all take scores of a critic on joint and marginal samples and return
``(estimate, surrogate)``: the estimate is what gets logged, the surrogate is what to *maximise*
(equal in value; for MINE its gradient uses the moving-average denominator).

Distributed training: features that pair across videos are all-gathered with
:func:`ctrlaug.utils.dist.gather_with_grad` (each rank's gradient reaches every rank's own
features), and every step-level random choice uses a generator seeded by (seed, step), identical
on all ranks; so a DDP run computes the same losses and gradients as one process holding the
whole global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrlaug.models.heads import ProjectionHead, StatisticsNetwork, VCOPHead, build_order_head, pool
from ctrlaug.models.r3d import R3D
from ctrlaug.ops import correspondence, region_contrast
from ctrlaug.utils import dist as cdist
from ctrlaug.utils.cfgtools import config, opt

__all__ = [
    "RCConfig",
    "MIConfig",
    "TDConfig",
    "NCEConfig",
    "StepContext",
    "grad_reverse",
    "dv_bound",
    "jsd_bound",
    "infonce_bound",
    "MIBound",
    "FeatureQueue",
    "RegionContrastLoss",
    "LowLevelMILoss",
    "TemporalDependencyLoss",
    "ClipInfoNCELoss",
    "CtrlAugObjective",
    "cells",
]


# ----------------------------------------------------------------------------------------------
# Configurations (nested in ctrlaug.config.TrainConfig as rc, mi, td, nce)
# ----------------------------------------------------------------------------------------------

ESTIMATORS = ("dv", "jsd", "infonce")
OUR_CHOICE = "not specified by the paper; our choice"


def _loss_config(name: str, enabled: bool, weight: float, weight_help: str | None = None):
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


@_loss_config("L_rc", enabled=True, weight=1.0)
class RCConfig:
    """L_rc, spatio-temporal region contrast (eq. 3-4)."""

    tau: float = opt(
        0.2,
        f"temperature of L_rc ({OUR_CHOICE}: 0.2 chosen on the shapes val split, docs/benchmark.md; "
        "configs/ucf101.yaml and k400.yaml keep 0.07)",
        min=1e-6,
    )
    queue_size: int = opt(
        0, "memory queue of past global cells used as extra L_rc negatives (0 = off)", min=0
    )
    backend: str = opt(
        "auto", "backend of the fused ops", choices=("auto", "reference", "cpp", "triton", "cuda")
    )


@_loss_config("L_mi", True, 0.1, "weight of the level term (theta maximises, encoder minimises via GRL)")
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


@_loss_config(
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


@_loss_config("L_nce", enabled=False, weight=1.0)
class NCEConfig:
    """L_nce, the clip-level InfoNCE baseline (eq. 2, Table 7)."""

    tau: float = opt(0.07, f"temperature of L_nce ({OUR_CHOICE})", min=1e-6)
    mode: str = opt(
        "clip_global",
        "positives: the clip's own global view, or the other clips of its video",
        choices=("clip_global", "clip_clip"),
    )


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
            pc = cdist.gather_with_grad(pool(self.fc)).view(-1, self.K, C)
            pg = cdist.gather_with_grad(pool(self.fg))
            self._pooled = (pc, pg)
        return self._pooled


# ----------------------------------------------------------------------------------------------
# Gradient reversal and MI bounds
# ----------------------------------------------------------------------------------------------


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


def cells(feat: torch.Tensor) -> torch.Tensor:
    """[N, D, T, H, W] -> [N*T*H*W, D]: cells t-major, then h, then w (the ops' order)."""
    return feat.flatten(2).transpose(1, 2).reshape(-1, feat.shape[1])


# ----------------------------------------------------------------------------------------------
# L_rc
# ----------------------------------------------------------------------------------------------


class FeatureQueue(nn.Module):
    """FIFO memory of past global-view cells (extra L_rc negatives). ``size`` 0 = off."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.register_buffer("feats", torch.zeros(self.size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))

    def get(self) -> torch.Tensor | None:
        n = int(self.filled)
        return None if n == 0 else self.feats[:n]

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        if self.size == 0:
            return
        keys = keys.detach().to(self.feats.dtype)[-self.size :]
        n, p = keys.shape[0], int(self.ptr)
        first = min(n, self.size - p)
        self.feats[p : p + first] = keys[:first]
        if n > first:
            self.feats[: n - first] = keys[first:]
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))


class RegionContrastLoss(nn.Module):
    """L_rc, paper eq. 3-4: soft-target spatio-temporal region contrast.

    Queries are all clip cells f(v_k)[i] of this rank; keys are all global cells f'(v)[j] of
    every video of the global batch (all-gathered, gradients reach every rank's own keys), then
    the queue. Clip p's target S_p = ``correspondence(clip box, its video's box)`` (eq. 1) sits
    on its owner video's key block; all other keys are negatives (the n of eq. 4).
    """

    stats: tuple[str, ...] = ()

    def __init__(self, cfg: RCConfig | None = None):
        super().__init__()
        cfg = cfg or RCConfig()
        self.tau, self.backend, self.weight = cfg.tau, cfg.backend, cfg.weight

    def term(self, ctx: StepContext) -> dict:
        """L_rc of one step: clip cells query the global cells of the batch (and the queue)."""
        B, K = ctx.B, ctx.K
        loss, keys = self(
            ctx.proj(ctx.fc),
            ctx.proj(ctx.fg),
            ctx.clip_boxes.reshape(B * K, 7),
            ctx.global_boxes,
            ctx.owner,
            ctx.queue,
        )
        return {"loss": loss, "stats": {}, "keys": keys}

    def forward(
        self,
        clip_cells: torch.Tensor,
        global_cells: torch.Tensor,
        clip_boxes: torch.Tensor,
        global_boxes: torch.Tensor,
        owner: torch.Tensor,
        queue: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """clip_cells [P, D, Tc, H, W] (L2-normalised), global_cells [B, D, Tv, Hv, Wv],
        clip_boxes [P, 7], global_boxes [B, 7], owner [P] (local video index of clip p).

        Returns (loss, gathered keys [world*B*Nv, D] detached, for the queue).
        """
        cg, vg = tuple(clip_cells.shape[2:]), tuple(global_cells.shape[2:])
        # Under autocast the fused op takes the autocast dtype (bf16/fp16 tensor-core path,
        # float32 accumulation inside the kernel); otherwise float32.
        dev = clip_cells.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32
        q = cells(clip_cells).to(dt)
        k = cdist.gather_with_grad(cells(global_cells).to(dt))
        offset = cdist.rank() * global_cells.shape[0]
        S = correspondence(clip_boxes.float(), global_boxes.float()[owner], cg, vg, backend=self.backend)
        loss = region_contrast(
            q, k, S, (owner + offset).to(torch.int64), tau=self.tau, queue=queue, backend=self.backend
        )
        return loss, k.detach()


# ----------------------------------------------------------------------------------------------
# L_mi
# ----------------------------------------------------------------------------------------------


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
        lv = cdist.all_gather_nograd(ctx.levels.to(dev).long()).reshape(-1)
        vid = cdist.all_gather_nograd(ctx.video_ids.to(dev).long()).repeat_interleave(1 + K)
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


# ----------------------------------------------------------------------------------------------
# L_td
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# L_nce
# ----------------------------------------------------------------------------------------------


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
        off_v = cdist.rank() * global_emb.shape[0]
        if self.mode == "clip_global":
            k = cdist.gather_with_grad(global_emb.float())
            return F.cross_entropy(q @ k.t() / self.tau, owner + off_v)
        k = cdist.gather_with_grad(q)
        vid_k = cdist.all_gather_nograd(owner + off_v)
        logits = q @ k.t() / self.tau
        self_idx = torch.arange(q.shape[0], device=q.device) + cdist.rank() * q.shape[0]
        not_self = torch.ones_like(logits, dtype=torch.bool)
        not_self[torch.arange(q.shape[0]), self_idx] = False
        logits = logits.masked_fill(~not_self, float("-inf"))
        pos = ((owner + off_v)[:, None] == vid_k[None, :]) & not_self
        logp = torch.log_softmax(logits, dim=1)
        npos = pos.sum(1).clamp_min(1)
        return -(logp.masked_fill(~pos, 0.0).sum(1) / npos).mean()


# ----------------------------------------------------------------------------------------------
# Composition
# ----------------------------------------------------------------------------------------------


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

    def encode(self, clips: torch.Tensor, globals_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clips [B*K, 3, T, H, W] through f, globals_ [B, 3, T, H, W] through f' (same weights)."""
        return self.encoder(clips), self.encoder(globals_, self.stride1)

    def forward(
        self,
        clips: torch.Tensor,
        globals_: torch.Tensor,
        clip_boxes: torch.Tensor,
        global_boxes: torch.Tensor,
        levels: torch.Tensor | None,
        video_ids: torch.Tensor,
        step_seed: int,
        queue: torch.Tensor | None = None,
    ) -> dict:
        """One step on this rank's share of the global batch.

        clips [B*K, 3, T, H, W] (clip k of video b at row b*K + k), globals_ [B, 3, T, H, W],
        clip_boxes [B, K, 7], global_boxes [B, 7], levels [B, 1+K] int64 (global view first; None
        when L_mi is off), video_ids [B] int64 (dataset indices), ``step_seed``: seed of this
        step's pair/shuffle sampling (identical on every rank).

        Returns what :meth:`losses` returns.
        """
        B = globals_.shape[0]
        K = self.K
        if clips.shape[0] != B * K:
            raise ValueError(f"clips has {clips.shape[0]} rows, expected B*K = {B}*{K}")
        fc, fg = self.encode(clips, globals_)  # under the caller's autocast (bf16 on GPU)
        with torch.autocast(fc.device.type, enabled=False):  # heads and losses in float32
            return self.losses(
                fc.float(), fg.float(), clip_boxes, global_boxes, levels, video_ids, step_seed, queue
            )

    def losses(
        self, fc, fg, clip_boxes, global_boxes, levels, video_ids, step_seed, queue=None, only=None
    ) -> dict:
        """Every enabled loss (or those named in ``only``) from float32 feature maps fc [B*K, C, ...]
        and fg [B, C, ...], one loop, each loss through its ``term``; the other arguments as in
        :meth:`forward` (see :class:`StepContext`).

        Returns ``{"loss": weighted total, "terms": {name: unweighted loss}, "stats": {name: value}}``
        plus ``"keys"`` (detached gathered global cells, for the queue) when L_rc ran.
        """
        ctx = StepContext(
            fc,
            fg,
            clip_boxes,
            global_boxes,
            levels,
            video_ids,
            torch.Generator().manual_seed(int(step_seed)),
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
