"""Tests of the ablation runner (paper §4.4, Tables 4-7): rows, statistics, resume, summaries."""

import functools
import json
import os
import statistics
import warnings

import pytest
import torch
from tiny import TINY as BASE_TINY

from ctrlaug.ablate import main as ablate_main
from ctrlaug.config import load_config
from ctrlaug.studies import ablate


def _fake_diag(seed: int, base: float, rank: float = 0.6) -> dict:
    return {
        "lowlevel": base - 10 + seed,
        "level": base + seed,
        "arrow": 50.0 + seed,
        "focus": 1.0 + seed / 10,
        "focus_control": 1.0,
        "focus_rank": rank + seed / 100,
    }


def _fake_order(seed: int, head: float | None = 50.0) -> dict:
    return {
        "own_head": head,
        "own_head_bound": None if head is None else 0.0,
        "probe_clips_and_global": 55.0 + seed,
        "probe_clips_only": 52.0 + seed,
        "probe_clips_in_global_crop": 60.0 + seed,
    }


def _seed_of(d: str) -> int:
    return int(d.rstrip(os.sep)[-1])


class FakeDiagnostics(dict):
    """Fake diagnostics hooks for the runner (``**hooks``); ``calls`` lists the diagnosed runs,
    ``orders`` the runs given an order study, ``starts`` the own-start folders, ``randoms`` the
    (folder, init) of the random-init floor."""

    def __init__(self):
        self.calls, self.orders, self.starts, self.randoms = [], [], [], []

        def run(d):
            self.calls.append(d)
            return _fake_diag(_seed_of(d), 40.0)

        def order(d):
            self.orders.append(d)
            return _fake_order(_seed_of(d))

        def start(ov, d):
            self.starts.append(d)
            return {**_fake_diag(_seed_of(d), 20.0, rank=0.5), "order": _fake_order(_seed_of(d), None)}

        def random(ov, d, i):
            self.randoms.append((d, i))
            return _fake_diag(_seed_of(d), 60.0 + i, rank=0.5)

        super().__init__(diagnose_fn=run, diagnose_random_fn=random, diagnose_start_fn=start, order_fn=order)


@pytest.fixture
def diag():
    return FakeDiagnostics()


@pytest.mark.parametrize("table", sorted(ablate.TABLES))
def test_every_row_is_a_valid_config(table, tmp_path):
    rows = ablate.TABLES[table]
    assert rows and len({r.slug for r in rows}) == len(rows)
    for p in ablate.plan_runs(table, [0, 1], str(tmp_path)):
        cfg = load_config(None, p["overrides"])
        assert cfg.eval.linear and cfg.seed == p["seed"] and cfg.out_dir == p["dir"]


def test_row_counts_and_paper_numbers():
    assert {t: len(r) for t, r in ablate.TABLES.items()} == {
        "table4": 8,
        "table5": 4,
        "table6": 5,
        "table7": 6,
    }
    t7 = ablate.TABLES["table7"]
    assert (t7[-1].ucf101, t7[-1].hmdb51) == (71.2, 44.1)
    assert (t7[0].ucf101, t7[0].hmdb51) == (57.1, 30.3)
    assert (t7[4].ucf101, t7[4].hmdb51) == (62.3, 35.9)
    t4 = ablate.TABLES["table4"]
    assert (t4[0].ucf101, t4[0].hmdb51) == (47.8, 26.3)
    assert (t4[-1].ucf101, t4[-1].hmdb51) == (60.1, 31.3)
    assert (ablate.TABLES["table5"][3].ucf101, ablate.TABLES["table5"][3].hmdb51) == (59.4, 30.7)
    assert (ablate.TABLES["table6"][4].ucf101, ablate.TABLES["table6"][4].hmdb51) == (60.5, 31.0)
    # The full method appears in tables 4-6 with the same numbers (60.1 / 31.3).
    assert ablate.TABLES["table5"][1].ucf101 == ablate.TABLES["table6"][3].ucf101 == 60.1


