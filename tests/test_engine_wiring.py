"""The training loop's wiring, each checked against values built outside the code under test:

- the FeatureQueue reaches L_rc: step 2's L_rc equals the reference op with step 1's global
  cells (recomputed by hand) as extra negatives, and a partly filled queue hands over only its
  filled rows;
- the levels handed to L_mi are the levels whose parameters were applied to those very views
  (pixels recomputed per view with the per-view reference transform), and level groups do not
  depend on a view's position (global view or clip k);
- a mid-epoch resume restores the lr scheduler and both optimizers: a config with an lr
  milestone, compared over steps whose values depend on Adam's moments and on the schedule.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny import TINY

import ctrlaug.engine.trainer as train_mod
from ctrlaug.augment import level_components, low_level_augment_ref
from ctrlaug.config import load_config
from ctrlaug.engine.sampling import derive_seed
from ctrlaug.engine.trainer import Trainer, train
from ctrlaug.models import normalize_input
from ctrlaug.ops import correspondence_ref, region_contrast_ref
from ctrlaug.utils.checkpoint import load_latest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet_fallback_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ctrlaug: no fused backend", category=RuntimeWarning)
        yield


def tiny(tmp_path, *extra: str, name: str = "run"):
    return load_config(None, [*TINY, f"out_dir={tmp_path / name}", *extra])


def _cells_thw(feat: torch.Tensor) -> torch.Tensor:
    """[N, D, T, H, W] -> [N*T*H*W, D], rows in (n, t, h, w) order, by explicit permutation."""
    N, D, T, H, W = feat.shape
    return feat.permute(0, 2, 3, 4, 1).reshape(N * T * H * W, D)


def _spy_forward(tr: Trainer, on_call):
    """Replace the model's forward with one that first hands its arguments to ``on_call``."""
    real = tr.model.forward

    def spy(batch, queue=None):
        on_call(
            dict(
                batch=batch,
                clips=batch.clips,
                global_views=batch.global_views,
                clip_boxes=batch.clip_boxes,
                global_boxes=batch.global_boxes,
                levels=batch.levels,
                queue=queue,
            )
        )
        out = real(batch, queue)
        on_call(dict(out=out))
        return out

    tr.model.forward = spy


# ---------------------------------------------------------------------------------------------
# the queue
# ---------------------------------------------------------------------------------------------


