"""Which way every adversary moves (paper eq. 5-7), checked against bounds written out by hand.

Each test runs a loss module once, records the exact pairs its critic scored, rebuilds the bound
from those pairs with its own formula (not the module's ``dv_bound``/``jsd_bound``), and compares
the gradients that ``loss.backward()`` leaves on every part with the sign the paper asks for:

- L_mi level term: G_theta *ascends* the bound (grad theta of the loss = -d bound), the encoder
  features *descend* it through gradient reversal (grad = +grl * d bound);
- L_mi local-global term: the encoder features descend it (grad = +lg_weight * d bound) and
  G_theta gets nothing from it;
- L_td: the order head and the encoder both ascend the ordered-vs-shuffled bound.

A sign flip, a missing reversal or a missing detach changes one of these by a factor -1 or adds a
term, and the comparison fails.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctrlaug.losses import LowLevelMILoss, MIConfig, TDConfig, TemporalDependencyLoss


def _hand_bound(kind: str, joint: torch.Tensor, marg: torch.Tensor) -> torch.Tensor:
    """The three MI lower bounds, written independently of ctrlaug.losses.

    dv: E_P[T] - log E_Q[e^T]; jsd: E_P[-softplus(-T)] - E_Q[softplus(T)];
    infonce: ``joint`` is the [n, n] score matrix (diagonal = positives), ``marg`` unused.
    """
    if kind == "dv":
        return joint.mean() - (torch.logsumexp(marg, 0) - math.log(marg.numel()))
    if kind == "jsd":
        return -F.softplus(-joint).mean() - F.softplus(marg).mean()
    n = joint.shape[0]
    return (joint.diagonal() - torch.logsumexp(joint, 1)).mean() + math.log(n)


def _record_calls(G):
    """Wrap G's forward and score_matrix so every call's inputs are kept (detached)."""
    calls = []
    fwd, sm = G.forward, G.score_matrix

    def forward(x, y, *, detach_params=False):
        calls.append(("pairs", x.detach().clone(), y.detach().clone(), detach_params))
        return fwd(x, y, detach_params=detach_params)

    def score_matrix(x, y, *, detach_params=False):
        calls.append(("matrix", x.detach().clone(), y.detach().clone(), detach_params))
        return sm(x, y, detach_params=detach_params)

    G.forward, G.score_matrix = forward, score_matrix
    return calls


def _rows_of(recorded: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Index of the row of ``source`` that each row of ``recorded`` is an exact copy of."""
    eq = (recorded[:, None, :] == source[None, :, :]).all(-1)
    assert bool((eq.sum(1) == 1).all()), "every recorded row must be one distinct source row"
    return eq.float().argmax(1)


def _level_and_lg_calls(calls, kind):
    """Split the recorded critic calls into (level-term calls, local-global-term calls)."""
    level = [c for c in calls if not c[3]]
    lg = [c for c in calls if c[3]]
    assert len(level) == len(lg) == (1 if kind == "infonce" else 2)
    return level, lg


def _all_pairs(G, x, y):
    """[n, n] critic scores of every (x_a, y_b), through G's aligned-pair forward only."""
    n = x.shape[0]
    return G(x.repeat_interleave(n, 0), y.repeat(n, 1)).view(n, n)


def _grads(scalar, tensors):
    return torch.autograd.grad(scalar, tensors, allow_unused=True)


