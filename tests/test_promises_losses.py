"""Each loss's value against an independent computation written here from the paper's equations.

Every expected value is computed in float64 with explicit loops or the equations spelled out
(never with ``ctrlaug.losses`` helpers, ``F.cross_entropy`` or the module's own critic/head
forward), on small random tensors:

- L_nce (eq. 2), both modes: ``clip_global`` (positive = own global view) and ``clip_clip``
  (positives = the other clips of the video, self excluded from the denominator), at two
  temperatures; the expected value is checked to move when tau is dropped or doubled, so a module
  that ignores or doubles its tau fails;
- L_rc (eq. 3-4): tau scaling on every available backend (the explicit (t, h, w) loop of
  ``tests/test_losses_wiring.py`` at two temperatures);
- L_mi (eq. 5-6): the DV bound with G_theta(x, y) = w2 . relu(Wx x + Wy y + b1) + b2 written out
  from its parameters, on the same-level/other-video pairs fixed by the levels, and the loss
  ``-level + lg_weight * lg``;
- L_td (eq. 7): the GRU order head written out (GRU equations, cosine with W g, divided by the
  head's tau) and the DV bound of ordered vs shuffled sequences;
- the objective: each loss's tau is the configured one, and the total is sum(weight * term).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses_wiring import _loop_loss

from ctrlaug.losses import (
    ClipInfoNCELoss,
    LowLevelMILoss,
    MIConfig,
    NCEConfig,
    RCConfig,
    RegionContrastLoss,
    TDConfig,
    TemporalDependencyLoss,
)
from ctrlaug.ops import status

# ------------------------------------------------------------------------------------------------
# L_nce, eq. 2
# ------------------------------------------------------------------------------------------------


def _nce_clip_global(q: torch.Tensor, g: torch.Tensor, owner: torch.Tensor, tau: float) -> float:
    """mean_p -log( exp(<q_p, g_own>/tau) / sum_b exp(<q_p, g_b>/tau) ), as explicit sums."""
    q, g = q.double(), g.double()
    total = 0.0
    for p in range(q.shape[0]):
        s = [float(q[p] @ g[b]) / tau for b in range(g.shape[0])]
        m = max(s)
        denom = sum(math.exp(x - m) for x in s)
        total += -(s[int(owner[p])] - m - math.log(denom))
    return total / q.shape[0]


def _nce_clip_clip(q: torch.Tensor, owner: torch.Tensor, tau: float) -> float:
    """mean_p mean_{j != p, same video} -log( exp(<q_p, q_j>/tau) / sum_{m != p} exp(<q_p, q_m>/tau) )."""
    q = q.double()
    P = q.shape[0]
    total = 0.0
    for p in range(P):
        others = [m for m in range(P) if m != p]
        s = {m: float(q[p] @ q[m]) / tau for m in others}
        mx = max(s.values())
        log_denom = mx + math.log(sum(math.exp(v - mx) for v in s.values()))
        pos = [j for j in others if int(owner[j]) == int(owner[p])]
        total += sum(-(s[j] - log_denom) for j in pos) / len(pos)
    return total / P


def _unit(*shape, gen):
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


@pytest.mark.parametrize("tau", [0.07, 0.1])
def test_nce_clip_global_is_eq2_with_its_temperature(tau):
    gen = torch.Generator().manual_seed(11)
    B, K, D = 3, 2, 8
    q, g = _unit(B * K, D, gen=gen), _unit(B, D, gen=gen)
    owner = torch.arange(B).repeat_interleave(K)
    want = _nce_clip_global(q, g, owner, tau)
    got = ClipInfoNCELoss(NCEConfig(tau=tau, mode="clip_global"))(q, g, owner).item()
    print(f"L_nce clip_global tau={tau}: module {got:.7f} vs hand {want:.7f}")
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # non-vacuous: a dropped (tau=1), doubled or halved temperature gives another expected value
    for wrong in (1.0, 2 * tau, tau / 2):
        assert abs(_nce_clip_global(q, g, owner, wrong) - want) > 1e-2
    # the positive is the clip's *own* video: a shifted owner gives another value
    assert abs(_nce_clip_global(q, g, (owner + 1) % B, tau) - want) > 1e-2


@pytest.mark.parametrize("tau", [0.07, 0.1])
def test_nce_clip_clip_is_eq2_over_the_other_clips_of_the_video(tau):
    gen = torch.Generator().manual_seed(12)
    B, K, D = 3, 3, 8
    q, g = _unit(B * K, D, gen=gen), _unit(B, D, gen=gen)
    owner = torch.arange(B).repeat_interleave(K)
    want = _nce_clip_clip(q, owner, tau)
    got = ClipInfoNCELoss(NCEConfig(tau=tau, mode="clip_clip"))(q, g, owner).item()
    print(f"L_nce clip_clip tau={tau}: module {got:.7f} vs hand {want:.7f}")
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    for wrong in (1.0, 2 * tau, tau / 2):
        assert abs(_nce_clip_clip(q, owner, wrong) - want) > 1e-2


# ------------------------------------------------------------------------------------------------
# L_rc, eq. 3-4: the temperature on every backend that runs here
# ------------------------------------------------------------------------------------------------


def _rc_backends() -> list[str]:
    s = status()
    return ["reference"] + [b for b in ("cpp", "triton") if s.get(b) is True]


@pytest.mark.parametrize("backend", _rc_backends())
def test_rc_scales_its_logits_by_its_temperature(backend):
    g = torch.Generator().manual_seed(5)
    P, B, D = 2, 2, 8
    cg, vg = (1, 2, 2), (2, 2, 2)
    clip_maps = F.normalize(torch.randn(P, D, *cg, generator=g), dim=1)
    glob_maps = F.normalize(torch.randn(B, D, *vg, generator=g), dim=1)
    glob_boxes = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.1, 0.9, 0.0, 1.0, 1.0]])
    clip_boxes = torch.tensor([[0.1, 0.5, 0.2, 0.8, 0.1, 0.6, 0.0], [0.4, 0.9, 0.3, 0.9, 0.2, 0.7, 1.0]])
    owner = torch.tensor([0, 1])
    wants = {}
    for tau in (0.07, 0.2):
        want = _loop_loss(clip_maps, glob_maps, clip_boxes, glob_boxes, owner, tau).item()
        got, _ = RegionContrastLoss(RCConfig(tau=tau, backend=backend))(
            clip_maps, glob_maps, clip_boxes, glob_boxes, owner
        )
        print(f"L_rc {backend} tau={tau}: module {got.item():.7f} vs loop {want:.7f}")
        assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)
        wants[tau] = want
    assert abs(wants[0.07] - wants[0.2]) > 1e-2  # non-vacuous: the temperature matters here


# ------------------------------------------------------------------------------------------------
# L_mi, eq. 5-6
# ------------------------------------------------------------------------------------------------


def _G_by_hand(G, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """G_theta(x, y) = w2 . relu(Wx x + b1 + Wy y) + b2, in float64 from G's parameters."""
    wx, bx = G.wx.weight.detach().double(), G.wx.bias.detach().double()
    wy = G.wy.weight.detach().double()
    wo, bo = G.out.weight.detach().double()[0], G.out.bias.detach().double()[0]
    x, y = x.double(), y.double()
    return torch.stack(
        [wo @ torch.clamp(wx @ x[i] + bx + wy @ y[i], min=0.0) + bo for i in range(x.shape[0])]
    )