def test_queue_reaches_rc_in_the_loop_and_holds_only_filled_rows(tmp_path):
    tau = 0.1
    cfg = tiny(
        tmp_path,
        "mi=false",
        "td=false",
        "augment.size=48",
        "synthetic.size=48",
        f"rc.tau={tau}",
        "rc.queue_size=100",
    )
    tr = Trainer(cfg)
    obj = tr.obj
    K = cfg.augment.num_clips
    calls = []

    def on_call(args):
        if "out" in args:
            calls[-1]["loss_rc"] = args["out"]["terms"]["rc"].item()
            return
        with torch.no_grad():  # the step's L_rc by hand, with and without the queue it was given
            fc = obj.encoder(args["clips"])
            fg = obj.encoder(args["global_views"], obj.stride1)
            q, k = _cells_thw(obj.proj(fc)), _cells_thw(obj.proj(fg))
            B = fg.shape[0]
            S = correspondence_ref(
                args["clip_boxes"].reshape(B * K, 7),
                args["global_boxes"].repeat_interleave(K, 0),
                fc.shape[2:],
                fg.shape[2:],
            )
            owner = torch.arange(B).repeat_interleave(K)
            prev = calls[-1]["keys"] if calls else None
            no_q = region_contrast_ref(q, k, S, owner, tau=tau)
            with_q = region_contrast_ref(q, k, S, owner, tau=tau, queue=prev) if prev is not None else no_q
        queue = None if args["queue"] is None else args["queue"].clone()  # a view of the buffer
        calls.append(dict(keys=k, queue=queue, no_q=float(no_q), with_q=float(with_q)))

    _spy_forward(tr, on_call)
    it = iter(tr.loader)
    for _ in range(2):
        tr.run_step(next(it))
        tr.step += 1
    first, second = calls
    assert first["queue"] is None  # an empty queue hands over nothing
    n_keys = first["keys"].shape[0]
    assert 0 < n_keys < cfg.rc.queue_size  # so after step 1 the queue is only partly filled
    # step 2 sees exactly step 1's global cells, only the filled rows
    assert second["queue"] is not None and second["queue"].shape == first["keys"].shape
    torch.testing.assert_close(second["queue"], first["keys"], rtol=1e-5, atol=1e-6)
    print(
        f"step 2 L_rc {second['loss_rc']:.6f}: with queue {second['with_q']:.6f}, without {second['no_q']:.6f}"
    )
    assert second["loss_rc"] == pytest.approx(second["with_q"], rel=1e-5, abs=1e-6)
    assert abs(second["with_q"] - second["no_q"]) > 1e-3  # the queue changes the loss: non-vacuous
    assert first["loss_rc"] == pytest.approx(first["no_q"], rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------------------------


def test_levels_handed_to_mi_are_the_levels_applied_to_those_views(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "td=false")
    tr = Trainer(cfg)
    applied = {}
    real_aug = train_mod.augment_batch

    def aug_spy(batch, *a, **k):
        applied.update(raw=batch["views"].clone(), params=batch["lowlevel"])
        return real_aug(batch, *a, **k)

    monkeypatch.setattr(train_mod, "augment_batch", aug_spy)
    seen = {}
    _spy_forward(tr, lambda args: seen.update(args) if "out" not in args else None)
    tr.run_step(next(iter(tr.loader)))
    levels, raw, p = seen["levels"].cpu(), applied["raw"], applied["params"]
    B, V = raw.shape[:2]
    assert levels.shape == (B, V)
    # the level ids given to L_mi describe the parameters of each view (bins checked by hand)
    b_bin, c_bin, s_bin, h_bin, g_bin = level_components(levels, cfg.augment)
    width = cfg.augment.brightness / cfg.augment.levels_brightness
    mag = (p.brightness - 1).abs()
    assert ((mag >= b_bin * width - 1e-6) & (mag <= (b_bin + 1) * width + 1e-6)).all()
    assert torch.equal(p.level, levels)
    # and those parameters were applied to exactly that view: global view 0, clip k = view 1+k
    for b in range(B):
        for v in range(V):
            one = p.select((slice(b, b + 1), slice(v, v + 1))).flatten()
            want = normalize_input(low_level_augment_ref(raw[b, v][None].float() / 255.0, one))[0]
            got = seen["global_views"][b] if v == 0 else seen["clips"][b * (V - 1) + v - 1]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert len(set(levels.flatten().tolist())) > 1  # several levels in the batch: non-vacuous


def test_level_groups_do_not_depend_on_view_position(tmp_path):
    """P(two views of different videos share a level) is the same for every pair of positions."""
    cfg = tiny(tmp_path)
    tr = Trainer(cfg)
    B, V = cfg.batch_size, 1 + cfg.augment.num_clips
    same = torch.zeros(V, V)
    steps = 400
    for s in range(steps):
        tr.step = s
        lv, _ = tr.draw_levels(B, V)
        eq = (lv[:, None, :, None] == lv[None, :, None, :]).float()  # [B, B, V, V]
        eq = eq * (1 - torch.eye(B))[:, :, None, None]  # different videos only
        same += eq.sum((0, 1))
    pairs = steps * B * (B - 1)
    rate = same / pairs
    print(f"same-level rate by (position, position):\n{rate}")
    assert float(rate.min()) > 0.05  # the global view shares levels with clips, and so on
    assert float(rate.min()) / float(rate.max()) > 0.8


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------


def test_mid_epoch_resume_restores_scheduler_and_both_optimizers(tmp_path):
    # lr /10 after epoch 1 of 3; checkpoints every step; steps 5 and 6 (epoch 3) depend on the
    # schedule's position and on Adam's moments from before the interruption.
    extra = (
        "epochs=3",
        "optim.lr_milestones=[1]",
        "log.ckpt_every_steps=1",
        "rc.queue_size=40",
        "mi.lr=1e-2",
    )
    full = train(tiny(tmp_path, *extra, name="full"))
    hist = full["history"]
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5, 6]
    lrs = [h["lr"] for h in hist]
    assert lrs[1] == lrs[0] and lrs[2] == pytest.approx(lrs[0] * 0.1) and lrs[5] == lrs[2]
    cfg = tiny(tmp_path, *extra, name="resumed")

    class Stop(Exception):
        pass

    def stop(step, epoch, m):
        if step == 4:  # second step of epoch 2: the newest checkpoint is the mid-epoch one of step 3
            raise Stop

    with pytest.raises(Stop):
        train(cfg, on_step=stop)
    res = train(cfg)
    assert res["resumed_from"].endswith("ckpt_000000003.pt")
    resumed = res["history"]
    assert [h["step"] for h in resumed] == [4, 5, 6]
    for a, b in zip(hist[3:], resumed):
        for k in ("lr", "loss", "loss_rc", "loss_mi", "loss_td", "mi_level", "mi_td"):
            assert a[k] == b[k], f"step {a['step']} {k}: {a[k]!r} != {b[k]!r}"
    _, s_full = load_latest(str(tmp_path / "full"))
    _, s_res = load_latest(str(tmp_path / "resumed"))
    assert s_full["step"] == s_res["step"] == 6
    assert s_full["scheduler"] == s_res["scheduler"]
    for k, v in s_full["model"].items():
        assert torch.equal(v, s_res["model"][k]), k
    for which in ("optimizer", "mi_optimizer"):
        a, b = s_full[which]["state"], s_res[which]["state"]
        assert a.keys() == b.keys() and len(a) > 0
        for i in a:
            for name in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(a[i][name], b[i][name]), (which, i, name)


