"""Tests of the ablation runner (paper §4.4, Tables 4-7): rows, statistics, resume, summaries."""

import functools
import json
import os
import warnings

import pytest
from tiny import TINY as BASE_TINY

from ctrlaug.ablate import main as ablate_main
from ctrlaug.config import load_config
from ctrlaug.studies import ablate


def _fake_diag(seed: int, base: float) -> dict:
    return {
        "lowlevel": base - 10 + seed,
        "level": base + seed,
        "arrow": 50.0 + seed,
        "focus": 1.0 + seed / 10,
    }


class FakeDiagnostics(dict):
    """Fake diagnostics hooks for the runner (``**hooks``); ``calls`` lists the diagnosed runs."""

    def __init__(self):
        self.calls = []

        def run(d):
            self.calls.append(d)
            return _fake_diag(int(d.rstrip(os.sep)[-1]), 40.0)

        super().__init__(diagnose_fn=run, diagnose_random_fn=lambda ov, d: _fake_diag(int(d[-1]), 60.0))


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
    # the random-init encoder: its probe values and its own diagnostics
    assert "| random init | 30.0 ± 0.0 | 50.5 ± 0.7 | 60.5 ± 0.7 | 50.5 ± 0.7 | 1.05 ± 0.07 |" in md, md
    # --no-diagnose leaves new runs without diagnostics
    argv2 = ["table7", "--seeds", "2", "--out", out, "--no-plot", "--rows", "l_nce", "--no-diagnose"]
    assert ablate_main(argv2, **hooks) == 0 and len(diag.calls) == 2


def test_tiny_real_run_end_to_end(tmp_path):
    # One real row of Table 7 (L_rc only), one seed, one epoch, with the real diagnostics.
    hooks = dict(
        diagnose_fn=functools.partial(ablate.diagnose_run, videos=8),
        diagnose_random_fn=functools.partial(ablate.diagnose_random, videos=8),
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
