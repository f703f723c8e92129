"""Mechanism diagnostics (ctrlaug.studies.diagnose, python -m ctrlaug.diagnose): each measurement on constructed features, maps and
masks, the clips it relies on, and the CLI end to end on a tiny random-init encoder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ctrlaug.augment import AugmentConfig, level_components
from ctrlaug.config import load_config
from ctrlaug.data.shapes import MOTIONS, ShapesConfig, render_shapes
from ctrlaug.diagnose import main
from ctrlaug.models import build_encoder
from ctrlaug.studies.diagnose import (
    LEVEL_COMPONENTS,
    centre_clip,
    diagnose,
    focus_rank,
    focus_ratio,
    level_decodability,
    masks_to_grid,
    reversal_decodability,
    reverse_clip,
    video_split,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.usefixtures("one_thread")

# A diagnose run of a few seconds: 16 + 16 videos of 8 frames at 32 px, width 1/16.
TINY_SHAPES = [
    "dataset=shapes",
    "model.width=0.0625",
    "shapes.num_shapes=2",
    "shapes.num_motions=2",
    "shapes.train_per_class=8",
    "shapes.test_per_class=8",
    "shapes.num_frames=12",
    "shapes.size=32",
    "augment.size=32",
    "augment.clip_frames=8",
    "augment.global_frames=8",
]


# ------------------------------------------------------------------------------------------------
# level decodability


def _levels(n: int, v: int, aug: AugmentConfig, seed: int = 0) -> torch.Tensor:
    return torch.randint(aug.num_levels, (n, v), generator=torch.Generator().manual_seed(seed))


def test_features_that_encode_the_level_decode_it_and_random_features_do_not():
    aug = AugmentConfig()
    n, v = 160, 4
    lev = _levels(n, v, aug)
    onehots = [
        torch.nn.functional.one_hot(c, k).float()
        for c, k in zip(level_components(lev, aug), aug.level_counts)
    ]
    g = torch.Generator().manual_seed(1)
    content = torch.randn(n, 1, 16, generator=g).expand(n, v, 16)  # per-video content, same in all views
    encodes = torch.cat([*onehots, content], -1) + 0.05 * torch.randn(n, v, 18 + 16, generator=g)
    train = video_split(n, 0)
    good = level_decodability(encodes, lev, train, aug)
    assert set(good) == set(LEVEL_COMPONENTS)
    for k in LEVEL_COMPONENTS:
        assert good[k]["top1"] > 95, (k, good[k])
    rand = level_decodability(torch.randn(n, v, 34, generator=g), lev, train, aug)
    for k in LEVEL_COMPONENTS:
        assert rand[k]["top1"] < rand[k]["chance"] + 10, (k, rand[k])
        assert 20 <= rand[k]["chance"] <= 60, (k, rand[k])  # 4 bins (hue: 2), majority rate


def test_applied_values_decode_from_features_that_carry_them_linearly():
    from ctrlaug.augment import sample_level_params
    from ctrlaug.studies.diagnose import APPLIED, applied_decodability, quantile_bins

    aug = AugmentConfig()
    n, v = 160, 4
    lev = _levels(n, v, aug)
    p = sample_level_params(lev.flatten(), aug, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    # a linear read-out of the signed values: what a brightness shortcut looks like
    values = torch.stack([getattr(p, k).float() for k in APPLIED], -1).view(n, v, len(APPLIED))
    values = (values - values.mean((0, 1))) / values.std((0, 1))
    carries = torch.cat([values, 0.01 * torch.randn(n, v, 8, generator=g)], -1)
    train = video_split(n, 0)
    good = applied_decodability(carries, p, train)
    rand = applied_decodability(torch.randn(n, v, 13, generator=g), p, train)
    for k in APPLIED:
        assert good[k]["top1"] > 55, (k, good[k])  # 4 ordered bins of a linear value (chance 25)
        assert rand[k]["top1"] < 40, (k, rand[k])
        assert good[k]["chance"] == pytest.approx(25.0, abs=8)  # equal-count bins
    # equal-count bins: every bin holds a quarter of the values, in order
    b = quantile_bins(torch.arange(100.0))
    assert torch.equal(torch.bincount(b), torch.full((4,), 25)) and torch.equal(b, b.sort().values)


def test_level_probe_splits_by_video_and_checks_shapes():
    train = video_split(10, 3)
    assert train.sum() == 5 and not torch.equal(train, video_split(10, 4))
    with pytest.raises(ValueError, match="at least 4"):
        video_split(3)
    with pytest.raises(ValueError, match="feats"):
        level_decodability(torch.zeros(10, 2, 4), torch.zeros(10, 3, dtype=torch.int64), train)


# ------------------------------------------------------------------------------------------------
# arrow of time


def test_order_aware_features_decode_the_arrow_of_time_and_order_blind_ones_sit_at_chance():
    g = torch.Generator().manual_seed(0)
    n, c = 200, 24
    content = torch.randn(n, c, generator=g)
    direction = torch.randn(c, generator=g)
    label = torch.randint(2, (n,), generator=g)
    sign = (2 * label - 1).float()[:, None]
    first, second = content + 2 * sign * direction, content - 2 * sign * direction
    train = video_split(n, 0)
    aware = reversal_decodability(first, second, label, train)
    assert aware["top1"] > 95 and aware["chance"] == 50, aware
    # features that ignore frame order give a clip and its reversal the same features: exactly 50%
    blind = reversal_decodability(first, first.clone(), label, train)
    assert blind["top1"] == pytest.approx(50.0), blind
    with pytest.raises(ValueError, match="0 or 1"):
        reversal_decodability(first, second, label + 1, train)


def _centroid_x(clip: torch.Tensor) -> np.ndarray:
    """Column centroid per frame of the bright object in a uint8 [3, F, S, S] clip."""
    obj = clip.max(0).values.numpy() > 128  # object: max channel >= 204; background <= ~70
    cols = np.arange(obj.shape[-1])[None, None]
    return (obj * cols).sum((1, 2)) / obj.sum((1, 2))


def test_a_reversed_clip_shows_the_opposite_motion_and_masks_match_the_object():
    cfg = ShapesConfig()
    aug = AugmentConfig(size=48, clip_frames=8, global_frames=8)
    index = MOTIONS.index("right") * cfg.num_shapes  # video 0 of the "right" block: a disc moving right
    video, masks, fac = render_shapes(cfg, "test", index)
    assert MOTIONS[fac["motion"]] == "right"
    clip, cover = centre_clip(video[None], masks[None], aug)
    assert clip.shape == (1, 3, 8, 48, 48) and cover.shape == (1, 8, 48, 48)
    fwd, rev = _centroid_x(clip[0]), _centroid_x(reverse_clip(clip)[0])
    assert np.all(np.diff(fwd) > 0), fwd  # moves right, frame after frame
    assert np.all(np.diff(rev) < 0), rev  # the reversal moves left
    np.testing.assert_allclose(rev, fwd[::-1])
    # the cut masks cover the object's pixels in the same frames and crop
    obj = clip[0].max(0).values > 128
    mask = cover[0] > 0.5
    iou = (obj & mask).sum() / (obj | mask).sum()
    assert iou > 0.9, float(iou)


# ------------------------------------------------------------------------------------------------
# foreground focus


def test_focus_ratio_above_one_on_the_mask_one_when_uniform_below_one_off_the_mask():
    masks = torch.zeros(3, 2, 4, 4)
    masks[:, :, :2, :2] = 1  # object: a quarter of every frame
    grid = masks_to_grid(masks, (1, 2, 2))
    assert grid.shape == (3, 1, 2, 2)
    torch.testing.assert_close(grid[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    maps = torch.stack([0.1 + masks[0], torch.ones(2, 4, 4), 1 - masks[0]])
    f = focus_ratio(maps, masks)
    assert f["ratio"][0] > 1 and f["ratio"][1] == pytest.approx(1.0) and f["ratio"][2] < 1, f
    assert f["ratio"][2] == pytest.approx(0.0) and f["area"][0] == pytest.approx(0.25)
    # on the feature grid: a map on the object's cell gives the largest possible ratio, 1 / area
    on = focus_ratio(grid[:1], grid[:1])
    assert on["ratio"][0] == pytest.approx(4.0) and on["inside"][0] == pytest.approx(1.0)
    # an all-zero map has no focus (NaN), and a shape mismatch is an error
    assert math.isnan(float(focus_ratio(torch.zeros(1, 2, 4, 4), masks[:1])["ratio"][0]))
    with pytest.raises(ValueError, match="same"):
        focus_ratio(maps, masks[:, :1])


def _one_cell_masks(n: int, seed: int = 0) -> torch.Tensor:
    """n one-cell objects on a 1 x 4 x 4 grid, at random cells."""
    cell = torch.randint(16, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.one_hot(cell, 16).float().view(n, 1, 4, 4)


def _focus_and_control(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    from ctrlaug.studies.diagnose import shuffled_pairing

    focus = focus_ratio(maps, masks)["ratio"].mean().item()
    return focus, focus_ratio(maps, masks[shuffled_pairing(len(masks), 0)])["ratio"].mean().item()


def test_focus_rank_follows_where_the_energy_sits_not_how_peaked_it_is():
    """Maps = peak * own mask + fixed small noise: the rank is near 1 and the same for peak 2 and
    peak 50 (the order of the map's regions does not change), while focus - control grows with
    the peak."""
    n = 256
    masks = _one_cell_masks(n)
    noise = 0.05 * torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ranks, gaps = {}, {}
    for peak in (2.0, 50.0):
        maps = peak * masks + noise
        r = focus_rank(maps, masks)
        assert r.shape == (n,) and torch.isfinite(r).all()
        ranks[peak] = r.mean().item()
        focus, control = _focus_and_control(maps, masks)
        gaps[peak] = focus - control
    # 1/16 of the other clips share the cell (a tie, 1/2): 1 - 1/32 expected
    assert ranks[2.0] > 0.95 and ranks[2.0] == pytest.approx(1 - 1 / 32, abs=0.02), ranks
    assert abs(ranks[2.0] - ranks[50.0]) < 1e-6, ranks
    assert gaps[50.0] > gaps[2.0] + 1.0 and gaps[2.0] > 0, gaps


def test_focus_rank_is_one_half_for_maps_that_ignore_the_object_and_lower_for_a_wrong_region():
    from ctrlaug.studies.diagnose import shuffled_pairing

    n = 256
    masks = _one_cell_masks(n)
    g = torch.Generator().manual_seed(2)
    rand = focus_rank(torch.rand(n, 1, 4, 4, generator=g), masks).mean().item()
    assert abs(rand - 0.5) < 0.05, rand
    # the energy sits on a wrong region (the cell opposite the object) over a flat floor: the
    # object's region ties with every other empty region (1/2) and loses to the clips whose
    # object is at that cell (0): 1/2 - 1/32 expected, below 1/2
    wrong_maps = 10 * masks.flip(-1).flip(-2) + 0.05
    wrong = focus_rank(wrong_maps, masks).mean().item()
    assert 0.44 < wrong < 0.49, wrong
    # the same energy on another clip's object with random noise: near 1/2, far from the own mask's
    noisy = focus_rank(10 * masks[shuffled_pairing(n, 3)] + 0.05 * torch.rand(n, 1, 4, 4, generator=g), masks)
    assert abs(noisy.mean().item() - 0.5) < 0.06, noisy.mean()
    # a uniform map ties with every other region: exactly 1/2
    assert torch.allclose(focus_rank(torch.ones(n, 1, 4, 4), masks), torch.full((n,), 0.5))


def test_focus_rank_by_hand_on_three_clips_of_a_2x2_grid():
    """Masks: c0 = top-left cell, c1 = top-right cell, c2 = both (area 1/4, 1/4, 1/2).
    Clip 0's map [[0, 1], [1, 1]] avoids its object: r(c0) = 0 < r(c1) = 4/3, r(c2) = 2/3 -> 0.
    Clip 1's map [[1, 3], [0, 0]]: r(c1) = 3 > r(c0) = 1, r(c2) = 2 -> 1.
    Clip 2's map is uniform: every ratio is 1, two ties -> 1/2. Mean 1/2."""
    masks = torch.tensor([[[1.0, 0], [0, 0]], [[0, 1], [0, 0]], [[1, 1], [0, 0]]])[:, None]
    maps = torch.tensor([[[0.0, 1], [1, 1]], [[1, 3], [0, 0]], [[1, 1], [1, 1]]])[:, None]
    r = focus_rank(maps, masks)
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0, 0.5]))
    assert r.mean().item() == pytest.approx(0.5)
    # an all-zero map has no rank; an empty mask is left out of the others' comparisons
    maps0 = maps.clone()
    maps0[0] = 0
    assert math.isnan(focus_rank(maps0, masks)[0].item())
    masks_e = masks.clone()
    masks_e[2] = 0  # clip 2 has no object: no rank; clip 1 now compares against c0 only -> 1
    r_e = focus_rank(maps, masks_e)
    assert math.isnan(r_e[2].item()) and r_e[1].item() == pytest.approx(1.0) and r_e[0].item() == 0.0
    with pytest.raises(ValueError, match="same"):
        focus_rank(maps, masks[:, :, :1])