def test_rows_realise_the_paper_settings(tmp_path):
    def cfg(table, i):
        return load_config(None, ablate.plan_runs(table, [0], str(tmp_path))[i]["overrides"])

    nce = cfg("table7", 0)
    assert nce.nce.enabled and not (nce.rc.enabled or nce.mi.enabled or nce.td.enabled)
    full = cfg("table7", 5)
    assert full.rc.enabled and full.mi.enabled and full.td.enabled and not full.nce.enabled
    mixed = cfg("table7", 4)
    assert mixed.nce.enabled and mixed.mi.enabled and mixed.td.enabled and not mixed.rc.enabled
    k3 = cfg("table4", 5)
    assert k3.augment.num_clips == 3 and k3.model.global_stride1_stages == [3, 4]
    assert cfg("table4", 0).model.global_stride1_stages == [] and not cfg("table4", 0).td.enabled
    lv = cfg("table5", 3).augment
    assert lv.level_counts == (5, 5, 5, 2, 5)
    assert cfg("table6", 1).td.head == "vcop" and not cfg("table6", 0).td.enabled


def test_spearman():
    assert ablate.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ablate.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert ablate.spearman([1, 3, 2], [1, 2, 3]) == pytest.approx(0.5)
    assert ablate.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, abs=1e-6)  # ties
    assert ablate.spearman([5.0], [1.0]) is None
    assert ablate.spearman([1, 1, 1], [1, 2, 3]) is None


def _fake(acc_by_seed):
    calls = []

    def fake(overrides):
        calls.append(overrides)
        cfg = load_config(None, overrides)
        os.makedirs(cfg.out_dir, exist_ok=True)
        return {"top1": acc_by_seed[cfg.seed], "random_top1": 20.0 + cfg.seed, "steps": 1}

    return fake, calls


def test_resume_skip_and_summaries(tmp_path, diag, capsys):
    fake, calls = _fake({0: 50.0, 1: 60.0})
    hooks = dict(train_fn=fake, **diag)
    out = str(tmp_path / "abl")
    assert ablate_main(["table7", "--seeds", "0,1", "--out", out, "--epochs", "2", "--no-plot"], **hooks) == 0
    assert len(calls) == 12 and all("epochs=2" in c for c in calls)
    res = json.load(open(os.path.join(out, "table7", "l_rc", "seed1", "result.json")))
    assert res["top1"] == 60.0 and res["seed"] == 1 and res["row"] == "L_rc"
    # Second invocation: everything is skipped.
    assert ablate_main(["table7", "--seeds", "0,1", "--out", out, "--no-plot"], **hooks) == 0
    assert len(calls) == 12
    assert "result exists, skipped" in capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "table7.json")))
    row = summary["rows"][0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(55.0) and row["std"] == pytest.approx(7.0710678)
    assert summary["random_init"]["mean"] == pytest.approx(20.5)
    assert summary["spearman_ucf101"] is None  # every row has the same accuracy
    md = open(os.path.join(out, "table7.md")).read()
    assert "| L_rc+L_mi+L_td | 55.0 ± 7.1 | 2 | 71.2 | 44.1 |" in md
    assert "Random-init encoder baseline: 20.5 ± 0.7" in md
    # A deleted result is re-run, and only that one.
    os.remove(os.path.join(out, "table7", "l_nce", "seed0", "result.json"))
    assert ablate_main(["table7", "--seeds", "0,1", "--out", out, "--no-plot"], **hooks) == 0
    assert len(calls) == 13


def test_ordering_sentence_and_markdown(tmp_path, diag):
    paper = {r.label: r.ucf101 for r in ablate.TABLES["table6"]}

    def fake(overrides):
        cfg = load_config(None, overrides)
        label = next(r.label for r in ablate.TABLES["table6"] if r.slug in cfg.out_dir.split(os.sep))
        return {"top1": paper[label] - 10.0 + cfg.seed, "random_top1": 12.5}

    summary = ablate.run_table("table6", [0, 1, 2], str(tmp_path), plot=False, train_fn=fake, **diag)
    assert summary["spearman_ucf101"] == pytest.approx(1.0)
    text = ablate.ordering_sentence(summary)
    assert "matches the paper's ordering exactly" in text and "+1.00" in text
    assert [r["n"] for r in summary["rows"]] == [3] * 5


def test_dry_run_trains_nothing(tmp_path, diag, capsys):
    fake, calls = _fake({0: 1.0})
    assert (
        ablate_main(["table4", "--seeds", "0", "--out", str(tmp_path), "--dry-run"], train_fn=fake, **diag)
        == 0
    )
    out = capsys.readouterr().out
    assert "8 runs (0 done)" in out and "augment.num_clips=4" in out
    assert not calls and not diag.calls and not os.listdir(tmp_path)


def test_bad_override_fails_before_training(tmp_path, diag, capsys):
    fake, calls = _fake({0: 1.0})
    argv = ["table6", "--seeds", "0", "--out", str(tmp_path), "no_such_key=1"]
    assert ablate_main(argv, train_fn=fake, **diag) == 2
    assert "no_such_key" in capsys.readouterr().err and not calls


def test_plot_written_when_matplotlib_available(tmp_path, diag):
    pytest.importorskip("matplotlib")
    fake, _ = _fake({0: 40.0})
    ablate.run_table("table5", [0], str(tmp_path), plot=True, train_fn=fake, **diag)
    assert os.path.getsize(tmp_path / "table5.png") > 0
    # one seed: no spread is claimed
    md = open(tmp_path / "table5.md").read()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "| 1 |" in ln]
    assert rows and all("| 40.0 | 1 |" in ln and "±" not in ln for ln in rows), rows
    assert "Random-init encoder baseline: 20.0 (n=1 seeds)" in md


