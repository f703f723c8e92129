"""Every atomic rewrite the docs promise (docs/training.md "Atomic files"), under a failure injected
into the lowest write: the file object's ``write`` dying part way (disk full after a few bytes),
``os.fsync`` failing after everything was written, or ``os.replace`` failing at the rename.

For each writer -- reports (``write_json``/``write_text``), ``metrics.csv`` (the resume rewrite of
``MetricWriter``), checkpoints (``save_checkpoint``) and exports (``ctrlaug.export``) -- the error
must reach the caller, the old file must be intact byte for byte, and no temp file may be left.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

import ctrlaug.utils.atomic as atomic_mod
import ctrlaug.utils.checkpoint as ckpt_mod

FAILURES = ("write", "fsync", "replace")


class _DyingFile:
    """A file object whose writes stop with ENOSPC once ``budget`` bytes went through."""

    def __init__(self, f, budget: int):
        self._f, self._left = f, budget

    def write(self, data):
        n = max(0, min(len(data), self._left))
        if n:
            self._f.write(data[:n])
            self._left -= n
        if n < len(data):
            self._f.flush()
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _inject(monkeypatch, how: str, budget: int = 10) -> None:
    """Make the next atomic write fail at ``how``: 'write' (after ``budget`` bytes), 'fsync', 'replace'."""

    def boom(*a, **k):
        raise OSError(errno.EIO, f"injected {how} failure")

    if how == "write":
        real_fdopen, real_open = os.fdopen, open
        monkeypatch.setattr(atomic_mod.os, "fdopen", lambda *a, **k: _DyingFile(real_fdopen(*a, **k), budget))
        # checkpoints write their temp file with open() + torch.save(state, f)
        monkeypatch.setattr(
            ckpt_mod, "open", lambda *a, **k: _DyingFile(real_open(*a, **k), budget), raising=False
        )
    elif how == "fsync":
        monkeypatch.setattr(os, "fsync", boom)
    else:
        monkeypatch.setattr(os, "replace", boom)


def _fails_with_the_injected_error(fn) -> None:
    """``fn()`` raises, and the injected OSError is the error or in its chain (torch.save re-raises a
    failed stream write as a RuntimeError from the zip writer, with the OSError as its context)."""
    with pytest.raises(Exception) as info:
        fn()
    e, chain = info.value, []
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(x, OSError) and "injected" in str(x) for x in chain), repr(info.value)


def _snapshot(folder) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def _tmp_files(folder) -> list[str]:
    return [f for f in _snapshot(folder) if f.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", FAILURES)
@pytest.mark.parametrize("writer", ["json", "text"])
def test_a_report_rewrite_that_fails_keeps_the_old_report(tmp_path, monkeypatch, how, writer):
    from ctrlaug.reports import write_json, write_text

    path = str(tmp_path / ("r.json" if writer == "json" else "r.md"))
    write = (lambda: write_json(path, {"top1": 12.5, "rows": list(range(50))})) if writer == "json" else None
    if writer == "text":
        write = lambda: write_text(path, "# new report\n" + "line\n" * 50)  # noqa: E731
        write_text(path, "# old report\nkept\n")
    else:
        write_json(path, {"top1": 99.0})
    before = _snapshot(tmp_path)
    _inject(monkeypatch, how)
    with pytest.raises(OSError, match="injected|ENOSPC"):  # OutputError names the errno
        write()
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before and not _tmp_files(tmp_path)
    write()  # non-vacuous: without the failure the same call does replace the file
    assert _snapshot(tmp_path) != before


# ------------------------------------------------------------------------------------------------
# metrics.csv: the rewrite a resume does
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", FAILURES)
def test_a_metrics_rewrite_that_fails_keeps_the_history(tmp_path, monkeypatch, how):
    from ctrlaug.utils.metrics import MetricWriter

    out = str(tmp_path / "run")
    w = MetricWriter(out, ["loss"], tensorboard=False)
    for step in range(1, 6):
        w.log(step, 0, {"loss": 1.0 / step})
    w.close()
    before = _snapshot(out)
    _inject(monkeypatch, how, budget=20)  # dies inside the header or the first rows
    with pytest.raises(OSError, match="injected|ENOSPC"):  # OutputError names the errno
        MetricWriter(out, ["loss"], tensorboard=False, resume_step=3)
    monkeypatch.undo()
    assert _snapshot(out) == before and not _tmp_files(out)
    MetricWriter(out, ["loss"], tensorboard=False, resume_step=3).close()
    assert _snapshot(out) != before  # non-vacuous: the rewrite cuts rows 4 and 5


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def _state(v: float) -> dict:
    return {
        "model": {"w": torch.full((64, 64), v)},
        "optimizer": {},
        "epoch": 1,
        "step": int(v),
        "config": {},
    }


@pytest.mark.parametrize("how", FAILURES)
def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoint_the_newest(tmp_path, monkeypatch, how):
    out = str(tmp_path / "run")
    ckpt_mod.save_checkpoint(_state(2.0), out, 2)
    before = _snapshot(out)
    _inject(monkeypatch, how, budget=100)  # torch.save's zip stream dies after 100 bytes
    _fails_with_the_injected_error(lambda: ckpt_mod.save_checkpoint(_state(4.0), out, 4))
    monkeypatch.undo()
    after = _snapshot(out)
    assert not _tmp_files(out) and "ckpt_000000004.pt" not in after
    for name in ("ckpt_000000002.pt", "ckpt_000000002.pt.sha256"):
        assert after[name] == before[name], name
    assert ckpt_mod.list_checkpoints(out) == [os.path.join(out, "ckpt_000000002.pt")]
    found, failures = ckpt_mod.find_resumable(out)
    assert found[0].endswith("ckpt_000000002.pt") and failures == []
    assert torch.equal(found[1]["model"]["w"], _state(2.0)["model"]["w"])


@pytest.mark.parametrize("how", ["write", "fsync"])
def test_a_checkpoint_rewrite_of_the_same_step_that_fails_keeps_the_old_file(tmp_path, monkeypatch, how):
    out = str(tmp_path / "run")
    ckpt_mod.save_checkpoint(_state(2.0), out, 2)
    before = _snapshot(out)
    _inject(monkeypatch, how, budget=100)
    _fails_with_the_injected_error(lambda: ckpt_mod.save_checkpoint(_state(3.0), out, 2))
    monkeypatch.undo()
    assert _snapshot(out) == before and not _tmp_files(out)
    state = ckpt_mod.load_checkpoint(os.path.join(out, "ckpt_000000002.pt"))  # checksum still matches
    assert torch.equal(state["model"]["w"], _state(2.0)["model"]["w"])


# ------------------------------------------------------------------------------------------------
# exports
# ------------------------------------------------------------------------------------------------


def _dying_torch_save(monkeypatch, budget: int = 100):
    """torch.save that writes ``budget`` bytes of the real serialisation, then fails (disk full)."""
    import io

    real = torch.save

    def save(obj, f, *a, **k):
        buf = io.BytesIO()
        real(obj, buf, *a, **k)
        if isinstance(f, str | os.PathLike):
            with open(f, "wb") as fh:
                fh.write(buf.getvalue()[:budget])
        else:
            f.write(buf.getvalue()[:budget])
        raise OSError(errno.ENOSPC, "injected: no space left on device")

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("how", ["write", "replace"])
def test_an_export_that_fails_keeps_the_old_export_and_leaves_no_temp_file(tmp_path, monkeypatch, how):
    from test_eval_export import _fake_run

    from ctrlaug.eval.export import export

    ckpt = _fake_run(tmp_path / "run", [])
    folder = tmp_path / "exp"
    out = str(folder / "enc.pt")
    export(ckpt, out)
    before = _snapshot(folder)
    if how == "write":
        _dying_torch_save(monkeypatch)
    else:
        _inject(monkeypatch, "replace")
    with pytest.raises(OSError, match="injected|ENOSPC"):  # OutputError names the errno
        export(ckpt, out)
    monkeypatch.undo()
    assert not _tmp_files(folder), f"temp files left: {_tmp_files(folder)}"
    assert _snapshot(folder) == before, "the old export changed"


@pytest.mark.parametrize("how", ["write", "replace"])
def test_an_export_that_fails_keeps_the_old_export_byte_for_byte(tmp_path, monkeypatch, how):
    """The published export is never torn, whatever fails mid-write."""
    from test_eval_export import _fake_run

    from ctrlaug.eval.export import export

    ckpt = _fake_run(tmp_path / "run", [])
    folder = tmp_path / "exp"
    out = str(folder / "enc.pt")
    export(ckpt, out)
    with open(out, "rb") as f:
        old = f.read()
    if how == "write":
        _dying_torch_save(monkeypatch)
    else:
        _inject(monkeypatch, "replace")
    with pytest.raises(OSError, match="injected|ENOSPC"):  # OutputError names the errno
        export(ckpt, out)
    monkeypatch.undo()
    with open(out, "rb") as f:
        assert f.read() == old


# ------------------------------------------------------------------------------------------------
# durability: the temp file's data is fsynced before it is renamed over the target
# ------------------------------------------------------------------------------------------------


def _record_fsync_and_replace(monkeypatch) -> list[tuple[str, str]]:
    """Record ('fsync', path of the fd) and ('replace', destination) in call order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", f"{src} -> {dst}"))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_before_rename(events, target: str) -> bool:
    tmp = f"{target}.{os.getpid()}.tmp"
    renames = [i for i, (k, v) in enumerate(events) if k == "replace" and v == f"{tmp} -> {target}"]
    synced = [i for i, (k, v) in enumerate(events) if k == "fsync" and v == tmp]
    return len(renames) == 1 and any(i < renames[0] for i in synced)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name an fd's file")
def test_reports_metrics_and_checkpoints_fsync_the_temp_file_before_the_rename(tmp_path, monkeypatch):
    from ctrlaug.reports import write_json
    from ctrlaug.utils.metrics import MetricWriter

    events = _record_fsync_and_replace(monkeypatch)
    report = str(tmp_path / "r.json")
    write_json(report, {"a": 1})
    assert _synced_before_rename(events, report), events
    events.clear()
    MetricWriter(str(tmp_path), ["loss"], tensorboard=False).close()
    assert _synced_before_rename(events, str(tmp_path / "metrics.csv")), events
    events.clear()
    final = ckpt_mod.save_checkpoint(_state(2.0), str(tmp_path), 2)
    assert _synced_before_rename(events, final), events
    assert _synced_before_rename(events, final + ".sha256"), events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name an fd's file")
def test_an_export_fsyncs_its_temp_file_before_the_rename(tmp_path, monkeypatch):
    from test_eval_export import _fake_run

    from ctrlaug.eval.export import export

    ckpt = _fake_run(tmp_path / "run", [])
    out = str(tmp_path / "enc.pt")
    events = _record_fsync_and_replace(monkeypatch)
    export(ckpt, out)
    assert _synced_before_rename(events, out), events
