"""What a run folder guarantees (docs/training.md, "The run folder"): checkpoints that never run
code, are never written with NaN/inf and are checked on load; one run per folder; resumes that
apply what they are given or refuse in one line; rewrites that never tear; finite config numbers."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from tiny import TINY

from ctrlaug.config import ConfigError, load_config
from ctrlaug.engine.trainer import Trainer, train
from ctrlaug.train import main
from ctrlaug.utils.checkpoint import (
    CheckpointError,
    UnsafeFileError,
    find_resumable,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    safe_load,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
ENV["PYTHONPATH"] = ROOT + os.pathsep + ENV.get("PYTHONPATH", "")


def tiny(tmp_path, *extra: str, name: str = "run"):
    return load_config(None, [*TINY, f"out_dir={tmp_path / name}", *extra])


@pytest.fixture(autouse=True)
def _quiet_fallback_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ctrlaug: no fused backend", category=RuntimeWarning)
        yield


class Payload:
    """Unpickling this runs code: it writes ``marker`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _rewrite_checksum(path: str) -> None:
    """An attacker who plants a file can also plant its checksum: the refusal must not rest on it."""
    import hashlib

    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(path + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")


def _all_tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _all_tensors(v, f"{prefix}[{i}]")


def _steps(path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------
# 1. a checkpoint never runs code
# ---------------------------------------------------------------------------------------------


def test_a_malicious_pickle_is_refused_by_every_loader_and_never_runs(tmp_path, capsys, monkeypatch):
    import ctrlaug.eval.features as ev
    from ctrlaug.errors import EvalError
    from ctrlaug.eval.encoder import load_encoder
    from ctrlaug.eval.features import cached_features
    from ctrlaug.eval.options import EvalOptions

    cfg = tiny(tmp_path, "epochs=2")
    train(cfg)
    good = list_checkpoints(cfg.out_dir)  # [ckpt 4, ckpt 2]
    marker = tmp_path / "PAYLOAD_RAN"
    # graft the payload into the run's newest checkpoint (and give it a matching checksum)
    state = torch.load(good[0], weights_only=False)  # our own file, just written
    state["rng"]["torch_payload"] = Payload(str(marker))
    torch.save(state, good[0])
    _rewrite_checksum(good[0])
    with pytest.raises(UnsafeFileError, match="upgrade --trust"):
        load_checkpoint(good[0])
    with pytest.raises(EvalError, match="refused"):
        load_encoder(good[0])
    # training on that folder passes over the planted file and resumes from the older checkpoint
    res = train(tiny(tmp_path, "epochs=3"))
    assert res["resumed_from"] == good[1]
    assert "refused" in capsys.readouterr().err
    # a planted feature cache is ignored (and rewritten), not loaded
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save({"key": None, "feats": Payload(str(marker)), "labels": None}, cache / "features_train.pt")
    enc, ecfg, ck = load_encoder(cfg.out_dir)
    monkeypatch.setattr(ev, "extract_clip_features", lambda *a, **k: (torch.zeros(2, 1, 4), torch.zeros(2)))
    feats, _ = cached_features(enc, [0, 1], "train", EvalOptions("knn", checkpoint=ck), ck, str(cache), ecfg)
    assert feats.shape == (2, 1, 4) and "ignoring the feature cache" in capsys.readouterr().err
    assert safe_load(str(cache / "features_train.pt"))["feats"].shape == (2, 1, 4)  # rewritten clean
    assert not marker.exists(), "a loader ran the checkpoint's payload"


def test_an_old_format_file_names_the_opt_in_and_the_upgrade_makes_it_load(tmp_path):
    import random

    import numpy as np

    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)
    path = list_checkpoints(cfg.out_dir)[0]
    state = torch.load(path, weights_only=False)  # our own file, just written
    # the earlier format: numpy's and Python's RNG states pickled as they come
    state["rng"]["numpy"], state["rng"]["python"] = np.random.get_state(), random.getstate()
    torch.save(state, path)
    if os.path.exists(path + ".sha256"):
        os.remove(path + ".sha256")
    with pytest.raises(UnsafeFileError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and f"python -m ctrlaug.utils.checkpoint upgrade --trust {path}" in str(
        e.value
    )
    p = subprocess.run(
        [sys.executable, "-m", "ctrlaug.utils.checkpoint", "upgrade", path],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert p.returncode == 2 and "--trust" in p.stderr  # no opt-in, no unpickling
    p = subprocess.run(
        [sys.executable, "-m", "ctrlaug.utils.checkpoint", "upgrade", "--trust", path],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(path)["step"] == 2 and os.path.exists(path + ".orig")


# ---------------------------------------------------------------------------------------------
# 2. non-finite gradients and states
# ---------------------------------------------------------------------------------------------


def test_an_inf_gradient_is_skipped_and_every_saved_tensor_stays_finite(tmp_path, capsys):
    cfg = tiny(tmp_path, "epochs=2", "log.ckpt_every_steps=1", "log.keep_checkpoints=4")
    tr = Trainer(cfg)
    w = next(tr.obj.encoder.parameters())
    w.register_hook(lambda g: g * float("inf") if tr.step == 1 else g)  # step 2: inf grad, finite loss
    res = tr.fit()
    hist = res["history"]
    assert [h["skipped"] for h in hist] == [0.0, 1.0, 0.0, 0.0]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    err = capsys.readouterr().err
    assert "non-finite gradient" in err
    # step 2's checkpoint is not written: it falls inside a run of non-finite steps (issue 33)
    assert "step 2: no checkpoint inside a run of 1 non-finite step(s)" in err
    paths = list_checkpoints(cfg.out_dir)
    assert [int(os.path.basename(p)[5:14]) for p in paths] == [4, 3, 1]
    for p in paths:
        bad = [
            n for n, t in _all_tensors(load_checkpoint(p)) if t.is_floating_point() and not t.isfinite().all()
        ]
        assert bad == [], f"{p}: non-finite {bad[:5]}"


def test_a_state_with_nan_is_never_checkpointed_and_the_good_one_is_kept(tmp_path):
    from ctrlaug.errors import NonFiniteLossError

    cfg = tiny(tmp_path, "epochs=2", "log.keep_checkpoints=1")
    tr = Trainer(cfg)

    def poison(step, epoch, m):
        if step == 3:  # a buffer the checks before the update cannot see
            with torch.no_grad():
                next(b for b in tr.obj.buffers() if b.is_floating_point()).fill_(float("nan"))

    tr.on_step = poison
    with pytest.raises(NonFiniteLossError, match="not writing the checkpoint of step 4"):
        tr.fit()
    (only,) = list_checkpoints(cfg.out_dir)
    assert only.endswith("ckpt_000000002.pt") and load_checkpoint(only)["step"] == 2


# ---------------------------------------------------------------------------------------------
# 3. one run per folder
# ---------------------------------------------------------------------------------------------


def test_a_second_trainer_on_a_busy_out_dir_exits_2_and_the_csv_has_no_duplicate_steps(tmp_path):
    cfg = tiny(tmp_path, "epochs=1")
    first = Trainer(cfg)  # holds the folder's lock from construction to the end of fit
    p = subprocess.run(
        [sys.executable, "-m", "ctrlaug.train", *TINY, f"out_dir={cfg.out_dir}", "epochs=1"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and "in use by another run" in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert list_checkpoints(cfg.out_dir) == []  # the second run did no work
    first.fit()
    steps = _steps(os.path.join(cfg.out_dir, "metrics.csv"))
    assert steps == sorted(set(steps)) == [1, 2]
    # released at the end of fit: the next run may use the folder
    assert train(tiny(tmp_path, "epochs=2"))["resumed_from"].endswith("ckpt_000000002.pt")


def test_an_out_dir_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc = main([*TINY, f"out_dir={f}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]


# ---------------------------------------------------------------------------------------------
# 4. resumes apply what they are given, or refuse
# ---------------------------------------------------------------------------------------------


def test_a_run_saved_with_log_log_every_resumes_and_loads_as_it_was(tmp_path, capsys):
    """A checkpoint whose config still says log.log_every (before issue 31 renamed it log.every)
    resumes with no changed key and loads for evaluation with its value carried over."""
    from ctrlaug.eval.encoder import load_encoder
    from ctrlaug.utils.checkpoint import save_checkpoint

    cfg = tiny(tmp_path, "epochs=1", "log.every=2")
    train(cfg)
    (path,) = list_checkpoints(cfg.out_dir)
    state = load_checkpoint(path)
    log = state["config"]["log"]
    state["config"]["log"] = {("log_every" if k == "every" else k): v for k, v in log.items()}
    assert state["config"]["log"]["log_every"] == 2
    assert save_checkpoint(state, cfg.out_dir, state["step"]) == path  # the old run, checksum and all
    capsys.readouterr()
    res = train(tiny(tmp_path, "epochs=2", "log.every=2"))
    err = capsys.readouterr().err
    assert res["resumed_from"] == path and [h["step"] for h in res["history"]] == [3, 4]
    changed = [ln for ln in err.splitlines() if "changed config keys" in ln]
    assert len(changed) == 1 and changed[0].endswith("changed config keys: epochs (1 -> 2)"), err
    state = load_checkpoint(path)
    assert "log_every" in state["config"]["log"]  # still the old form on disk
    _, loaded, ckpt = load_encoder(path, None, False)
    assert ckpt == path and loaded.log.every == 2


def test_resume_with_a_new_lr_and_more_epochs_uses_them(tmp_path, capsys):
    train(tiny(tmp_path, "epochs=1", "optim.lr_milestones=null"))  # 1 epoch: no milestone
    res = train(tiny(tmp_path, "epochs=4", "optim.lr=0.01", "optim.lr_milestones=null"))
    # the paper rule on 4 epochs: /10 after epoch 3; the new lr from the first resumed step on
    assert [h["lr"] for h in res["history"]] == [0.01] * 4 + [pytest.approx(0.001)] * 2
    assert "resume applies: lr schedule" in capsys.readouterr().err
    assert res["trainer"].sched.milestones == {3: 1}


def test_resume_mid_epoch_with_another_batch_size_converts_or_refuses(tmp_path):
    from tiny import TINY as T

    base = [a for a in T if not a.startswith(("batch_size", "synthetic.train_per_class"))]
    cfg = load_config(None, [*base, "synthetic.train_per_class=8", "batch_size=4", "epochs=1",
                             "log.ckpt_every_steps=1", f"out_dir={tmp_path / 'run'}"])  # fmt: skip

    class Stop(Exception):
        pass

    def stop(step, epoch, m):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, on_step=stop)  # checkpoint at step 2: 8 of the 16 videos of epoch 0 done
    with pytest.raises(ConfigError, match="batch_size changed 4 -> 3 in the middle of epoch 0"):
        Trainer(load_config(None, [*base, "synthetic.train_per_class=8", "batch_size=3", "epochs=1",
                                   f"out_dir={cfg.out_dir}"]))  # fmt: skip
    res = train(load_config(None, [*base, "synthetic.train_per_class=8", "batch_size=8", "epochs=1",
                                   f"out_dir={cfg.out_dir}"]))  # fmt: skip
    # 8 videos done = 1 batch of 8: the epoch's second half runs as one step, not zero
    assert [h["step"] for h in res["history"]] == [3]


def test_resume_auto_with_only_unloadable_checkpoints_exits_2_unless_asked_to_start_fresh(tmp_path, capsys):
    cfg = tiny(tmp_path, "epochs=1")
    os.makedirs(cfg.out_dir)
    with open(os.path.join(cfg.out_dir, "ckpt_000000002.pt"), "wb") as f:
        f.write(b"PK\x03\x04 torn")
    rc = main([*TINY, f"out_dir={cfg.out_dir}", "epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "none can be resumed" in err[0] and "ckpt_000000002.pt" in err[0]
    res = train(tiny(tmp_path, "epochs=1", "resume=fresh"))
    assert res["resumed_from"] is None and res["steps"] == 2
    assert len(list_checkpoints(cfg.out_dir)) == 1  # the torn file was set aside, not mixed in


def test_a_checkpoint_of_another_width_falls_back_to_an_older_good_one(tmp_path, capsys):
    train(tiny(tmp_path, "epochs=1"))
    other = tiny(tmp_path, "epochs=1", "model.width=0.125", name="other")
    train(other)
    run = tmp_path / "run"
    os.replace(os.path.join(other.out_dir, "ckpt_000000002.pt"), run / "ckpt_000000009.pt")
    _rewrite_checksum(str(run / "ckpt_000000009.pt"))
    res = train(tiny(tmp_path, "epochs=2"))
    assert res["resumed_from"].endswith("ckpt_000000002.pt")
    assert "saved by another model configuration" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="another model configuration"):
        Trainer(tiny(tmp_path, "epochs=2", f"resume={run / 'ckpt_000000009.pt.unusable'}", name="x"))


# ---------------------------------------------------------------------------------------------
# 5. rewrites never tear; corruption is detected
# ---------------------------------------------------------------------------------------------


def test_kill_9_during_the_metrics_rewrite_keeps_the_history(tmp_path):
    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)
    csv_path = os.path.join(cfg.out_dir, "metrics.csv")
    before = open(csv_path).read()
    assert _steps(csv_path) == [1, 2]
    script = textwrap.dedent(
        f"""
        import csv, os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from ctrlaug.config import load_config
        from ctrlaug.engine.trainer import train

        real = csv.DictWriter.writerow
        def dying(self, row):  # the resume rewrite of metrics.csv: one row written, then killed
            real(self, row)
            os.kill(os.getpid(), signal.SIGKILL)
        csv.DictWriter.writerow = dying
        train(load_config(None, {TINY!r} + ["out_dir={cfg.out_dir}", "epochs=2"]))
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    assert open(csv_path).read() == before


def test_a_flipped_byte_is_detected_and_the_previous_checkpoint_used(tmp_path):
    cfg = tiny(tmp_path, "epochs=2")
    train(cfg)
    newest, older = list_checkpoints(cfg.out_dir)
    with open(newest, "r+b") as f:  # one byte in the middle of the file (tensor data)
        f.seek(os.path.getsize(newest) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        path, _ = load_latest(cfg.out_dir)
    assert path == older
    (found, failures) = find_resumable(cfg.out_dir)
    assert found[0] == older and [p for p, _ in failures] == [newest]
    res = train(tiny(tmp_path, "epochs=3"))
    assert res["resumed_from"] == older and [h["step"] for h in res["history"]] == [3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------
# 6. config numbers are finite; config problems are one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["optim.lr=nan", "optim.lr=inf", "model.width=nan", "rc.tau=nan", "eval.knn_t=.nan", "optim.lr=-.inf"],
)
def test_non_finite_numbers_are_config_errors(bad, capsys):
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(None, [bad])
    assert main([bad, "out_dir=/nonexistent/never"]) == 2
    assert "finite" in capsys.readouterr().err


def test_a_yaml_syntax_error_is_one_line(tmp_path, capsys):
    y = tmp_path / "bad.yaml"
    y.write_text("optim: {lr: [1e-3\nepochs: 2\n")
    assert main(["--config", str(y)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid YAML" in err[0] and "line" in err[0]