# ------------------------------------------------------------------------------------------------
# CLI and end to end


def test_bad_path_is_one_error_line_with_exit_code_2(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "ctrlaug.diagnose", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not found" in lines[0], p.stderr
    assert main([str(tmp_path)]) == 2  # an empty run folder: no checkpoint
    assert main([]) == 2  # neither a checkpoint nor --random-init
    assert not os.listdir(tmp_path)


def test_an_unwritable_out_is_one_line_before_anything_is_computed(tmp_path, monkeypatch):
    import ctrlaug.studies.diagnose.runner as study  # where run() looks them up

    def boom(*a, **k):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(study, "diagnose", boom)
    monkeypatch.setattr(study, "load_encoder", boom)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "diag"  # its parent is a file: cannot be created
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from ctrlaug.diagnose import main; sys.exit(main(sys.argv[1:]))",
         "--random-init", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], p.stderr
    assert "[ENOTDIR]" in lines[0], p.stderr
    # in-process with the computation replaced by a failure: the check comes first
    assert main(["--random-init", "--out", str(blocker)]) == 2


def _in_range(res: dict) -> None:
    assert 0 <= res["level"]["applied"]["mean_top1"] <= 100
    for k in (*LEVEL_COMPONENTS, "mean_top1", "mean_chance"):
        vals = [res["level"][k]] if k.startswith("mean") else res["level"][k].values()
        assert all(0 <= x <= 100 for x in vals), (k, res["level"][k])
    assert all(0 <= x <= 100 for x in res["arrow"].values()), res["arrow"]
    for k, v in res["factors"].items():
        assert set(v) == {"linear", "linear_train", "knn", "chance"} and all(
            0 <= x <= 100 for x in v.values()
        ), k
    fo = res["focus"]
    assert fo["ratio"] > 0 and 0 <= fo["inside"] <= 100 and 0 < fo["area"] < 100, fo


