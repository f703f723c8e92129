"""The four objectives: shapes, MINE accuracy, gradient reversal, and L_rc against the reference op."""

import math

import pytest
import torch

from ctrlaug.losses import (
    ClipInfoNCELoss,
    CtrlAugObjective,
    FeatureQueue,
    LowLevelMILoss,
    MIBound,
    MIConfig,
    NCEConfig,
    RCConfig,
    RegionContrastLoss,
    StepBatch,
    TDConfig,
    TemporalDependencyLoss,
    cells,
    dv_bound,
    grad_reverse,
    infonce_bound,
    jsd_bound,
    random_derangement_orders,
    same_level_partners,
)
from ctrlaug.models import ProjectionHead, StatisticsNetwork, build_encoder
from ctrlaug.ops import correspondence_ref, region_contrast_ref
from ctrlaug.utils.threads import one_thread


def _boxes(B, K, gen):
    """Nested boxes: a global box per video and K clip boxes inside it."""
    g = torch.zeros(B, 7)
    g[:, 0], g[:, 1] = 0.0, 1.0
    g[:, 2], g[:, 4] = torch.rand(B, generator=gen) * 0.1, torch.rand(B, generator=gen) * 0.1
    g[:, 3], g[:, 5] = 0.9 + g[:, 2], 0.9 + g[:, 4]
    g[:, 6] = (torch.rand(B, generator=gen) < 0.5).float()
    c = torch.zeros(B, K, 7)
    for k in range(K):
        t0 = (k + torch.rand(B, generator=gen) * 0.5) / (K + 1)
        c[:, k, 0], c[:, k, 1] = t0, t0 + 1.0 / (K + 1)
        for lo, hi in ((2, 3), (4, 5)):
            span = g[:, hi] - g[:, lo]
            a = g[:, lo] + torch.rand(B, generator=gen) * 0.3 * span
            c[:, k, lo], c[:, k, hi] = a, a + 0.6 * span
        c[:, k, 6] = (torch.rand(B, generator=gen) < 0.5).float()
    return c, g


# ---------------------------------------------------------------------------------------------
# L_rc
# ---------------------------------------------------------------------------------------------