# tests/tiny.py with a short probe (the runner always turns the probe on).
TINY = [*BASE_TINY, "eval.linear_epochs=5", "eval.clips=1"]


def test_diagnostics_added_once_and_summarised(tmp_path, diag):
    def fake(overrides):
        cfg = load_config(None, overrides)
        os.makedirs(cfg.out_dir, exist_ok=True)
        f = {"shape": {"trained": 70.0 + cfg.seed, "random_init": 30.0, "chance": 12.5}}
        return {"top1": 70.0 + cfg.seed, "random_top1": 30.0, "steps": 1, "primary": "shape", "factors": f}

    hooks = dict(train_fn=fake, **diag)
    out = str(tmp_path)
    argv = ["table7", "--seeds", "0,1", "--out", out, "--no-plot", "--rows", "l_nce"]
    assert ablate_main(argv, **hooks) == 0
    assert len(diag.calls) == 2
    res = json.load(open(tmp_path / "table7" / "l_nce" / "seed1" / "result.json"))
    assert res["diagnostics"]["level"] == 41.0 and res["factors"]["shape"]["trained"] == 71.0
    assert ablate_main(argv, **hooks) == 0 and len(diag.calls) == 2  # not diagnosed twice
    md = open(tmp_path / "table7.md").read()
    # row: shape 70.5 ± 0.7, level 40.5 ± 0.7, arrow 50.5 ± 0.7, focus 1.05 ± 0.07
    assert "| L_nce | 70.5 ± 0.7 | 30.5 ± 0.7 | 40.5 ± 0.7 | 50.5 ± 0.7 | 1.05 ± 0.07 |" in md, md
    # the random-init encoder: its probe values and its floor's diagnostics (per seed the mean of
    # inits 0, 1, 2 at base 60, 61, 62: level 61 + seed)
    assert "| random init | 30.0 ± 0.0 | 51.5 ± 0.7 | 61.5 ± 0.7 | 50.5 ± 0.7 | 1.05 ± 0.07 |" in md, md
    # --no-diagnose leaves new runs without diagnostics
    argv2 = ["table7", "--seeds", "2", "--out", out, "--no-plot", "--rows", "l_nce", "--no-diagnose"]
    assert ablate_main(argv2, **hooks) == 0 and len(diag.calls) == 2


