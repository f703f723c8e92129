"""A run folder that cannot be turned against its user, and a run that survives the cluster
(issue 33): planted links, divergence, a damaged metrics.csv, SIGTERM, history set aside, a
missing checksum. Each test fails on the code before that issue."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny import TINY

from ctrlaug.config import load_config
from ctrlaug.engine.trainer import Trainer, train
from ctrlaug.train import main
from ctrlaug.utils.checkpoint import list_checkpoints, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
ENV["PYTHONPATH"] = ROOT + os.pathsep + ENV.get("PYTHONPATH", "")


def tiny(tmp_path, *extra: str, name: str = "run"):
    return load_config(None, [*TINY, f"out_dir={tmp_path / name}", *extra])


def _steps(path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _victim(tmp_path) -> tuple[str, bytes]:
    v = tmp_path / "victim.txt"
    data = b"precious bytes of another file\n"
    v.write_bytes(data)
    return str(v), data


# ---- 1. planted links ----------------------------------------------------------------------------


def test_a_planted_lock_link_is_refused_in_one_line_and_its_target_is_untouched(tmp_path, capsys):
    victim, data = _victim(tmp_path)
    out = tmp_path / "shared_run"
    out.mkdir()
    os.symlink(victim, out / ".lock")
    rc = main([*TINY, f"out_dir={out}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    assert "symbolic link" in err[0] and ".lock" in err[0]
    assert open(victim, "rb").read() == data
    assert list_checkpoints(str(out)) == []


@pytest.mark.parametrize("name", ["metrics.csv", "config.yaml", "provenance.json"])
def test_a_planted_log_link_never_writes_through_to_its_target(tmp_path, name, capsys):
    victim, data = _victim(tmp_path)
    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)  # a real run folder, then a link planted in place of one of its files
    path = os.path.join(cfg.out_dir, name)
    os.remove(path)
    os.symlink(victim, path)
    capsys.readouterr()
    rc = main([*TINY, f"out_dir={cfg.out_dir}", "epochs=2"])
    err = capsys.readouterr().err
    assert open(victim, "rb").read() == data
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "symbolic link" in lines[0] and name in lines[0]
    assert load_checkpoint(list_checkpoints(cfg.out_dir)[0])["step"] == 2  # no work was done


def test_a_planted_tensorboard_folder_link_is_refused_before_any_work(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(elsewhere, out / "tb")
    rc = main([*TINY, f"out_dir={out}", "log.tensorboard=true"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "symbolic link" in lines[0] and "tb" in lines[0]
    assert os.listdir(elsewhere) == [] and list_checkpoints(str(out)) == []


def test_atomic_writes_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    from ctrlaug.reports import write_json
    from ctrlaug.utils.provenance import write_provenance

    victim, data = _victim(tmp_path)
    for name in ("r.json", "provenance.json"):
        os.symlink(victim, tmp_path / name)
    write_json(str(tmp_path / "r.json"), {"a": 1})
    write_provenance(str(tmp_path))
    assert open(victim, "rb").read() == data
    assert not os.path.islink(tmp_path / "r.json") and not os.path.islink(tmp_path / "provenance.json")


def test_a_planted_checkpoint_temp_link_is_replaced_not_written_through(tmp_path):
    from ctrlaug.utils.checkpoint import save_checkpoint

    victim, data = _victim(tmp_path)
    out = tmp_path / "ck"
    out.mkdir()
    os.symlink(victim, out / f"ckpt_000000001.pt.{os.getpid()}.tmp")
    save_checkpoint({"w": torch.ones(2)}, str(out), 1)
    assert open(victim, "rb").read() == data
    assert torch.equal(load_checkpoint_plain(str(out / "ckpt_000000001.pt"))["w"], torch.ones(2))


def load_checkpoint_plain(path):
    return torch.load(path, weights_only=True)


# ---- 2. divergence -------------------------------------------------------------------------------


def test_divergence_names_a_good_checkpoint_and_following_the_advice_recovers(tmp_path, capsys):
    cfg = tiny(tmp_path, "epochs=6", "optim.lr=1e9", "log.ckpt_every_steps=1", "log.keep_checkpoints=10")
    rc = main([*TINY, f"out_dir={cfg.out_dir}", "epochs=6", "optim.lr=1e9", "log.ckpt_every_steps=1"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(err) == 1, err
    cmd = re.search(r"(python -m ctrlaug\.train .*)$", err[0])
    assert cmd, err[0]
    for p in list_checkpoints(cfg.out_dir):  # nothing written inside a bad streak or non-finite
        st = load_checkpoint(p)
        assert st["bad_streak"] == 0
    args = shlex.split(cmd.group(1))[3:]
    assert any(a.startswith("optim.lr=") and float(a.split("=")[1]) <= 1e-3 for a in args)
    rc2 = main(args)  # the advice, word for word
    assert rc2 == 0, capsys.readouterr().err[-2000:]
    st = load_checkpoint(list_checkpoints(cfg.out_dir)[0])
    assert st["step"] == 12 and st["epoch"] == 6
    assert max(float(t.abs().max()) for t in st["model"].values() if t.is_floating_point()) < 1e3


def test_no_checkpoint_is_written_inside_a_bad_streak(tmp_path, capsys):
    cfg = tiny(
        tmp_path, "epochs=2", "log.ckpt_every_steps=1", "log.keep_checkpoints=10", "optim.max_bad_steps=3"
    )
    tr = Trainer(cfg)
    w = next(tr.obj.encoder.parameters())
    w.register_hook(lambda g: g * float("inf") if tr.step in (1, 2) else g)  # steps 2 and 3 skipped
    tr.fit()
    assert "no checkpoint inside a run of" in capsys.readouterr().err
    steps = sorted(load_checkpoint(p)["step"] for p in list_checkpoints(cfg.out_dir))
    assert 2 not in steps and 3 not in steps and steps[-1] == 4
    assert all(load_checkpoint(p)["bad_streak"] == 0 for p in list_checkpoints(cfg.out_dir))


def test_the_recovery_checkpoint_skips_finite_but_diverged_weights(tmp_path):
    cfg = tiny(tmp_path, "epochs=2", "log.ckpt_every_steps=1", "log.keep_checkpoints=10")
    tr = Trainer(cfg)

    def blow(step, epoch, m):
        if step == 2:
            with torch.no_grad():
                next(tr.obj.encoder.parameters()).mul_(1e9)  # finite, but diverged

    tr.on_step = blow
    tr.fit()
    tr.trouble_step = 4
    assert tr.recovery_checkpoint().endswith("ckpt_000000001.pt")


# ---- 5. a damaged metrics.csv tail ---------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [b"\x00" * 300, b"garbage that is not a row\n", b"1"],  # power loss, a stray line, a row torn in its step
)
def test_resume_repairs_a_damaged_metrics_tail_and_sets_it_aside(tmp_path, damage, capsys):
    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)
    path = os.path.join(cfg.out_dir, "metrics.csv")
    with open(path, "ab") as f:
        f.write(damage)
    res = train(tiny(tmp_path, "epochs=2"))
    assert res["resumed_from"].endswith("ckpt_000000002.pt")
    assert _steps(path) == [1, 2, 3, 4]  # no duplicate, nothing lost
    err = capsys.readouterr().err
    assert "set aside as" in err
    aside = [f for f in os.listdir(cfg.out_dir) if f.startswith("metrics.csv.damaged")]
    assert len(aside) == 1
    assert open(os.path.join(cfg.out_dir, aside[0]), "rb").read().endswith(damage)


# ---- 6. SIGTERM / SIGUSR1 ------------------------------------------------------------------------


def _wait_for_rows(path: str, n: int, proc, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        if os.path.exists(path) and len(_steps(path)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("no metric rows in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_real_signal_stops_after_the_step_with_a_checkpoint_and_resume_continues(tmp_path, sig):
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "ctrlaug.train", *TINY, f"out_dir={out}", "epochs=50"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    metrics = str(out / "metrics.csv")
    _wait_for_rows(metrics, 3, proc, time.monotonic() + 300)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-2000:]
    line = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
    assert len(line) == 1 and signal.Signals(sig).name in line[0] and "resume=auto" in line[0]
    stopped = int(re.search(r"stopped after step (\d+)", line[0]).group(1))
    newest = list_checkpoints(str(out))[0]
    assert load_checkpoint(newest)["step"] == stopped and stopped < 100
    # the same command continues from that step
    p = subprocess.run(cmd[:-1] + ["epochs=" + str(stopped // 2 + 2)], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resumed from {newest}" in p.stderr
    steps = _steps(metrics)
    assert steps == sorted(set(steps)) and steps[-1] == 2 * (stopped // 2 + 2)


# ---- 7. history set aside, never erased ----------------------------------------------------------


def test_resume_fresh_sets_the_old_metrics_aside_beside_the_old_checkpoints(tmp_path, capsys):
    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)
    old = open(os.path.join(cfg.out_dir, "metrics.csv")).read()
    train(tiny(tmp_path, "epochs=1", "resume=fresh"))
    (aside,) = [d for d in os.listdir(cfg.out_dir) if d.startswith("set_aside_")]
    files = os.listdir(os.path.join(cfg.out_dir, aside))
    assert "metrics.csv" in files and any(f.startswith("ckpt_") for f in files)
    assert open(os.path.join(cfg.out_dir, aside, "metrics.csv")).read() == old


def test_metrics_without_a_checkpoint_are_set_aside_not_wiped(tmp_path, capsys):
    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)
    for p in list_checkpoints(cfg.out_dir):
        os.remove(p)
        os.remove(p + ".sha256")
    old = open(os.path.join(cfg.out_dir, "metrics.csv")).read()
    train(cfg)
    err = capsys.readouterr().err
    assert "moved to" in err
    (aside,) = [d for d in os.listdir(cfg.out_dir) if d.startswith("set_aside_")]
    assert open(os.path.join(cfg.out_dir, aside, "metrics.csv")).read() == old


# ---- 8. a checkpoint without its checksum --------------------------------------------------------


def test_a_missing_checksum_warns_and_resume_prefers_a_verified_checkpoint(tmp_path, capsys):
    cfg = tiny(tmp_path, "epochs=2", "log.keep_checkpoints=3")
    train(cfg)
    newest, older = list_checkpoints(cfg.out_dir)[:2]
    os.remove(newest + ".sha256")
    with open(newest, "r+b") as f:  # a flip the missing checksum cannot reveal
        f.seek(os.path.getsize(newest) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    tr = Trainer(tiny(tmp_path, "epochs=3"))
    tr.maybe_resume()
    assert tr.resumed_from == older
    assert "no checksum file" in capsys.readouterr().err
    tr.release()


# ---- the cpp path a run started on is the path it resumes on (issue 29, bitwise resume) ---------


def test_a_resume_pins_the_cpp_path_the_checkpoint_was_written_with(tmp_path, monkeypatch):
    from ctrlaug import ops

    cfg = tiny(tmp_path, "epochs=1")
    train(cfg)
    st = load_checkpoint(list_checkpoints(cfg.out_dir)[0])
    assert st["cpu_isa"] == ops.cpu_isa_chosen()
    # the checkpoint says "portable" (not what auto picks here): the resume must pin it
    monkeypatch.delenv("CTRLAUG_CPU_ISA", raising=False)
    path = list_checkpoints(cfg.out_dir)[0]
    st["cpu_isa"] = "portable"
    torch.save(st, path)
    os.remove(path + ".sha256")
    res = train(tiny(tmp_path, "epochs=2"))
    assert res["resumed_from"] == path
    assert ops.cpu_isa_chosen() == "portable" and os.environ["CTRLAUG_CPU_ISA"] == "portable"
    assert load_checkpoint(list_checkpoints(cfg.out_dir)[0])["cpu_isa"] == "portable"


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` under ``parent`` (read from /proc)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(d)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker's pid in /proc")
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ctrlaug.train", *TINY, f"out_dir={out}", "epochs=50"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(str(out / "metrics.csv"), 3, proc, time.monotonic() + 600)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # rank 1 only: the flag is reduced over the ranks after each step
    _, err = proc.communicate(timeout=600)
    steps = [int(m) for m in re.findall(r"stopped after step (\d+)", err)]
    assert len(steps) == 2 and steps[0] == steps[1], err[-3000:]
    newest = list_checkpoints(str(out))[0]
    st = load_checkpoint(newest)
    assert st["step"] == steps[0] and st["world_size"] == 2