def _dv(joint: torch.Tensor, marg: torch.Tensor) -> float:
    """Eq. 5: E_P[T] - log E_Q[e^T] with plain sums."""
    return float(joint.mean()) - math.log(sum(math.exp(float(t)) for t in marg) / marg.numel())


def _rows_of(recorded: torch.Tensor, source: torch.Tensor) -> list[int]:
    eq = (recorded[:, None, :] == source[None, :, :]).all(-1)
    assert bool((eq.sum(1) == 1).all())
    return eq.float().argmax(1).tolist()


def test_mi_loss_is_the_dv_bound_of_a_hand_written_statistics_network():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    B, K, C, lg_w = 3, 2, 5, 0.7
    V = B * (1 + K)
    mod = LowLevelMILoss(C, MIConfig(hidden=6, estimator="dv", lg_weight=lg_w))
    seen = []
    real = mod.G.forward

    def spy(x, y, *, detach_params=False):
        seen.append((x.detach().clone(), y.detach().clone()))
        return real(x, y, detach_params=detach_params)

    mod.G.forward = spy
    views = torch.randn(V, C)
    clips, globs = torch.randn(B, K, C), torch.randn(B, C)
    videos = torch.arange(B).repeat_interleave(1 + K)
    # levels: video 0 and video 1 share levels view by view, video 2 has levels of its own, so
    # the joint partner (same level, other video) of every view of videos 0 and 1 is unique
    levels = torch.tensor([0, 1, 2, 0, 1, 2, 7, 8, 9])
    partner = {0: 3, 1: 4, 2: 5, 3: 0, 4: 1, 5: 2}
    out = mod(views, levels, videos, clips, globs, gen)
    assert out["mi_pairs"].item() == len(partner)

    (jx, jy), (mx, my), (lx, ly), (lmx, lmy) = seen
    rows = _rows_of(jx, views)
    assert sorted(rows) == sorted(partner) and _rows_of(jy, views) == [partner[r] for r in rows]
    assert _rows_of(mx, views) == rows  # marginal: the same x with an arbitrary view as y
    marg_y = _rows_of(my, views)
    level = _dv(
        _G_by_hand(mod.G, views[rows], views[[partner[r] for r in rows]]),
        _G_by_hand(mod.G, views[rows], views[marg_y]),
    )
    # local-global: clip k of video b with its own global view vs with an arbitrary video's
    x = clips.reshape(B * K, C)
    torch.testing.assert_close(lx, x)
    torch.testing.assert_close(ly, globs.repeat_interleave(K, 0))
    torch.testing.assert_close(lmx, x)
    lg = _dv(
        _G_by_hand(mod.G, x, globs.repeat_interleave(K, 0)), _G_by_hand(mod.G, x, globs[_rows_of(lmy, globs)])
    )
    print(f"L_mi level {out['mi_level'].item():.6f} vs {level:.6f}, lg {out['mi_lg'].item():.6f} vs {lg:.6f}")
    assert out["mi_level"].item() == pytest.approx(level, rel=1e-5, abs=1e-6)
    assert out["mi_lg"].item() == pytest.approx(lg, rel=1e-5, abs=1e-6)
    # theta ascends the level bound (the loss holds -level), the encoder descends lg (+lg_weight)
    assert out["loss"].item() == pytest.approx(-level + lg_w * lg, rel=1e-5, abs=1e-6)
    assert abs(level) > 1e-3 and abs(lg) > 1e-3  # non-vacuous: both terms weigh in


