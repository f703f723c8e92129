"""The factorised shapes benchmark: determinism, factor labels, masks, motion direction."""

import json
import os

import numpy as np
import pytest
import torch

from ctrlaug.data import SyntheticShapes, build_dataset
from ctrlaug.data.shapes import (
    FACTORS,
    MOTION_REVERSE,
    MOTIONS,
    SHAPES,
    ShapesConfig,
    render_shapes,
    shape_factors,
    write_shapes,
)

SMALL = ShapesConfig(train_per_class=4, test_per_class=4, num_frames=16, size=32)


def _centroids(masks: np.ndarray) -> np.ndarray:
    """Object centre (y, x) per frame from the masks alone."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        out.append((ys.mean(), xs.mean()))
    return np.array(out)


def test_render_is_deterministic_per_seed_split_index():
    a = render_shapes(SMALL, "train", 5)
    b = render_shapes(SMALL, "train", 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], render_shapes(SMALL, "train", 6)[0])
    assert not np.array_equal(a[0], render_shapes(SMALL, "test", 5)[0])
    other_seed = ShapesConfig(**{**SMALL.__dict__, "seed": 1})
    assert not np.array_equal(a[0], render_shapes(other_seed, "train", 5)[0])


def test_factor_labels_match_render_and_are_balanced():
    fac = shape_factors(SMALL, "train")
    assert set(fac) == set(FACTORS)
    for i in range(SMALL.split_size("train")):
        _, _, f = render_shapes(SMALL, "train", i)
        assert {k: int(fac[k][i]) for k in FACTORS} == f
    n = SMALL.split_size("train")
    assert np.bincount(fac["shape"]).tolist() == [n // 8] * 8
    # shape x motion pairs are balanced
    pairs = fac["shape"] * 4 + fac["motion"]
    assert np.bincount(pairs, minlength=32).tolist() == [1] * 32


def test_mask_is_exactly_the_object_pixels():
    cfg = ShapesConfig(**{**SMALL.__dict__, "noise": 0.0})
    for i in range(8):
        video, masks, _ = render_shapes(cfg, "train", i)
        assert masks.any(axis=(1, 2)).all()  # the object is visible in every frame
        for t in (0, cfg.num_frames - 1):
            obj = video[t][masks[t]]
            # every object pixel carries the one object colour, no background pixel does
            colour = obj[0]
            assert (obj == colour).all()
            assert not (video[t][~masks[t]] == colour).all(axis=-1).any()


@pytest.mark.parametrize("index", range(8, 16))
def test_motion_label_is_the_direction_and_reversal_swaps_it(index):
    video, masks, f = render_shapes(SMALL, "train", index)
    name = MOTIONS[f["motion"]]
    c = _centroids(masks)
    d = c[-1] - c[0]
    dy, dx = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}[name]
    along = d[0] * dy + d[1] * dx
    across = abs(d[0] * dx) + abs(d[1] * dy)
    assert along > 1.0 and across < 1.0, (name, d)
    # the object never leaves the frame: its mask never touches a border
    assert not masks[:, [0, -1], :].any() and not masks[:, :, [0, -1]].any()
    # time-reversed frames move the other way, i.e. carry the reversed motion label
    rev = _centroids(masks[::-1])
    d_rev = rev[-1] - rev[0]
    rdy, rdx = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}[MOTION_REVERSE[name]]
    assert d_rev[0] * rdy + d_rev[1] * rdx > 1.0


def test_shapes_are_distinct_masks():
    u, v = np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-1, 1, 41))
    from ctrlaug.data.shapes import _shape_mask

    masks = [_shape_mask(s, u, v) for s in SHAPES]
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            assert (masks[i] != masks[j]).mean() > 0.05, (SHAPES[i], SHAPES[j])


def test_config_rejects_an_object_that_would_leave_the_frame():
    with pytest.raises(ValueError, match="leave the frame"):
        ShapesConfig(object_size=(0.5, 0.8), travel=(0.1, 0.3))
    with pytest.raises(ValueError, match="num_shapes"):
        ShapesConfig(num_shapes=9)


def test_dataset_labels_factors_and_views():
    ds = build_dataset("shapes", split="test", shapes=SMALL, mode="eval")
    assert isinstance(ds, SyntheticShapes) and ds.primary_factor == "shape"
    fac = ds.factor_labels()
    assert torch.equal(fac["shape"], torch.tensor(ds.labels))
    assert ds.factor_classes()["motion"] == list(MOTIONS)
    s = ds[3]
    assert s["label"] == 3 and s["views"].dtype == torch.uint8
    video, masks, f = ds.render(3)
    assert f["shape"] == 3 and masks.shape == video.shape[:3]


def test_write_shapes_folder_layout_and_factor_csv(tmp_path):
    pytest.importorskip("av")
    cfg = ShapesConfig(
        num_shapes=2, num_motions=2, train_per_class=2, test_per_class=1, num_frames=8, size=32
    )
    root = write_shapes(tmp_path / "shapes", cfg)
    rows = open(os.path.join(root, "train_factors.csv")).read().split()
    assert rows[0] == "index,path,shape,motion,colour,background" and len(rows) == 5
    ds = build_dataset("folder", root, "train", mode="eval")
    assert sorted(ds.labels) == [0, 0, 1, 1]
    for line in rows[1:]:
        i, rel, shape = line.split(",")[:3]
        assert os.path.isfile(os.path.join(root, rel)) and rel.split(os.sep)[1] == SHAPES[int(shape)]


def test_demo_probe_json_schema(tmp_path):
    from ctrlaug.train import main

    out = tmp_path / "run"
    rc = main(
        [
            "epochs=1",
            "optim.max_steps_per_epoch=1",
            "shapes.train_per_class=2",
            "shapes.test_per_class=2",
            "eval.knn_every=0",
            "eval.linear_epochs=3",
            "log.progress=false",
            "log.plot=false",
            "log.tensorboard=false",
            "num_workers=0",
            f"out_dir={out}",
        ]
    )
    assert rc == 0
    res = json.load(open(out / "probe.json"))
    assert res["primary"] == "shape"
    assert set(res["factors"]) == set(FACTORS)
    for f, r in res["factors"].items():
        assert set(r) == {"trained", "random_init", "random_init_floor", "chance"}
        fl = r.pop("random_init_floor")  # the floor over three inits; the first is random_init
        assert fl["n"] == 3 and fl["values"][0] == pytest.approx(r["random_init"], abs=0.01)
        assert all(0.0 <= r[k] <= 100.0 for k in r), (f, r)
    assert res["factors"]["shape"]["chance"] == pytest.approx(12.5)
    assert "(primary)" in open(out / "probe.txt").read()