def test_tiny_real_run_end_to_end(tmp_path):
    # One real row of Table 7 (L_rc only), one seed, one epoch, with the real diagnostics.
    hooks = dict(
        diagnose_fn=functools.partial(ablate.diagnose_run, videos=8),
        diagnose_random_fn=functools.partial(ablate.diagnose_random, videos=8),
        diagnose_start_fn=functools.partial(ablate.diagnose_own_start, videos=8),
        order_fn=functools.partial(ablate.order_run, videos=8),
    )  # the real training (the default train_fn) and the real diagnostics, on 8 videos
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        argv = ["table7", "--seeds", "0", "--out", str(tmp_path), "--epochs", "1", "--rows", "l_rc", *TINY]
        assert ablate_main(argv, **hooks) == 0
    res = json.load(open(tmp_path / "table7" / "l_rc" / "seed0" / "result.json"))
    assert 0.0 <= res["top1"] <= 100.0 and 0.0 <= res["random_top1"] <= 100.0 and res["steps"] >= 1
    assert "epochs=1" in res["overrides"]
    assert 0.0 <= res["diagnostics"]["arrow"] <= 100.0 and res["diagnostics"]["focus"] > 0
    assert (tmp_path / "table7" / "l_rc" / "seed0" / "diagnose.json").exists()
    assert (tmp_path / "table7" / "random_init" / "seed0" / "diagnose.json").exists()
    assert (tmp_path / "table7.md").exists()
    # the new records: focus rank, the order study (L_rc has no L_td head), own start, 3-init floor
    d = res["diagnostics"]
    assert 0.0 <= d["focus_rank"] <= 1.0 and d["focus_control"] > 0
    assert d["order"]["own_head"] is None and 0 <= d["order"]["probe_clips_and_global"] <= 100
    assert json.load(open(tmp_path / "table7" / "l_rc" / "seed0" / "order.json"))["trained_head"] is None
    start = json.load(open(tmp_path / "table7" / "own_start" / "seed0" / "result.json"))
    assert start["key"]["width"] == 0.0625 and 0.0 <= start["diagnostics"]["focus_rank"] <= 1.0
    assert (tmp_path / "table7" / "own_start" / "seed0" / "order.json").exists()
    floor = json.load(open(tmp_path / "table7" / "random_init" / "seed0" / "result.json"))
    assert floor["init_seeds"] == [1, 2, 3] and len(floor["inits"]) == 3
    assert floor["floor"]["arrow"]["n"] == 3
    for i in (1, 2):
        assert (tmp_path / "table7" / "random_init" / "seed0" / f"diagnose_init{i}.json").exists()
    summary = json.load(open(tmp_path / "table7.json"))
    l_rc = next(r for r in summary["rows"] if r["label"] == "L_rc")
    diff = l_rc["per_seed"]["0"]["minus_own_start"]["focus_rank"]
    assert diff == pytest.approx(d["focus_rank"] - start["diagnostics"]["focus_rank"])


def test_rows_filter(tmp_path, diag, capsys):
    fake, calls = _fake({0: 33.0})
    argv = ["table7", "--seeds", "0", "--out", str(tmp_path), "--no-plot", "--rows", "L_rc+L_mi+L_td,l_nce"]
    assert ablate_main(argv, train_fn=fake, **diag) == 0
    assert len(calls) == 2
    summary = json.load(open(tmp_path / "table7.json"))
    assert [r["n"] for r in summary["rows"]] == [1, 0, 0, 0, 0, 1]
    assert "| L_rc | — | 0 | 61.4 | 32.5 |" in open(tmp_path / "table7.md").read()
    assert ablate_main(["table7", "--out", str(tmp_path), "--rows", "bogus", "--dry-run"], **diag) == 2
    assert "unknown row(s) bogus" in capsys.readouterr().err


def test_calibration_adds_the_demo_gate_per_row_and_seed(tmp_path, diag, capsys):
    # seed 0: floor 20, ceiling 80 (gap 60); seed 1: floor 30, ceiling 60 (gap 30)
    cal = {
        "primary": "shape",
        "seeds": [0, 1],
        "factors": {"shape": {"supervised": [80.0, 60.0], "random_init": [20.0, 30.0], "chance": 12.5}},
    }
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(cal))
    fake, _ = _fake({0: 50.0, 1: 35.0})  # closes 0.50 of seed 0's gap, 0.17 of seed 1's
    out = str(tmp_path / "abl")
    argv = ["table6", "--seeds", "0,1", "--out", out, "--no-plot", "--calibration", str(path)]
    assert ablate_main(argv, train_fn=fake, **diag) == 0
    summary = json.load(open(os.path.join(out, "table6.json")))
    row = summary["rows"][0]
    assert row["gap_closed"] == {"0": pytest.approx(0.5), "1": pytest.approx(5 / 30)}
    assert row["gate"] is False
    md = open(os.path.join(out, "table6.md")).read()
    assert f"| {row['label']} | 0.50 | 0.17 | fails |" in md
    # a calibration without one of the seeds is one error line, before any training
    cal["seeds"], cal["factors"]["shape"]["supervised"] = [0], [80.0]
    path.write_text(json.dumps(cal))
    argv = ["table6", "--seeds", "0,1", "--out", str(tmp_path / "b"), "--calibration", str(path)]
    assert ablate_main(argv, train_fn=fake, **diag) == 2
    assert "seeds [1] were not calibrated" in capsys.readouterr().err
    path.write_text("{not json")
    assert ablate_main(argv, train_fn=fake, **diag) == 2
    assert f"--calibration {path}: cannot read it" in capsys.readouterr().err