# ---------------------------------------------------------------------------------------------
# the two optimizers' directions in the loop
# ---------------------------------------------------------------------------------------------


def test_one_loop_step_moves_g_up_the_level_bound_and_the_encoder_down_the_mi_terms(tmp_path):
    """After one step with L_mi alone, re-score the same batch and pairs: the new G_theta (old
    encoder) raises the level bound; the new encoder (old G_theta) lowers level + local-global."""
    cfg = tiny(tmp_path, "rc=false", "td=false", "optim.lr=1e-4", "mi.lr=1e-4", "optim.weight_decay=0")
    tr = Trainer(cfg)
    obj = tr.obj
    seen = {}
    _spy_forward(tr, lambda a: seen.setdefault("args", a) if "out" not in a else None)
    batch = next(iter(tr.loader))
    before = {k: v.detach().clone() for k, v in obj.state_dict().items()}
    m = tr.run_step(batch)
    after = {k: v.detach().clone() for k, v in obj.state_dict().items()}
    a = seen["args"]
    assert a["batch"].step_seed == derive_seed(cfg.seed, 1, 0)  # the pair-sampling seed of step 0
    assert torch.equal(a["batch"].video_ids, batch["video_index"])

    def score(encoder_from, g_from):
        obj.load_state_dict({k: (g_from if k.startswith("mi.") else encoder_from)[k] for k in before})
        with torch.no_grad():
            out = obj(a["batch"])
        return out["stats"]["mi_level"].item(), out["stats"]["mi_lg"].item()

    lvl0, lg0 = score(before, before)
    assert lvl0 == pytest.approx(m["mi_level"], rel=1e-5, abs=1e-6)  # same pairs as the step
    lvl_g, _ = score(before, after)
    lvl_e, lg_e = score(after, before)
    print(
        f"level bound {lvl0:.6f} -> new G {lvl_g:.6f}; level+lg {lvl0 + lg0:.6f} -> new encoder {lvl_e + lg_e:.6f}"
    )
    assert lvl_g > lvl0 + 1e-7  # theta ascends
    assert lvl_e + lg_e < lvl0 + lg0 - 1e-7  # the encoder descends both
