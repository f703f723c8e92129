"""The calibration command: supervised ceiling, random-init floor, chance per factor."""

import json

import pytest

from ctrlaug.calibrate import main
from ctrlaug.config import ConfigError, load_config
from ctrlaug.studies.calibrate import calibrate, pretrain_steps, to_markdown

TINY = [
    "shapes.train_per_class=2",
    "shapes.test_per_class=4",
    "shapes.num_frames=16",
    "epochs=1",
    "eval.linear_epochs=3",
    "num_workers=0",
    "batch_size=8",
]


def test_pretrain_steps_follow_the_run_budget():
    cfg = load_config(None, ["batch_size=16", "epochs=3"])
    assert pretrain_steps(cfg, 256) == 48
    assert pretrain_steps(cfg, 250) == 48  # the last partial batch is a step
    cfg = load_config(None, ["batch_size=16", "epochs=3", "optim.max_steps_per_epoch=5"])
    assert pretrain_steps(cfg, 256) == 15


def test_calibrate_table_has_every_factor_and_chance(tmp_path):
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path}"])
    res = calibrate(cfg, seeds=(0,), factors=["shape", "motion"], log=lambda *_: None)
    assert res["primary"] == "shape" and set(res["factors"]) == {"shape", "motion"}
    assert res["factors"]["shape"]["chance"] == pytest.approx(12.5)  # 8 balanced shapes
    assert res["factors"]["motion"]["chance"] == pytest.approx(25.0)
    for r in res["factors"].values():
        assert len(r["supervised"]) == 1 and len(r["random_init"]) == 1
        assert 0 <= r["supervised"][0] <= 100 and 0 <= r["random_init"][0] <= 100
        assert r["runs"][0]["steps"] == 2  # 16 videos / batch 8, one epoch
    # mirror flips would swap right/left, so the motion ceiling trains without them
    assert res["factors"]["motion"]["runs"][0]["flip"] is False
    assert res["factors"]["shape"]["runs"][0]["flip"] is True
    assert "| shape (primary) |" in to_markdown(res)


def test_unknown_factor_is_one_error_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown factor"):
        calibrate(load_config(None, TINY), factors=["size"], log=lambda *_: None)
    assert main(["--factors", "size", "--out", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown factor")


def test_cli_writes_json_and_markdown(tmp_path):
    assert main(["--factors", "colour", "--out", str(tmp_path), *TINY]) == 0
    res = json.load(open(tmp_path / "calibration.json"))
    assert list(res["factors"]) == ["colour"] and (tmp_path / "calibration.md").is_file()


def test_gap_closed_is_per_seed_against_that_seeds_floor_and_ceiling():
    from ctrlaug.studies.calibrate import GATE_FRACTION, gap_closed

    cal = {
        "primary": "shape",
        "seeds": [0, 1],
        "factors": {"shape": {"supervised": [90.0, 80.0], "random_init": [30.0, 20.0], "chance": 12.5}},
    }
    frac = gap_closed(cal, {0: 50.0, 1: 40.0})
    assert frac == pytest.approx({0: 20 / 60, 1: 20 / 60})
    assert frac[0] >= GATE_FRACTION - 1e-12
    # the same top-1 closes less of a seed whose floor is lower
    assert gap_closed(cal, {1: 30.0})[1] < gap_closed(cal, {0: 50.0})[0]
    with pytest.raises(ValueError, match="seed 2 was not calibrated"):
        gap_closed(cal, {2: 50.0})
    with pytest.raises(ValueError, match="'colour' not in the calibration"):
        gap_closed(cal, {0: 50.0}, factor="colour")
    cal["factors"]["shape"]["supervised"][0] = 30.0
    with pytest.raises(ValueError, match="gap is undefined"):
        gap_closed(cal, {0: 50.0})