def test_rc_in_the_objective_equals_the_reference_op_on_the_same_batch():
    gen = torch.Generator().manual_seed(3)
    B, K = 3, 2
    enc = build_encoder("r3d18", 1 / 16)
    obj = CtrlAugObjective(enc, K, (3, 4), 16, 8, rc=RCConfig(weight=1.0, tau=0.1, backend="reference"))
    clips, glob = torch.randn(B * K, 3, 8, 64, 64, generator=gen), torch.randn(B, 3, 8, 64, 64, generator=gen)
    cb, gb = _boxes(B, K, gen)
    out = obj(StepBatch(clips, glob, cb, gb, None, torch.arange(B), step_seed=0))
    # recompute by hand with the reference ops from the same encoder outputs
    with torch.no_grad():
        fc, fg = obj.encode(clips, glob)
        qc, kg = obj.proj(fc), obj.proj(fg)
        S = correspondence_ref(cb.reshape(B * K, 7), gb.repeat_interleave(K, 0), fc.shape[2:], fg.shape[2:])
        ref = region_contrast_ref(cells(qc), cells(kg), S, torch.arange(B).repeat_interleave(K), tau=0.1)
    assert fc.shape[2:] == (1, 2, 2) and fg.shape[2:] == (4, 2, 2)
    # BN in training mode uses batch statistics: both passes see the same batches, so equal
    torch.testing.assert_close(out["terms"]["rc"], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    # rows of S sum to 1 for nested boxes (a sanity check of the box layout we feed)
    torch.testing.assert_close(S.sum(-1), torch.ones(B * K, S.shape[1]), rtol=1e-5, atol=1e-5)


def test_rc_with_queue_matches_reference_and_queue_gets_no_grad():
    gen = torch.Generator().manual_seed(0)
    B, K, D = 2, 3, 8
    loss_fn = RegionContrastLoss(RCConfig(tau=0.07, backend="reference"))
    qc = torch.nn.functional.normalize(torch.randn(B * K, D, 1, 2, 2, generator=gen), dim=1).requires_grad_()
    kg = torch.nn.functional.normalize(torch.randn(B, D, 4, 2, 2, generator=gen), dim=1).requires_grad_()
    cb, gb = _boxes(B, K, gen)
    owner = torch.arange(B).repeat_interleave(K)
    queue = FeatureQueue(20, D)
    queue.push(torch.nn.functional.normalize(torch.randn(25, D, generator=gen), dim=1))
    assert queue.get().shape == (20, D) and int(queue.ptr) == 0  # the newest 20 of 25 kept
    loss, keys = loss_fn(qc, kg, cb.reshape(-1, 7), gb, owner, queue.get())
    S = correspondence_ref(cb.reshape(-1, 7), gb[owner], (1, 2, 2), (4, 2, 2))
    ref = region_contrast_ref(cells(qc), cells(kg), S, owner, tau=0.07, queue=queue.get())
    torch.testing.assert_close(loss, ref)
    assert keys.shape == (B * 16, D) and not keys.requires_grad
    loss.backward()
    assert qc.grad.abs().sum() > 0 and kg.grad.abs().sum() > 0
    assert not queue.feats.requires_grad


def test_rc_runs_the_fused_op_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast L_rc hands bf16 cells to the op (its tensor-core path); fp32 otherwise."""
    import ctrlaug.losses.rc as L

    seen = []

    def spy(q, k, *a, **kw):
        seen.append((q.dtype, k.dtype))
        kw.pop("backend")
        return region_contrast_ref(q, k, *a, **kw)

    monkeypatch.setattr(L, "region_contrast", spy)
    gen = torch.Generator().manual_seed(0)
    B, K, D = 2, 2, 8
    qc = torch.nn.functional.normalize(torch.randn(B * K, D, 1, 2, 2, generator=gen), dim=1)
    kg = torch.nn.functional.normalize(torch.randn(B, D, 4, 2, 2, generator=gen), dim=1)
    cb, gb = _boxes(B, K, gen)
    owner = torch.arange(B).repeat_interleave(K)
    fn = RegionContrastLoss(RCConfig(tau=0.1, backend="reference"))
    fn(qc, kg, cb.reshape(-1, 7), gb, owner)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fn(qc, kg, cb.reshape(-1, 7), gb, owner)
    assert seen == [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]


def test_feature_queue_is_fifo():
    q = FeatureQueue(4, 1)
    assert q.get() is None
    q.push(torch.tensor([[1.0], [2.0], [3.0]]))
    q.push(torch.tensor([[4.0], [5.0]]))
    assert q.feats.flatten().tolist() == [5.0, 2.0, 3.0, 4.0]
    assert int(q.filled) == 4 and int(q.ptr) == 1
    off = FeatureQueue(0, 3)
    off.push(torch.randn(5, 3))
    assert off.get() is None


# ---------------------------------------------------------------------------------------------
# MI bounds, MINE, gradient reversal
# ---------------------------------------------------------------------------------------------


def _correlated(n, d, rho, gen):
    x = torch.randn(n, d, generator=gen)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=gen)
    return x, y


def test_mine_estimates_mi_of_correlated_gaussians():
    """MINE (DV bound + moving-average bias correction) vs the closed form -d/2 log(1 - rho^2)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    d, rho = 2, 0.8
    truth = -d / 2 * math.log(1 - rho**2)  # 1.0217 nats
    G = StatisticsNetwork(d, hidden=64)
    bound = MIBound("dv", ema_rate=0.01)
    opt = torch.optim.Adam(G.parameters(), lr=3e-3)
    with one_thread():
        for _ in range(600):
            x, y = _correlated(256, d, rho, gen)
            y_marg = y[torch.randperm(256, generator=gen)]
            _, surr = bound(G(x, y), G(x, y_marg))
            opt.zero_grad()
            (-surr).backward()
            opt.step()
    with torch.no_grad():
        x, y = _correlated(100_000, d, rho, gen)
        est, _ = dv_bound(G(x, y), G(x, y[torch.randperm(100_000, generator=gen)]))
    print(f"MINE estimate {est.item():.4f} vs closed form {truth:.4f}")
    assert abs(est.item() - truth) < 0.07 * truth
    assert not torch.isnan(bound.log_ema)


def test_mi_bounds_are_zero_ish_for_independent_and_selectable():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(1000, generator=gen)
    est_dv, _ = dv_bound(t, t)
    assert abs(est_dv.item()) < 1.0  # E[T] - log E[e^T] <= 0 by Jensen on the same sample
    assert est_dv.item() <= 1e-6
    est_js, _ = jsd_bound(t + 5, t - 5)  # separable scores give a large JSD estimate
    assert est_js.item() > -0.1
    scores = torch.eye(4) * 10
    est_nce, _ = infonce_bound(scores.diagonal(), scores)
    assert est_nce.item() == pytest.approx(math.log(4), abs=1e-3)
    with pytest.raises(ValueError, match="MI estimator must be one of"):
        MIBound("nwj")
    with pytest.raises(ValueError, match="'infonce' has no \\(joint, marginal\\) form"):
        MIBound("infonce")  # it used to compute JSD silently


def test_dv_surrogate_uses_moving_average_denominator():
    joint = torch.zeros(3)
    marg = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    log_ema = torch.tensor(math.log(10.0))  # pretend the running E[e^T] is 10
    est, surr = dv_bound(joint, marg, log_ema, rate=0.0)  # rate 0: ema stays 10
    torch.testing.assert_close(surr, est)  # same value
    surr.backward()
    # d surrogate / d T_j = -(e^T_j / n) / ema  (bias-corrected), not / mean(e^T)
    expected = -(torch.exp(marg.detach()) / 3) / 10.0
    torch.testing.assert_close(marg.grad, expected)


def test_gradient_reversal_flips_encoder_grad_and_keeps_theta_grad():
    torch.manual_seed(0)
    G = StatisticsNetwork(4, 8)
    feats = torch.randn(6, 4)

    def grads(reverse):
        f = feats.clone().requires_grad_()
        G.zero_grad()
        z = grad_reverse(f, 1.0) if reverse else f
        est, _ = dv_bound(G(z[:3], z[3:]), G(z[:3], z[3:].flip(0)))
        (-est).backward()
        return f.grad.clone(), [p.grad.clone() for p in G.parameters()]

    f_plain, th_plain = grads(False)
    f_rev, th_rev = grads(True)
    assert f_plain.abs().sum() > 0
    torch.testing.assert_close(f_rev, -f_plain)
    for a, b in zip(th_rev, th_plain):
        torch.testing.assert_close(a, b)
    # scale
    f = feats.clone().requires_grad_()
    grad_reverse(f, 0.5).sum().backward()
    torch.testing.assert_close(f.grad, torch.full_like(f, -0.5))


def test_same_level_partners_pick_same_level_other_video():
    gen = torch.Generator().manual_seed(0)
    levels = torch.tensor([0, 0, 1, 1, 2, 0, 1])
    videos = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    for _ in range(20):
        p = same_level_partners(levels, videos, gen)
        assert p[4] == -1  # the only level-2 view
        for i in range(7):
            if p[i] >= 0:
                assert levels[p[i]] == levels[i] and videos[p[i]] != videos[i]
        assert p[0] == 5 and p[1] == 5 and p[5] in (0, 1)


def test_low_level_mi_loss_trains_theta_up_and_lg_term_leaves_theta():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    B, K, C = 4, 2, 6
    loss_fn = LowLevelMILoss(C, MIConfig(hidden=8, lg_weight=1.0))
    views = torch.randn(B * (1 + K), C, requires_grad=True)
    levels = torch.arange(B * (1 + K)) % 3
    vids = torch.arange(B).repeat_interleave(1 + K)
    v3 = views.view(B, 1 + K, C)
    out = loss_fn(views, levels, vids, v3[:, 1:], v3[:, 0], gen)
    assert out["mi_pairs"].item() == B * (1 + K)
    assert set(out) >= {"loss", "mi_level", "mi_lg"}
    # the LG term alone gives theta no gradient but does reach the features
    loss_fn.zero_grad()
    lg = LowLevelMILoss(C, MIConfig(hidden=8, lg_weight=1.0))
    lg.G.load_state_dict(loss_fn.G.state_dict())
    few = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])  # unique levels: no joint pair at all
    r = lg(views, few, vids, v3[:, 1:], v3[:, 0], gen)
    assert r["mi_pairs"].item() == 0
    r["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in lg.G.parameters())
    assert views.grad.abs().sum() > 0


@pytest.mark.parametrize("estimator", ["dv", "jsd", "infonce"])
def test_low_level_mi_estimators_run(estimator):
    gen = torch.Generator().manual_seed(0)
    B, K, C = 3, 2, 5
    loss_fn = LowLevelMILoss(C, MIConfig(hidden=8, estimator=estimator))
    views = torch.randn(B * (1 + K), C, requires_grad=True)
    v3 = views.view(B, 1 + K, C)
    out = loss_fn(
        views, torch.arange(9) % 2, torch.arange(B).repeat_interleave(1 + K), v3[:, 1:], v3[:, 0], gen
    )
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert loss_fn.G.wx.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# L_td and L_nce
# ---------------------------------------------------------------------------------------------


def test_derangement_orders_are_never_identity():
    gen = torch.Generator().manual_seed(0)
    o = random_derangement_orders(500, 2, gen)
    assert (o == torch.tensor([1, 0])).all()
    o = random_derangement_orders(500, 4, gen)
    assert not (o == torch.arange(4)).all(1).any()
    assert (o.sort(1).values == torch.arange(4)).all()


@pytest.mark.parametrize("head", ["gru", "mlp", "gru_mlp", "vcop"])
@pytest.mark.parametrize("estimator", ["dv", "infonce"])
def test_td_heads_give_finite_losses_and_encoder_gradients(head, estimator):
    gen = torch.Generator().manual_seed(0)
    B, K, C = 4, 3, 6
    td = TemporalDependencyLoss(C, K, TDConfig(head=head, hidden=8, estimator=estimator, shuffles=2))
    z, g = torch.randn(B, K, C, requires_grad=True), torch.randn(B, C, requires_grad=True)
    out = td(z, g, gen)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert z.grad.abs().sum() > 0
    if head != "vcop":
        assert g.grad.abs().sum() > 0
        assert "mi_td" in out


def test_td_learns_order_with_global_context():
    """The GRU head trained on eq. 7 separates ordered from shuffled sequences."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    B, K, C = 64, 4, 8
    td = TemporalDependencyLoss(C, K, TDConfig(head="gru", hidden=16))
    opt = torch.optim.Adam(td.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(60):
            g = torch.randn(B, C, generator=gen)
            ramp = torch.linspace(-1, 1, K)[None, :, None]
            z = g[:, None, :] * ramp + 0.1 * torch.randn(B, K, C, generator=gen)
            out = td(z, g, gen)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
    assert out["td_acc"].item() > 0.9
    assert out["mi_td"].item() > 0.3


@pytest.mark.parametrize("mode", ["clip_global", "clip_clip"])
def test_clip_infonce_modes(mode):
    gen = torch.Generator().manual_seed(0)
    B, K, D = 3, 2, 8
    loss_fn = ClipInfoNCELoss(NCEConfig(tau=0.1, mode=mode))
    g = torch.nn.functional.normalize(torch.randn(B, D, generator=gen), dim=1)
    owner = torch.arange(B).repeat_interleave(K)
    perfect_clips = g[owner] if mode == "clip_global" else g[owner]
    noisy = torch.nn.functional.normalize(torch.randn(B * K, D, generator=gen), dim=1)
    assert loss_fn(perfect_clips, g, owner) < loss_fn(noisy, g, owner)
    if mode == "clip_global":
        logits = perfect_clips @ g.t() / 0.1
        torch.testing.assert_close(
            loss_fn(perfect_clips, g, owner), torch.nn.functional.cross_entropy(logits, owner)
        )


def test_objective_with_every_loss_backpropagates_to_all_trainable_parts():
    gen = torch.Generator().manual_seed(0)
    B, K = 3, 2
    enc = build_encoder("r3d18", 1 / 16)
    obj = CtrlAugObjective(
        enc,
        K,
        (3, 4),
        16,
        8,
        rc=RCConfig(weight=1.0, backend="reference"),
        mi=MIConfig(weight=0.1, hidden=8),
        td=TDConfig(weight=0.1, hidden=8),
        nce=NCEConfig(enabled=True, weight=1.0),
    )
    clips, glob = torch.randn(B * K, 3, 8, 48, 48, generator=gen), torch.randn(B, 3, 8, 48, 48, generator=gen)
    cb, gb = _boxes(B, K, gen)
    levels = torch.tensor([[0, 1, 2], [0, 1, 2], [1, 2, 0]])
    out = obj(StepBatch(clips, glob, cb, gb, levels, torch.arange(B), step_seed=1))
    assert set(out["terms"]) == {"rc", "mi", "td", "nce"} and set(out) == {"loss", "terms", "stats", "keys"}
    for k in ("mi_level", "mi_lg", "mi_td"):
        assert k in out["stats"]
    assert obj.enabled == ("rc", "nce", "mi", "td") and set(obj.stat_names) == set(out["stats"])
    out["loss"].backward()
    no_grad = [n for n, p in obj.named_parameters() if p.grad is None]
    assert no_grad == []
    assert isinstance(obj.proj, ProjectionHead)
    with pytest.raises(ValueError, match="every loss is off"):
        CtrlAugObjective(enc, K)