# ------------------------------------------------------------------------------------------------
# L_td, eq. 7 with the GRU head
# ------------------------------------------------------------------------------------------------


def _gru_last_by_hand(gru: torch.nn.GRU, seq: torch.Tensor) -> torch.Tensor:
    """Final hidden state of a one-layer GRU, from the GRU equations (gate order r, z, n)."""
    H = gru.hidden_size
    w_ih, w_hh = gru.weight_ih_l0.detach().double(), gru.weight_hh_l0.detach().double()
    b_ih, b_hh = gru.bias_ih_l0.detach().double(), gru.bias_hh_l0.detach().double()
    out = []
    for s in seq.double():
        h = torch.zeros(H, dtype=torch.float64)
        for x in s:
            gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
            r = torch.sigmoid(gi[:H] + gh[:H])
            z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
            n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
            h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


def _gru_score_by_hand(head, seq: torch.Tensor, g: torch.Tensor, tau: float) -> torch.Tensor:
    """cos(GRU(seq), W g + b) / tau."""
    h = _gru_last_by_hand(head.gru, seq)
    p = g.double() @ head.proj_g.weight.detach().double().t() + head.proj_g.bias.detach().double()
    return (h * p).sum(1) / (h.norm(dim=1) * p.norm(dim=1)) / tau


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_td_loss_is_minus_the_dv_bound_of_ordered_vs_shuffled_with_the_gru_heads_tau(tau):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    B, K, C, shuffles = 4, 3, 5, 2
    mod = TemporalDependencyLoss(
        C, K, TDConfig(head="gru", hidden=6, tau=tau, estimator="dv", shuffles=shuffles)
    )
    seen = []
    real = mod.head.forward

    def spy(seq, g):
        seen.append((seq.detach().clone(), g.detach().clone()))
        return real(seq, g)

    mod.head.forward = spy
    z, g = torch.randn(B, K, C), torch.randn(B, C)
    out = mod(z, g, gen)
    (jseq, jg), (mseq, mg) = seen
    assert torch.equal(jseq, z) and torch.equal(jg, g)  # joint: the true order, own global view
    idx = torch.tensor(_rows_of(mseq.reshape(-1, C), z.reshape(B * K, C))).view(-1, K)
    gi = torch.tensor(_rows_of(mg, g))
    assert torch.equal(idx // K, gi[:, None].expand(-1, K))  # a shuffle of the same video's clips
    assert not (idx % K == torch.arange(K)).all(1).any()  # never the true order
    joint = _gru_score_by_hand(mod.head, z, g, tau)
    marg = _gru_score_by_hand(mod.head, z.reshape(B * K, C)[idx], g[gi], tau)
    bound = _dv(joint, marg)
    print(f"L_td tau={tau}: module {out['loss'].item():.6f} vs hand {-bound:.6f}")
    assert out["mi_td"].item() == pytest.approx(bound, rel=1e-5, abs=1e-6)
    assert out["loss"].item() == pytest.approx(-bound, rel=1e-5, abs=1e-6)
    # non-vacuous: a doubled head temperature (scores halved) changes the bound
    other = _dv(joint / 2, marg / 2)
    assert abs(other - bound) > 1e-3


# ------------------------------------------------------------------------------------------------
# the objective: configured temperatures reach the losses, the total is sum(weight * term)
# ------------------------------------------------------------------------------------------------


def test_objective_uses_each_configured_tau_and_sums_weighted_terms():
    from tiny import TINY

    from ctrlaug.config import load_config
    from ctrlaug.engine.build import build_objective
    from ctrlaug.losses import StepBatch

    cfg = load_config(
        None,
        [
            *TINY,
            "rc.tau=0.17",
            "rc.weight=0.9",
            "rc.backend=reference",
            "nce.enabled=true",
            "nce.tau=0.13",
            "nce.weight=0.6",
            "mi.weight=0.3",
            "td.tau=0.31",
            "td.weight=0.05",
        ],
    )
    torch.manual_seed(0)
    obj = build_objective(cfg)
    assert (obj.rc.tau, obj.nce.tau, obj.td.head.tau) == (0.17, 0.13, 0.31)
    B, K = 2, 2
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(B * K, 3, 8, 32, 32, generator=g)
    globs = torch.randn(B, 3, 8, 32, 32, generator=g)
    boxes = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]).repeat(B, 1)
    cboxes = torch.tensor([0.1, 0.5, 0.2, 0.8, 0.1, 0.6, 0.0]).repeat(B, K, 1)
    levels = torch.tensor([[0, 1, 2], [0, 1, 2]])
    obj.eval()
    out = obj(StepBatch(clips, globs, cboxes, boxes, levels, torch.tensor([4, 9]), step_seed=3))
    w = {"rc": 0.9, "nce": 0.6, "mi": 0.3, "td": 0.05}
    assert set(out["terms"]) == set(w)
    total = sum(w[n] * out["terms"][n].item() for n in w)
    assert out["loss"].item() == pytest.approx(total, rel=1e-5, abs=1e-6)
    # L_nce's term is eq. 2 on the projected, pooled features at nce.tau
    with torch.no_grad():
        fc, fg = obj.encode(clips, globs)
        q, k = obj.proj(fc.mean(dim=(2, 3, 4))), obj.proj(fg.mean(dim=(2, 3, 4)))
    want = _nce_clip_global(q, k, torch.arange(B).repeat_interleave(K), 0.13)
    assert out["terms"]["nce"].item() == pytest.approx(want, rel=1e-5, abs=1e-6)