@pytest.mark.parametrize("kind", ["dv", "jsd", "infonce"])
def test_mi_statistics_network_ascends_level_bound_and_encoder_descends_both(kind):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    B, K, C, grl, lg_w = 4, 2, 6, 0.5, 2.0
    V = B * (1 + K)
    mod = LowLevelMILoss(C, MIConfig(hidden=16, estimator=kind, grl=grl, lg_weight=lg_w))
    calls = _record_calls(mod.G)
    views = torch.randn(V, C, requires_grad=True)
    clips = torch.randn(B, K, C, requires_grad=True)
    globs = torch.randn(B, C, requires_grad=True)
    levels = torch.arange(V) % 3  # every view has same-level partners in other videos
    videos = torch.arange(B).repeat_interleave(1 + K)
    out = mod(views, levels, videos, clips, globs, gen)
    assert out["mi_pairs"].item() == V
    out["loss"].backward()
    thetas = list(mod.G.parameters())
    got_theta = [p.grad.clone() for p in thetas]

    level, lg = _level_and_lg_calls(calls, kind)
    # ---- level term, rebuilt from the recorded pairs: rows of `views`, then the bound by hand
    ri = _rows_of(level[0][1], views.detach())
    pi = _rows_of(level[0][2], views.detach())
    G = mod.G
    v = views.detach().clone().requires_grad_(True)
    if kind == "infonce":
        b_level = _hand_bound(kind, _all_pairs(G, v[ri], v[pi]), None)
    else:
        mi = _rows_of(level[1][2], views.detach())
        b_level = _hand_bound(kind, G(v[ri], v[pi]), G(v[ri], v[mi]))
    *d_theta, d_views = _grads(b_level, [*thetas, v])
    # ---- local-global term on (clip, own global) vs (clip, recorded other global)
    c = clips.detach().clone().requires_grad_(True)
    g = globs.detach().clone().requires_grad_(True)
    x, y = c.reshape(B * K, C), g.repeat_interleave(K, 0)
    if kind == "infonce":
        b_lg = _hand_bound(kind, _all_pairs(G, x, y), None)
    else:
        gm = _rows_of(lg[1][2], globs.detach())
        b_lg = _hand_bound(kind, G(x, y), G(x, g[gm]))
    d_c, d_g = _grads(b_lg, [c, g])

    # the statistics network: -d(level bound), and nothing from the local-global bound
    for name, got, want in zip(("wx.w", "wx.b", "wy.w", "out.w", "out.b"), got_theta, d_theta):
        if want is None:
            want = torch.zeros_like(got)
        torch.testing.assert_close(got, -want, rtol=1e-4, atol=1e-6, msg=f"theta {name}")
    assert max(float(t.abs().max()) for t in d_theta if t is not None) > 1e-4  # non-vacuous
    # the encoder's view features: +grl * d(level bound) (gradient reversal of the ascent)
    torch.testing.assert_close(views.grad, grl * d_views, rtol=1e-4, atol=1e-6)
    assert float(d_views.abs().max()) > 1e-4
    # the encoder's clip and global features: +lg_weight * d(local-global bound)
    torch.testing.assert_close(clips.grad, lg_w * d_c, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(globs.grad, lg_w * d_g, rtol=1e-4, atol=1e-6)
    assert float(d_c.abs().max()) > 1e-4 and float(d_g.abs().max()) > 1e-4
    # the logged estimates are the bounds' values
    assert out["mi_level"].item() == pytest.approx(b_level.item(), rel=1e-4, abs=1e-5)
    assert out["mi_lg"].item() == pytest.approx(b_lg.item(), rel=1e-4, abs=1e-5)


def test_td_order_head_and_encoder_both_ascend_the_order_bound():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    B, K, C = 5, 3, 6
    mod = TemporalDependencyLoss(C, K, TDConfig(head="mlp", hidden=8, estimator="jsd", shuffles=2))
    seen = []
    real = mod.head.forward

    def head(seq, glob):
        seen.append((seq.detach().clone(), glob.detach().clone()))
        return real(seq, glob)

    mod.head.forward = head
    z = torch.randn(B, K, C, requires_grad=True)
    gf = torch.randn(B, C, requires_grad=True)
    out = mod(z, gf, gen)
    out["loss"].backward()
    psi = list(mod.head.parameters())
    got_psi = [p.grad.clone() for p in psi]

    (jseq, jg), (mseq, mg) = seen
    assert torch.equal(jseq, z.detach())  # the joint is the true order
    # the marginal: each shuffled sequence's clips are clips of the same video, not in order
    z2 = z.detach().clone().requires_grad_(True)
    g2 = gf.detach().clone().requires_grad_(True)
    flat = z.detach().reshape(B * K, C)
    idx = _rows_of(mseq.reshape(-1, C), flat).view(-1, K)  # [B*shuffles, K] rows of flat
    gi = _rows_of(mg, gf.detach())
    assert torch.equal(idx // K, gi[:, None].expand(-1, K))  # same video's global feature
    assert not (idx % K == torch.arange(K)).all(1).any()  # never the identity order
    joint = real(z2, g2)
    marg = real(z2.reshape(B * K, C)[idx], g2[gi])
    bound = _hand_bound("jsd", joint, marg)
    *d_psi, d_z, d_g = _grads(bound, [*psi, z2, g2])
    for got, want in zip(got_psi, d_psi):
        torch.testing.assert_close(got, -want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z.grad, -d_z, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gf.grad, -d_g, rtol=1e-4, atol=1e-6)
    assert float(d_z.abs().max()) > 1e-4 and max(float(t.abs().max()) for t in d_psi) > 1e-4
    assert out["mi_td"].item() == pytest.approx(bound.item(), rel=1e-4, abs=1e-5)
