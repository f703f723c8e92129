"""Each resume rule of docs/training.md ("What a resume applies"), one setting changed at a time.

A run of 4 epochs x 2 steps (TINY: 8 videos, batch 4; lr 1e-3, milestones [2, 3], gamma 0.1) is
interrupted after step 5 (its newest checkpoint is the end of epoch 2, after the first decay),
or after step 3, and resumed with exactly one key changed. Applied keys must be in effect from
the first resumed step (the lr the optimizer uses, the optimizer's param groups); refused keys
must stop the run with exit 2 and one ``error:`` line that names the key, before any step.
The expected lr of every step is written out here from the documented schedule.
"""

from __future__ import annotations

import os
import warnings

import pytest
from tiny import TINY

from ctrlaug.config import load_config
from ctrlaug.engine.trainer import train
from ctrlaug.train import main
from ctrlaug.utils.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["epochs=4", "optim.lr=0.001", "optim.lr_milestones=[2,3]", "optim.lr_gamma=0.1"]


@pytest.fixture(autouse=True)
def _quiet_fallback_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ctrlaug: no fused backend", category=RuntimeWarning)
        yield


class _Stop(Exception):
    pass


def _args(out_dir, settings: list[str]) -> list[str]:
    return [*TINY, f"out_dir={out_dir}", *settings]


def _with(settings: list[str], key_value: str) -> list[str]:
    """``settings`` with exactly one key set to a new value (replaced, or added)."""
    key = key_value.split("=", 1)[0]
    return [s for s in settings if s.split("=", 1)[0] != key] + [key_value]


def _interrupted(tmp_path, stop_after: int, settings: list[str] = BASE) -> str:
    """Run ``settings`` and kill it (an exception) right after step ``stop_after``, before that
    step's own checkpoint would be written."""
    out_dir = str(tmp_path / "run")

    def stop(step, epoch, m):
        if step == stop_after:
            raise _Stop

    with pytest.raises(_Stop):
        train(load_config(None, _args(out_dir, settings)), on_step=stop)
    return out_dir


def _resume(out_dir, settings: list[str], capsys) -> tuple[dict, str]:
    capsys.readouterr()
    res = train(load_config(None, _args(out_dir, settings)))
    return res, capsys.readouterr().err


def _lrs(res) -> dict[int, float]:
    return {h["step"]: h["lr"] for h in res["history"]}


def _approx(d: dict[int, float]) -> dict[int, object]:
    return {k: pytest.approx(v, rel=1e-12) for k, v in d.items()}


# ------------------------------------------------------------------------------------------------
# applied
# ------------------------------------------------------------------------------------------------


def test_a_plain_resume_continues_the_uninterrupted_run_and_applies_nothing(tmp_path, capsys):
    whole = train(load_config(None, _args(tmp_path / "whole", BASE)))
    out_dir = _interrupted(tmp_path, 5)
    res, err = _resume(out_dir, BASE, capsys)
    assert res["resumed_from"].endswith("ckpt_000000004.pt")
    assert "resume applies" not in err and "changed config keys" not in err
    # the documented schedule: 1e-3 for epochs 0-1, /10 after epoch 2, /10 again after epoch 3
    assert _lrs(res) == _approx({5: 1e-4, 6: 1e-4, 7: 1e-5, 8: 1e-5})
    for h, w in zip(res["history"], whole["history"][4:]):
        assert (h["step"], h["lr"], h["loss"]) == (w["step"], w["lr"], w["loss"])  # bit for bit


def test_a_new_lr_alone_is_applied_at_the_schedules_value(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 5)
    res, err = _resume(out_dir, _with(BASE, "optim.lr=0.004"), capsys)
    # one decay already passed (milestone 2): 0.004 * 0.1 now, * 0.1 again after epoch 3
    assert _lrs(res) == _approx({5: 4e-4, 6: 4e-4, 7: 4e-5, 8: 4e-5})
    t = res["trainer"]
    assert t.sched.base_lrs == [0.004] and t.optimizer.param_groups[0]["initial_lr"] == 0.004
    assert "resume applies: lr schedule (lr [0.001] -> [0.004]" in err


def test_new_milestones_alone_are_applied(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 5)
    res, err = _resume(out_dir, _with(BASE, "optim.lr_milestones=[3]"), capsys)
    # milestone 2 is gone: back to the undecayed lr until epoch 3
    assert _lrs(res) == _approx({5: 1e-3, 6: 1e-3, 7: 1e-4, 8: 1e-4})
    assert res["trainer"].sched.milestones == {3: 1}
    assert "milestones [2, 3] -> [3]" in err


