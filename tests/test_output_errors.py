"""Issue 33, item 3: an output that cannot be written is one ``error:`` line naming the path and
the errno (exit 2), found before the command computes anything; a full disk during a write,
torch.save's included, says so."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from ctrlaug.errors import OutputError


@pytest.fixture
def not_a_dir(tmp_path):
    """An output path under a regular file: ENOTDIR for everyone, root included (a read-only
    folder does not stop root)."""
    f = tmp_path / "file"
    f.write_text("x")
    return str(f / "out")


def _one_line(capsys, path):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert path in err and "ENOTDIR" in err, err
    return err


@pytest.mark.parametrize("protocol", ["knn", "retrieval", "linear", "finetune"])
def test_evaluate_checks_its_out_folder_before_any_feature(monkeypatch, capsys, not_a_dir, protocol):
    from ctrlaug import evaluate
    from ctrlaug.eval import protocols

    def computed(*a, **k):
        pytest.fail("the datasets were built before the output folder was checked")

    monkeypatch.setattr(protocols, "build_eval_datasets", computed)
    assert evaluate.main([protocol, "--random-init", "--out", not_a_dir, "--no-progress"]) == 2
    _one_line(capsys, not_a_dir)


def test_evaluate_folds_checks_its_out_folder_first(monkeypatch, capsys, not_a_dir):
    from ctrlaug import evaluate
    from ctrlaug.eval import protocols

    def computed(*a, **k):
        pytest.fail("a fold ran before the output folder was checked")

    monkeypatch.setattr(protocols, "run", computed)
    argv = ["knn", "--random-init", "--dataset", "ucf101", "--data-root", "/nonexistent-ucf"]
    rc = evaluate.main([*argv, "--folds", "1,2", "--out", not_a_dir])
    assert rc == 2
    _one_line(capsys, not_a_dir)


def test_calibrate_checks_its_out_folder_first(monkeypatch, capsys, not_a_dir):
    from ctrlaug import calibrate

    def computed(*a, **k):
        pytest.fail("calibrated before the output folder was checked")

    monkeypatch.setattr(calibrate, "calibrate", computed)
    assert calibrate.main(["--out", not_a_dir]) == 2
    _one_line(capsys, not_a_dir)


def test_ablate_checks_its_out_folder_before_the_first_run(capsys, not_a_dir):
    from ctrlaug import ablate

    def trained(*a, **k):
        pytest.fail("a run trained before the output folder was checked")

    rc = ablate.main(["table7", "--seeds", "0", "--out", not_a_dir, "--no-plot"], train_fn=trained)
    assert rc == 2
    _one_line(capsys, not_a_dir)


class _FullDisk:
    """A file object whose writes fail as on a full disk after ``room`` bytes."""

    def __init__(self, f, room=100):
        self.f, self.room = f, room

    def write(self, b):
        self.room -= len(b)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_during_torch_save_names_the_path_and_the_reason(tmp_path, monkeypatch):
    """torch's zip writer reports a failed write as ``RuntimeError: unexpected pos``: the feature
    cache (ctrlaug.eval.features) and every report write through atomic_open, which names it."""
    from ctrlaug.utils import atomic

    real = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, *a, **k: _FullDisk(real(fd, *a, **k)))
    path = str(tmp_path / "features_train.pt")
    with pytest.raises(OutputError) as e:
        with atomic.atomic_open(path, "wb") as fh:
            torch.save({"feats": torch.zeros(10_000)}, fh)
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "no space left on the device" in msg and "ENOSPC" in msg
    assert os.listdir(tmp_path) == []  # no temp file left behind, no torn file published


def test_a_report_into_a_missing_place_is_one_line(not_a_dir):
    from ctrlaug.reports import write_report

    with pytest.raises(OutputError, match="ENOTDIR"):
        write_report(os.path.join(not_a_dir, "eval_knn"), {"a": 1}, "x")