def test_config_file_is_the_base_of_every_run(tmp_path, diag, capsys):
    """--config: each run's config equals the file's (nested keys included) plus the row's and
    the run's own overrides; a command-line override still wins over the file; a bad file fails
    before training with one line naming it."""
    cfg_file = tmp_path / "base.yaml"
    cfg_file.write_text(
        "out_dir: ignored\nthreads: 1\nepochs: 3\naugment:\n  size: 64\n  local_area: [0.3, 0.7]\n"
        "model: {spatial_stride1_stages: [4]}\nshapes: {train_per_class: 5}\n"
    )
    fake, calls = _fake({0: 50.0})
    out = str(tmp_path / "abl")
    argv = ["table7", "--config", str(cfg_file), "--seeds", "0", "--out", out, "--rows", "l_rc", "--no-plot"]
    assert ablate_main([*argv, "epochs=2"], train_fn=fake, **diag) == 0
    (ov,) = calls
    cfg = load_config(None, ov)
    ref = load_config(str(cfg_file), ["epochs=2", "nce=false", "rc=true", "mi=false", "td=false"])
    assert cfg.augment == ref.augment and cfg.shapes == ref.shapes
    assert (cfg.threads, cfg.epochs, cfg.model.spatial_stride1_stages) == (1, 2, [4])
    assert cfg.out_dir == os.path.join(out, "table7", "l_rc", "seed0")
    assert (cfg.rc.enabled, cfg.mi.enabled, cfg.td.enabled) == (True, False, False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("augment: [unclosed\n")
    assert ablate_main(["table7", "--config", str(bad), "--out", out], train_fn=fake, **diag) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and len(err.strip().splitlines()) == 1 and len(calls) == 1


# ------------------------------------------------------------------------------------------------
# issue 28: records that can be checked (own start, 3-init floor, order study, summary, resume)


def _fake_train(overrides):
    cfg = load_config(None, overrides)
    os.makedirs(cfg.out_dir, exist_ok=True)
    f = {
        "shape": {"trained": 70.0 + cfg.seed, "random_init": 30.0, "chance": 12.5},
        "colour": {"trained": 90.0 - cfg.seed, "random_init": 60.0, "chance": 25.0},
    }
    return {"top1": 70.0 + cfg.seed, "random_top1": 30.0, "steps": 1, "primary": "shape", "factors": f}


def _argv(out, seeds="0,1", rows="l_nce,l_rc", *extra):
    return ["table7", "--seeds", seeds, "--out", str(out), "--no-plot", "--rows", rows, *extra]


def test_own_start_is_the_trainers_starting_encoder(tmp_path):
    """The own start (torch.manual_seed(seed), build_objective(cfg).encoder) equals, tensor for
    tensor, the encoder of a Trainer built from the same config before any step; another seed
    gives other weights (so the comparison can fail)."""
    from ctrlaug.engine.trainer import Trainer

    cfg = load_config(None, [*BASE_TINY, f"out_dir={tmp_path / 'run'}", "seed=3", "td=true", "mi=true"])
    trainer = Trainer(cfg)
    try:
        want = trainer.obj.encoder.state_dict()
        got = ablate.own_start_encoder(cfg).state_dict()
        assert list(got) == list(want) and len(got) > 0
        for k in want:
            assert torch.equal(got[k].cpu(), want[k].cpu()), k
        other = ablate.own_start_encoder(load_config(None, [*BASE_TINY, "seed=4"])).state_dict()
        assert any(not torch.equal(other[k], want[k]) for k in want if want[k].is_floating_point())
        # the rows of a table share it: the heads are built after the encoder
        nce = load_config(None, [*BASE_TINY, "seed=3", "nce=true", "rc=false", "mi=false", "td=false"])
        assert all(
            torch.equal(a, b)
            for a, b in zip(ablate.own_start_encoder(nce).state_dict().values(), got.values())
        )
    finally:
        trainer.release()


def test_own_start_is_diagnosed_once_per_seed_and_again_for_other_encoder_settings(tmp_path, diag):
    hooks = dict(train_fn=_fake_train, **diag)
    assert ablate_main(_argv(tmp_path), **hooks) == 0
    assert sorted(diag.starts) == [ablate.own_start_dir(str(tmp_path), "table7", k) for k in (0, 1)]
    rec = json.load(open(tmp_path / "table7" / "own_start" / "seed1" / "result.json"))
    cfg = load_config(None, ablate.plan_runs("table7", [1], str(tmp_path), rows=["l_nce"])[0]["overrides"])
    assert rec["key"] == ablate.start_key(cfg) and rec["diagnostics"]["focus_rank"] == pytest.approx(0.51)
    summary = json.load(open(tmp_path / "table7.json"))
    l_rc = next(r for r in summary["rows"] if r["label"] == "L_rc")
    s1 = l_rc["per_seed"]["1"]
    assert s1["own_start"]["focus_rank"] == pytest.approx(0.51) and s1["diagnostics"]["focus_rank"] == 0.61
    assert s1["minus_own_start"]["focus_rank"] == pytest.approx(0.1)
    assert s1["minus_own_start"]["level"] == pytest.approx(20.0)  # 41 - 21
    assert s1["minus_own_start"]["order_head"] is None  # the own start's untrained head is left out
    assert s1["minus_own_start"]["order_probe"] == pytest.approx(0.0)
    assert summary["own_start"]["per_seed"]["0"]["diagnostics"]["level"] == 20.0
    md = open(tmp_path / "table7.md").read()
    assert "| focus rank | focus rank - own start |" in md
    assert "| 0.605 ± 0.007 | 0.100 ± 0.000 |" in md, md
    # a second invocation reuses it ...
    assert ablate_main(_argv(tmp_path), **hooks) == 0 and len(diag.starts) == 2
    # ... other encoder settings diagnose it again, and runs of the old settings get no difference
    assert ablate_main(_argv(tmp_path, "0", "l_nce", "--no-diagnose"), **hooks) == 0
    assert ablate_main(_argv(tmp_path, "0", "l_nce", "model.width=0.25"), **hooks) == 0
    assert len(diag.starts) == 3
    assert (
        json.load(open(tmp_path / "table7" / "own_start" / "seed0" / "result.json"))["key"]["width"] == 0.25
    )
    summary = json.load(open(tmp_path / "table7.json"))
    assert summary["rows"][0]["per_seed"]["0"]["minus_own_start"]["focus_rank"] is None


def test_random_floor_takes_every_init_and_tops_up_an_old_single_init_file(tmp_path, diag):
    from ctrlaug.eval.floor import FLOOR_INITS

    out = tmp_path
    d0 = out / "table7" / "random_init" / "seed0"
    d1 = out / "table7" / "random_init" / "seed1"
    d0.mkdir(parents=True)
    d1.mkdir(parents=True)
    # seed 0: a file of the old runner (one init, no focus rank); seed 1: one init with it
    old = {"lowlevel": 45.0, "level": 55.0, "arrow": 51.0, "focus": 1.1}
    (d0 / "result.json").write_text(json.dumps({"seed": 0, "diagnostics": old}))
    (d1 / "result.json").write_text(json.dumps({"seed": 1, "diagnostics": _fake_diag(1, 70.0, 0.4)}))
    hooks = dict(train_fn=_fake_train, **diag)
    assert ablate_main(_argv(out, "0,1", "l_nce", "--no-diagnose"), **hooks) == 0
    summary = json.load(open(out / "table7.json"))  # the old files still summarise
    assert (
        summary["random_floor"]["0"]["n"] == 1
        and summary["random_floor"]["0"]["floor"]["level"]["mean"] == 55
    )
    assert "focus_rank" not in summary["random_floor"]["0"]["floor"] and not diag.randoms
    assert ablate_main(_argv(out, rows="l_nce"), **hooks) == 0
    # seed 0: all three inits (init 0 lacked the focus rank); seed 1: inits 1 and 2 added
    assert sorted(diag.randoms) == sorted(
        [(str(d0), 0), (str(d0), 1), (str(d0), 2), (str(d1), 1), (str(d1), 2)]
    )
    rec = json.load(open(d1 / "result.json"))
    assert len(rec["inits"]) == FLOOR_INITS and rec["init_seeds"] == [2, 3, 4]
    assert rec["inits"][0]["level"] == 71.0 and rec["diagnostics"] == rec["inits"][0]  # kept
    assert [x["level"] for x in rec["inits"]] == [71.0, 62.0, 63.0]  # base 60 + i, plus the seed
    lv = rec["floor"]["level"]
    assert lv["n"] == 3 and lv["mean"] == pytest.approx(196 / 3) and lv["values"] == [71.0, 62.0, 63.0]
    assert lv["std"] == pytest.approx(statistics.stdev([71.0, 62.0, 63.0]))
    summary = json.load(open(out / "table7.json"))
    assert summary["random_floor"]["1"]["floor"]["level"]["mean"] == pytest.approx(196 / 3)
    assert summary["rows"][0]["per_seed"]["1"]["random_floor"]["focus_rank"]["n"] == 3
    assert ablate_main(_argv(out, rows="l_nce"), **hooks) == 0 and len(diag.randoms) == 5  # nothing new


def test_order_study_for_every_run_and_added_alone_to_diagnosed_runs(tmp_path, diag):
    hooks = dict(train_fn=_fake_train, **diag)
    # a run diagnosed before the order study existed (diagnostics with the focus rank, no order)
    assert ablate_main(_argv(tmp_path, "0", "l_nce", "--no-diagnose"), **hooks) == 0
    run = tmp_path / "table7" / "l_nce" / "seed0"
    res = json.load(open(run / "result.json"))
    res["diagnostics"] = _fake_diag(0, 33.0)
    (run / "result.json").write_text(json.dumps(res))
    assert ablate_main(_argv(tmp_path, "0", "l_nce"), **hooks) == 0
    assert not diag.calls and diag.orders == [str(run)]
    res = json.load(open(run / "result.json"))
    assert res["diagnostics"]["level"] == 33.0 and res["diagnostics"]["order"]["probe_clips_only"] == 52.0
    assert ablate_main(_argv(tmp_path, "0", "l_nce"), **hooks) == 0 and len(diag.orders) == 1
    summary = json.load(open(tmp_path / "table7.json"))
    d = summary["rows"][0]["per_seed"]["0"]["diagnostics"]
    assert (d["order_head"], d["order_probe"], d["order_clips_only"], d["order_global_crop"]) == (
        50,
        55,
        52,
        60,
    )
    # a run without an L_td head: own_head is null
    compact = ablate.compact_order(
        {
            "trained_head": None,
            "probe_clips_and_global": {"top1": 61.0},
            "probe_clips_only": {"top1": 50.0},
            "probe_clips_in_global_crop": {"top1": 70.0},
        }
    )
    assert compact == {
        "own_head": None,
        "own_head_bound": None,
        "probe_clips_and_global": 61.0,
        "probe_clips_only": 50.0,
        "probe_clips_in_global_crop": 70.0,
    }
    full = ablate.compact_order({**{k: {"top1": 1.0} for k in compact if k.startswith("probe")},
                                 "trained_head": {"mi_td": 0.02, "td_acc": 57.0}})  # fmt: skip
    assert full["own_head"] == 57.0 and full["own_head_bound"] == 0.02


def test_summary_carries_everything_and_names_the_missing_runs(tmp_path, diag):
    hooks = dict(train_fn=_fake_train, **diag)
    assert ablate_main(_argv(tmp_path, "0,1", "l_nce"), **hooks) == 0
    assert {"focus_control", "focus_rank", "order_probe", "order_head"} <= set(ablate.DIAG_COLUMNS)
    summary = json.load(open(tmp_path / "table7.json"))
    assert summary["missing"] == []  # every run asked for (--rows l_nce) is there
    missing = ablate.missing_runs("table7", [0, 1], str(tmp_path))
    assert len(missing) == 10 and {m["seed"] for m in missing} == {0, 1}
    assert "L_nce" not in {m["row"] for m in missing} and missing[0]["row"] == "L_rc"
    assert missing[0]["dir"] == os.path.join(str(tmp_path), "table7", "l_rc", "seed0")
    row = summary["rows"][0]
    s0 = row["per_seed"]["0"]
    assert s0["top1"] == 70.0 and s0["factors"] == {"shape": 70.0, "colour": 90.0}
    assert set(s0["diagnostics"]) >= set(ablate.DIAG_COLUMNS)
    assert s0["diagnostics"]["focus_control"] == 1.0 and s0["diagnostics"]["focus_rank"] == 0.6
    assert s0["own_start"]["level"] == 20.0 and s0["random_floor"]["level"]["values"] == [60.0, 61.0, 62.0]
    assert set(s0["minus_own_start"]) == set(ablate.DIAG_COLUMNS)
    assert row["diag"]["focus_minus_control"] == [pytest.approx(0.0), pytest.approx(0.1)]
    assert row["diag"]["focus_rank_minus_own_start"] == [pytest.approx(0.1), pytest.approx(0.1)]
    md = open(tmp_path / "table7.md").read()
    assert "| CAAM focus | focus - control | focus rank | focus rank - own start |" in md
    assert "| own start |" in md and "Runs still to come" not in md
    # a partial table says which runs are to come
    argv = ["table7", "--seeds", "0,1", "--out", str(tmp_path), "--no-plot", "--no-diagnose"]
    assert ablate_main([*argv, "--rows", "l_nce,l_rc", "--dry-run"], **hooks) == 0
    s = ablate.summarise("table7", [0, 1], str(tmp_path), rows=["l_nce", "l_rc"])
    assert [(m["row"], m["seed"]) for m in s["missing"]] == [("L_rc", 0), ("L_rc", 1)]
    md = ablate.to_markdown(s)
    assert "Runs still to come (2): L_rc seed 0, L_rc seed 1." in md


def test_old_results_without_the_new_keys_still_summarise(tmp_path):
    """A result.json and random_init file of the previous runner (no focus rank, control, order,
    own start, one init) summarise with those values missing."""
    run = tmp_path / "table7" / "l_nce" / "seed0"
    run.mkdir(parents=True)
    old_diag = {"lowlevel": 40.0, "level": 35.0, "arrow": 52.0, "focus": 1.2, "factors_knn": {"shape": 30.0}}
    (run / "result.json").write_text(
        json.dumps({"top1": 50.0, "random_top1": 25.0, "overrides": [], "diagnostics": old_diag})
    )
    ri = tmp_path / "table7" / "random_init" / "seed0"
    ri.mkdir(parents=True)
    (ri / "result.json").write_text(json.dumps({"seed": 0, "diagnostics": old_diag}))
    s = ablate.summarise("table7", [0], str(tmp_path))
    s0 = s["rows"][0]["per_seed"]["0"]
    assert s0["diagnostics"]["focus_rank"] is None and s0["diagnostics"]["order_probe"] is None
    assert s0["diagnostics"]["level"] == 35.0 and s0["own_start"] is None
    assert all(v is None for v in s0["minus_own_start"].values())
    assert s["random_floor"]["0"]["floor"]["knn_shape"]["n"] == 1
    md = ablate.to_markdown(s)
    assert "| L_nce | 40.0 | 35.0 | 52.0 | 1.20 | — | — | — | — | — |" in md, md
    assert len(s["missing"]) == 5


def test_no_diagnose_skips_everything_and_a_later_call_adds_what_is_missing(tmp_path, diag):
    hooks = dict(train_fn=_fake_train, **diag)
    assert ablate_main(_argv(tmp_path, "0", "l_nce", "--no-diagnose"), **hooks) == 0
    assert not (diag.calls or diag.orders or diag.starts or diag.randoms)
    assert not (tmp_path / "table7" / "own_start").exists()
    # diagnostics of the runner before the focus rank existed: computed again (the order study kept)
    run = tmp_path / "table7" / "l_nce" / "seed0"
    res = json.load(open(run / "result.json"))
    res["diagnostics"] = {
        "lowlevel": 1.0,
        "level": 2.0,
        "arrow": 3.0,
        "focus": 4.0,
        "order": _fake_order(0, 9.0),
    }
    (run / "result.json").write_text(json.dumps(res))
    assert ablate_main(_argv(tmp_path, "0", "l_nce"), **hooks) == 0
    assert diag.calls == [str(run)] and not diag.orders and len(diag.starts) == 1 and len(diag.randoms) == 3
    d = json.load(open(run / "result.json"))["diagnostics"]
    assert d["focus_rank"] == 0.6 and d["level"] == 40.0 and d["order"]["own_head"] == 9.0