def test_a_new_gamma_alone_is_applied(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 5)
    res, err = _resume(out_dir, _with(BASE, "optim.lr_gamma=0.5"), capsys)
    assert _lrs(res) == _approx({5: 5e-4, 6: 5e-4, 7: 2.5e-4, 8: 2.5e-4})
    assert res["trainer"].sched.gamma == 0.5 and "gamma 0.1 -> 0.5" in err


def test_more_epochs_alone_move_the_paper_rule_milestone(tmp_path, capsys):
    paper = _with(BASE, "optim.lr_milestones=null")  # 4 epochs: /10 after epoch round(0.75 * 4) = 3
    out_dir = _interrupted(tmp_path, 5, paper)
    res, err = _resume(out_dir, _with(paper, "epochs=5"), capsys)  # 5 epochs: after round(3.75) = 4
    assert _lrs(res) == _approx({5: 1e-3, 6: 1e-3, 7: 1e-3, 8: 1e-3, 9: 1e-4, 10: 1e-4})
    assert res["trainer"].sched.milestones == {4: 1} and "milestones [3] -> [4]" in err


def test_more_epochs_alone_keep_explicit_milestones(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 5)
    res, err = _resume(out_dir, _with(BASE, "epochs=5"), capsys)
    assert _lrs(res) == _approx({5: 1e-4, 6: 1e-4, 7: 1e-5, 8: 1e-5, 9: 1e-5, 10: 1e-5})
    assert res["trainer"].sched.milestones == {2: 1, 3: 1} and "resume applies" not in err
    assert "changed config keys: epochs (4 -> 5)" in err


def test_a_new_weight_decay_alone_is_applied(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 3)
    res, err = _resume(out_dir, _with(BASE, "optim.weight_decay=0.05"), capsys)
    t = res["trainer"]
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.05]
    assert _lrs(res) == _approx({3: 1e-3, 4: 1e-3, 5: 1e-4, 6: 1e-4, 7: 1e-5, 8: 1e-5})  # lr untouched
    assert "resume applies: weight_decay 1e-05 -> 0.05" in err


def test_a_new_mi_lr_alone_is_applied_to_the_statistics_networks_optimizer(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 3)
    res, err = _resume(out_dir, _with(BASE, "mi.lr=0.005"), capsys)
    t = res["trainer"]
    assert [g["lr"] for g in t.mi_optimizer.param_groups] == [0.005]
    assert _lrs(res) == _approx({3: 1e-3, 4: 1e-3, 5: 1e-4, 6: 1e-4, 7: 1e-5, 8: 1e-5})
    assert "resume applies: mi.lr 0.001 -> 0.005" in err


def test_a_new_batch_size_dividing_the_videos_done_continues_the_epoch_at_the_right_place(tmp_path, capsys):
    every = _with(BASE, "log.ckpt_every_steps=1")
    out_dir = _interrupted(tmp_path, 4, every)  # newest checkpoint: step 3, 4 of epoch 1's 8 videos done
    res, err = _resume(out_dir, _with(every, "batch_size=2"), capsys)
    assert res["resumed_from"].endswith("ckpt_000000003.pt")
    # 4 videos done = 2 batches of 2: epoch 1 has 2 steps left, then 4 steps per epoch
    assert [h["epoch"] for h in res["history"]] == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert res["trainer"].cfg.batch_size == 2
    assert "batch_size 4 -> 2 (4 videos of this epoch done)" in err


def test_another_key_alone_takes_effect_and_is_named(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 3)
    res, err = _resume(out_dir, _with(BASE, "td.weight=0.02"), capsys)
    assert res["trainer"].obj.td.weight == 0.02
    assert "changed config keys: td.weight (0.01 -> 0.02)" in err and "resume applies" not in err


# ------------------------------------------------------------------------------------------------
# refused: exit 2, one line naming the key, nothing trained
# ------------------------------------------------------------------------------------------------


def _refused(out_dir, settings, capsys) -> str:
    before = list_checkpoints(out_dir)
    capsys.readouterr()
    rc = main(_args(out_dir, settings))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert list_checkpoints(out_dir) == before  # no step ran
    return err[0]


def test_fewer_epochs_than_done_alone_are_refused(tmp_path, capsys):
    out_dir = _interrupted(tmp_path, 5)  # epoch 2 finished
    line = _refused(out_dir, _with(BASE, "epochs=1"), capsys)
    assert "epochs=1" in line and "already finished epoch 2" in line


def test_a_batch_size_not_dividing_the_videos_done_alone_is_refused(tmp_path, capsys):
    every = _with(BASE, "log.ckpt_every_steps=1")
    out_dir = _interrupted(tmp_path, 4, every)  # newest checkpoint: step 3, 4 videos of epoch 1 done
    line = _refused(out_dir, _with(every, "batch_size=3"), capsys)
    assert "batch_size changed 4 -> 3 in the middle of epoch 1" in line
    assert os.path.exists(os.path.join(out_dir, "ckpt_000000003.pt"))
