"""Issue 33, item 8 (prepare's half) and item 3 for prepare: an output overwritten in place keeps
its size and its header, so a resumed prepare checks what it recorded (the SHA-256) or decodes it,
never the size alone; an unwritable DST is one line, exit 2, before anything is transcoded."""

from __future__ import annotations

import csv
import os
import struct

import pytest
from data_fixtures import VideoPool

from ctrlaug.data import prepare as prep
from ctrlaug.data.decode import VideoReader
from ctrlaug.data.prepare import MANIFEST, PrepareSettings, main, prepare

pytest.importorskip("av", reason="PyAV is a test dependency (pip install av)")

SET = PrepareSettings(short_side=32)


def _zero_middle(path) -> None:
    """Zero the middle half of the mp4's media data in place: same size, the header (``moov``)
    untouched, so a probe still reads the declared frame count."""
    data = bytearray(path.read_bytes())
    n, pos = len(data), 0
    while pos + 8 <= n:  # top-level boxes: 32-bit size + type
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"mdat":
            a, b = pos + 8, pos + size
            data[a + (b - a) // 4 : a + 3 * (b - a) // 4] = bytes(3 * (b - a) // 4 - (b - a) // 4)
            break
        assert size >= 8
        pos += size
    else:
        pytest.fail(f"{path}: no mdat box")
    path.write_bytes(bytes(data))
    assert len(data) == n


@pytest.fixture
def prepared(tmp_path):
    pool = VideoPool(str(tmp_path / "pool"), n=2, frames=30)
    src, dst = tmp_path / "src", tmp_path / "dst"
    for k in range(2):
        pool.copy(str(src / "train" / "c" / f"v{k}.mp4"))
    prepare(src, dst, "folder", SET, progress=False)
    return src, dst, dst / "train" / "c"


def _status(rows) -> dict:
    return {os.path.basename(r["output"]): r["status"] for r in rows}


def test_a_same_size_output_with_its_middle_zeroed_is_redone(prepared):
    src, dst, out = prepared
    good = (out / "v1.mp4").read_bytes()
    _zero_middle(out / "v1.mp4")
    rows = prepare(src, dst, "folder", SET, progress=False)
    assert _status(rows) == {"v0.mp4": "skipped", "v1.mp4": "done"}
    assert (out / "v1.mp4").read_bytes() == good  # the same encode again, whole
    with VideoReader(str(out / "v1.mp4")) as v:
        assert v.get(range(30)).shape[0] == 30


def test_without_a_recorded_checksum_the_output_is_decoded(prepared):
    """A manifest of an earlier version (no sha256 column), or none at all: the output is decoded in
    full, and a damaged one redone; a good one gets its checksum recorded."""
    src, dst, out = prepared
    with open(dst / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("sha256")
    with open(dst / MANIFEST, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0]])
        w.writeheader()
        w.writerows(rows)
    _zero_middle(out / "v1.mp4")
    decoded = []
    real = prep._count_decoded
    prep_count = lambda p: decoded.append(os.path.basename(p)) or real(p)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prep, "_count_decoded", prep_count)
        rows = prepare(src, dst, "folder", SET, progress=False)
    assert "v0.mp4" in decoded and _status(rows) == {"v0.mp4": "skipped", "v1.mp4": "done"}
    assert all(r["sha256"] for r in rows)
    with VideoReader(str(out / "v1.mp4")) as v:
        assert v.get(range(30)).shape[0] == 30


def test_prepare_into_an_unwritable_dst_is_one_line(prepared, tmp_path, capsys, monkeypatch):
    src, _, _ = prepared
    f = tmp_path / "file"
    f.write_text("x")
    dst = str(f / "dst")

    def transcoded(*a, **k):
        pytest.fail("a video was transcoded before DST was checked")

    monkeypatch.setattr(prep, "_run_job", transcoded)
    assert main([str(src), dst, "--format", "folder", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "ENOTDIR" in err and str(f) in err
