"""How the losses are wired to the features, checked with expected values built independently:

- L_rc: the order of a feature map's cells against the correspondence grid, with an explicit
  (t, h, w) loop over source-coordinate tubes (flips included) instead of ``cells()`` and
  ``correspondence``;
- L_mi inside the objective: every pooled view feature handed to L_mi carries the level and the
  video of *that* view (global view first, then clip k), checked against features pooled by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctrlaug.losses import CtrlAugObjective, MIConfig, NCEConfig, RCConfig, RegionContrastLoss, StepBatch
from ctrlaug.models import build_encoder


def _segment(lo: float, hi: float, n: int, i: int, flip: bool) -> tuple[float, float]:
    """Source interval of cell ``i`` of ``n`` along one axis of the box side [lo, hi]."""
    j = n - 1 - i if flip else i
    return lo + (hi - lo) * j / n, lo + (hi - lo) * (j + 1) / n


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _tube(box, grid, t, h, w):
    """Source-coordinate tube of cell (t, h, w) of a view box (t0, t1, y0, y1, x0, x1, flip)."""
    flip = box[6] > 0.5
    return (
        _segment(box[0], box[1], grid[0], t, False),
        _segment(box[2], box[3], grid[1], h, False),
        _segment(box[4], box[5], grid[2], w, flip),
    )


def _loop_loss(clip_maps, glob_maps, clip_boxes, glob_boxes, owner, tau, queue=None):
    """Mean soft-target cross-entropy of eq. 3-4, every index written as an explicit loop."""
    P, _, Tc, Hc, Wc = clip_maps.shape
    B, _, Tv, Hv, Wv = glob_maps.shape
    keys, key_tube, key_video = [], [], []
    for b in range(B):
        gb = glob_boxes[b].tolist()
        for t in range(Tv):
            for h in range(Hv):
                for w in range(Wv):
                    keys.append(glob_maps[b, :, t, h, w])
                    key_tube.append(_tube(gb, (Tv, Hv, Wv), t, h, w))
                    key_video.append(b)
    if queue is not None:
        keys.extend(queue)
    keys = torch.stack(keys).double()
    total, n = 0.0, 0
    for p in range(P):
        cb = clip_boxes[p].tolist()
        for t in range(Tc):
            for h in range(Hc):
                for w in range(Wc):
                    q = clip_maps[p, :, t, h, w].double()
                    logits = keys @ q / tau
                    lse = torch.logsumexp(logits, 0)
                    ct = _tube(cb, (Tc, Hc, Wc), t, h, w)
                    vol = math.prod(s[1] - s[0] for s in ct)
                    loss = 0.0
                    for j, (kt, kv) in enumerate(zip(key_tube, key_video)):
                        if kv != int(owner[p]):
                            continue
                        s = math.prod(_overlap(a, b) for a, b in zip(ct, kt)) / vol
                        loss = loss + s * (lse - logits[j])
                    total, n = total + loss, n + 1
    return total / n


@pytest.mark.parametrize("flip", [False, True], ids=["unflipped", "flipped"])
def test_rc_cell_order_matches_an_explicit_t_h_w_loop(flip):
    """Grids with T, H, W all different (a t,w,h or h,t,w flatten changes the value)."""
    g = torch.Generator().manual_seed(0)
    P, B, D = 3, 2, 8
    cg, vg = (2, 3, 4), (3, 4, 2)
    clip_maps = F.normalize(torch.randn(P, D, *cg, generator=g), dim=1)
    glob_maps = F.normalize(torch.randn(B, D, *vg, generator=g), dim=1)
    glob_boxes = torch.tensor([[0.0, 1.0, 0.05, 0.95, 0.0, 0.9, 0.0], [0.0, 1.0, 0.1, 1.0, 0.1, 1.0, 1.0]])
    clip_boxes = torch.tensor(
        [
            [0.1, 0.4, 0.2, 0.7, 0.1, 0.5, 0.0],
            [0.5, 0.9, 0.3, 0.9, 0.4, 0.8, 1.0],
            [0.0, 0.3, 0.15, 0.6, 0.2, 0.95, 0.0],
        ]
    )
    if flip:
        clip_boxes[:, 6] = 1.0 - clip_boxes[:, 6]
        glob_boxes[:, 6] = 1.0 - glob_boxes[:, 6]
    owner = torch.tensor([0, 1, 1])
    queue = F.normalize(torch.randn(5, D, generator=g), dim=1)
    want = _loop_loss(clip_maps, glob_maps, clip_boxes, glob_boxes, owner, 0.1, queue)
    got, keys = RegionContrastLoss(RCConfig(tau=0.1, backend="reference"))(
        clip_maps, glob_maps, clip_boxes, glob_boxes, owner, queue
    )
    print(f"L_rc module {got.item():.7f} vs explicit loop {want.item():.7f}")
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    # the keys returned for the queue are the global cells in (video, t, h, w) order
    loop_keys = torch.stack(
        [
            glob_maps[b, :, t, h, w]
            for b in range(B)
            for t in range(vg[0])
            for h in range(vg[1])
            for w in range(vg[2])
        ]
    )
    torch.testing.assert_close(keys, loop_keys)
    # non-vacuous: the same features with the clip cells in t,w,h order give another value
    swapped = clip_maps.transpose(3, 4).reshape(P, D, cg[0], cg[1], cg[2])
    other, _ = RegionContrastLoss(RCConfig(tau=0.1, backend="reference"))(
        swapped, glob_maps, clip_boxes, glob_boxes, owner, queue
    )
    assert abs(other.item() - want.item()) > 1e-3


def _objective(mi=True):
    torch.manual_seed(0)
    enc = build_encoder("r3d18", 0.0625)
    return CtrlAugObjective(
        enc,
        num_clips=2,
        proj_hidden=16,
        proj_dim=8,
        rc=None,
        mi=MIConfig(hidden=8) if mi else None,
        td=None,
        nce=NCEConfig(enabled=True),
    )


def test_objective_hands_mi_each_view_with_its_own_level_and_video():
    B, K = 3, 2
    obj = _objective()
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(B * K, 3, 8, 32, 32, generator=g)
    globs = torch.randn(B, 3, 8, 32, 32, generator=g)
    levels = torch.tensor([[10, 11, 12], [20, 21, 22], [30, 31, 32]])  # [B, 1+K], global view first
    video_ids = torch.tensor([7, 3, 5])
    boxes = torch.zeros(B, K, 7)
    seen = {}
    real = obj.mi.forward

    def spy(view_feats, view_levels, view_videos, clip_feats, global_feats, generator):
        seen.update(v=view_feats.detach(), lv=view_levels, vid=view_videos)
        seen.update(c=clip_feats.detach(), g=global_feats.detach())
        return real(view_feats, view_levels, view_videos, clip_feats, global_feats, generator)

    obj.mi.forward = spy
    obj.eval()  # BN running statistics: the hand pass below sees exactly the same encoder
    obj(StepBatch(clips, globs, boxes, torch.zeros(B, 7), levels, video_ids, step_seed=0))
    with torch.no_grad():
        pc = obj.encoder(clips).mean(dim=(2, 3, 4))  # [B*K, C], clip k of video b at b*K + k
        pg = obj.encoder(globs, obj.stride1).mean(dim=(2, 3, 4))  # [B, C]
    for b in range(B):
        row = b * (1 + K)
        torch.testing.assert_close(seen["v"][row], pg[b])
        assert int(seen["lv"][row]) == int(levels[b, 0]) and int(seen["vid"][row]) == int(video_ids[b])
        torch.testing.assert_close(seen["g"][b], pg[b])
        for k in range(K):
            torch.testing.assert_close(seen["v"][row + 1 + k], pc[b * K + k])
            torch.testing.assert_close(seen["c"][b, k], pc[b * K + k])
            assert int(seen["lv"][row + 1 + k]) == int(levels[b, 1 + k])
            assert int(seen["vid"][row + 1 + k]) == int(video_ids[b])
    # non-vacuous: the views really differ from each other
    assert float((seen["v"][0] - seen["v"][1]).abs().max()) > 1e-4