def test_diagnose_end_to_end_on_a_tiny_random_init_encoder(tmp_path):
    out = tmp_path / "diag"
    args = ["--random-init", "--out", str(out), "--videos", "16", "--levels", "2"]
    assert main([*args, *(f"--set={s}" for s in TINY_SHAPES)]) == 0
    assert sorted(os.listdir(out)) == ["diagnose_random.json", "diagnose_random.md"]
    with open(out / "diagnose_random.json") as f:
        res = json.load(f)
    assert {"level", "arrow", "focus", "factors", "primary", "seconds", "random_init", "checkpoint"} <= set(
        res
    )
    assert res["random_init"] and res["checkpoint"] is None and res["note"] is None
    assert res["videos"] == 16 and res["train_videos"] == 16 and res["clip"] == [8, 32, 32]
    assert set(res["factors"]) == {"shape", "motion", "colour", "background"} and res["primary"] == "shape"
    assert res["arrow"]["chance"] == 50
    _in_range(res)
    md = (out / "diagnose_random.md").read_text()
    assert "arrow of time" in md and "| shape (primary) |" in md


class _ObjectEncoder(torch.nn.Module):
    """A fake encoder whose map is the bright object's time-averaged coverage on a 1 x 4 x 4 grid:
    it attends to the object by construction and is blind to frame order."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        obj = (x.max(1, keepdim=True).values > (0.5 - 0.45) / 0.225).float()  # raw max channel > 0.5
        m = torch.nn.functional.adaptive_avg_pool3d(obj.mean(2, keepdim=True), (1, 4, 4)) * self.scale
        return torch.cat([m, 2 * m], 1)


def test_diagnose_reads_an_object_focused_order_blind_encoder_as_such():
    # End to end through the real clips, masks and probes: focus well above 1, arrow exactly 50%.
    cfg = load_config(None, TINY_SHAPES)
    res = diagnose(_ObjectEncoder(), cfg, videos=16, levels=1, probe_epochs=20)
    assert res["focus"]["grid"] == [1, 4, 4] and res["focus"]["clips"] == 16
    assert res["focus"]["ratio"] > 1.5, res["focus"]
    assert res["focus"]["rank"] > 0.8 and res["focus"]["rank"] <= 1.0, res["focus"]
    assert res["arrow"]["top1"] == pytest.approx(50.0), res["arrow"]


def test_a_config_of_another_dataset_is_diagnosed_on_shapes_and_says_so():
    cfg = load_config(None, [*TINY_SHAPES, "dataset=synthetic"])
    torch.manual_seed(0)
    res = diagnose(build_encoder(cfg.model.arch, cfg.model.width), cfg, videos=8, levels=1, probe_epochs=20)
    assert res["benchmark"] == "shapes" and res["config_dataset"] == "synthetic"
    assert "synthetic" in res["note"] and res["videos"] == 8
    _in_range(res)


def test_focus_control_is_one_for_shuffled_masks_and_the_pairing_has_no_fixed_point():
    """The shuffled-mask control: maps that track the object exactly score 1 / area (16 on a 4x4
    grid with one-cell objects); the same maps scored against another clip's mask score 1 on
    average, since the object's cell is independent of the map; a map that ignores the object
    (uniform) scores 1 both ways."""
    from ctrlaug.studies.diagnose import shuffled_pairing

    n = 4000
    g = torch.Generator().manual_seed(0)
    cell = torch.randint(16, (n,), generator=g)
    masks = torch.nn.functional.one_hot(cell, 16).float().view(n, 1, 4, 4)
    pair = shuffled_pairing(n, seed=0)
    assert sorted(pair.tolist()) == list(range(n)) and not (pair == torch.arange(n)).any()
    on = focus_ratio(masks, masks)["ratio"]
    assert torch.allclose(on, torch.full((n,), 16.0))
    control = focus_ratio(masks, masks[pair])["ratio"].mean().item()
    assert abs(control - 1.0) < 0.25, control
    uniform = focus_ratio(torch.ones(n, 1, 4, 4), masks[pair])["ratio"]
    assert torch.allclose(uniform, torch.ones(n))
    with pytest.raises(ValueError, match="at least 2"):
        shuffled_pairing(1)


def test_signed_level_features_decode_the_signed_levels_and_random_ones_do_not():
    """With augment.signed_levels the L_mi level of a view is a signed bin; features that carry
    those bins (one-hot, plus noise) read them near 100%, random features near chance."""
    aug = AugmentConfig(signed_levels=True)
    n, v = 200, 4
    lev = _levels(n, v, aug)
    comps = level_components(lev, aug)
    g = torch.Generator().manual_seed(5)
    onehot = torch.cat(
        [torch.nn.functional.one_hot(c, k).float() for c, k in zip(comps, aug.level_counts)], -1
    )
    carries = onehot + 0.05 * torch.randn(onehot.shape, generator=g)
    train = video_split(n, 0)
    good = level_decodability(carries, lev, train, aug)
    rand = level_decodability(torch.randn(onehot.shape, generator=g), lev, train, aug)
    for k in LEVEL_COMPONENTS:
        assert good[k]["top1"] > 95, (k, good[k])
        assert rand[k]["top1"] < good[k]["chance"] + 15, (k, rand[k])


def test_level_premise_the_signed_reading_shares_low_level_statistics_the_unsigned_does_not():
    """L_mi's premise (paper §3.2): views of one level share low-level statistics. A hand-made
    descriptor (channel means/stds, saturation, hue, gradient energy) reads the signed brightness
    and contrast bins well above chance, and the unsigned bins (random sign) at chance."""
    from ctrlaug.studies.diagnose import level_premise, lowlevel_descriptor

    over = ["augment.size=32"]
    res = {}
    for signed in (False, True):
        cfg = load_config(None, [*over, f"augment.signed_levels={str(signed).lower()}"])
        res[signed] = level_premise(cfg, videos=160, levels=4, split="val", probe_epochs=150)
    for k in ("brightness", "contrast"):
        assert res[True][k]["top1"] > res[True][k]["chance"] + 12, (k, res[True][k])
        assert res[False][k]["top1"] < res[False][k]["chance"] + 10, (k, res[False][k])
    assert res[True]["signed_levels"] and not res[False]["signed_levels"]
    with pytest.raises(ValueError, match="clips"):
        lowlevel_descriptor(torch.zeros(2, 1, 4, 8, 8))


def test_order_probe_reads_order_from_time_carrying_features_and_chance_from_random_ones():
    """The L_td order study's fresh classifier: clip features that carry each clip's time (its
    centre plus noise, the video's own offset) tell the true order from a deranged one; features
    without time (random) sit at chance 50 on held-out videos."""
    from ctrlaug.studies.diagnose import order_decodability

    n, k, c = 600, 4, 4
    g = torch.Generator().manual_seed(0)
    t = (torch.arange(k).float() + torch.rand(n, k, generator=g) * 0.5) / k  # increasing in k
    carries = torch.cat([t[..., None], torch.randn(n, k, c - 1, generator=g)], -1)
    glob = torch.randn(n, c, generator=g)
    train = video_split(n, 0)
    good = order_decodability(carries, glob, train)
    blind = order_decodability(torch.randn(n, k, c, generator=g), glob, train)
    assert good["top1"] > 90, good
    assert abs(blind["top1"] - 50) < 10, blind
    assert good["chance"] == 50.0
