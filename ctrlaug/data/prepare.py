"""Transcode a video dataset to the training resolution, once, so that training decodes less.

    python -m ctrlaug.data.prepare SRC DST --format ucf101 [--short-side 128] [--workers N]

Every video the format lists (all splits, all official folds) is re-encoded to h264 in mp4 with the
short side at ``--short-side`` (never enlarged; both sides rounded to even numbers for 4:2:0),
every frame kept, at the source frame rate. Keyframes every ``--gop`` frames and x264's
``fastdecode`` tuning keep seeks short and decoding cheap (docs/data.md, "Preparing a dataset").
Outputs keep the source's relative path with the extension ``.mp4``; split and annotation files
(``.txt .csv .json .tsv .lst``) are copied beside them (a ``csv``-format list gets its ``path``
column rewritten to the new names), so training reads DST with the same ``--format``.

* parallel over processes, with a progress line and an ETA on stderr;
* resumable: an output is written as ``<name>.part``, verified, fsynced, then renamed; a second
  run checks every existing output against the manifest (size, then the SHA-256 recorded when it
  was written; an output without a recorded checksum is decoded in full and its frame count
  compared with the manifest's or the source's) and skips the ones that pass, redoing the others
  (a file truncated, emptied or overwritten in place since); leftover ``.part`` files of a killed
  run are removed; worker processes die with the run;
* verified: each output is decoded in full before the rename, and must hold the source's frame
  count within 1;
* manifest: ``DST/prepare_manifest.csv`` lists source, output, status, frames, source frames, fps,
  size, reason and the output's SHA-256 (rewritten atomically while the run goes);
* bad sources (empty, truncated, not a video, ...) and listed-but-missing ones are listed in the
  manifest and the summary (``BAD<TAB>path<TAB>reason``) and never stop the run; SRC is only read;
* DST inside SRC (or SRC inside DST), or an existing DST holding other files, is refused with one
  error; a DST prepared earlier is resumed only with the same SRC, format and settings.

Exit status: 0 when every listed video was prepared, 1 when some were bad or missing, 2 when the
run was refused or the dataset could not be read.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from fractions import Fraction

from ctrlaug.cli import run_cli
from ctrlaug.errors import CtrlAugError
from ctrlaug.utils.atomic import atomic_write, fsync_dir
from ctrlaug.utils.safeio import check_output_dir, io_error, sha256_file

from .decode import BadVideoError, open_video
from .records import DatasetFormatError, canonical_format, format_splits, load_records

__all__ = ["PrepareSettings", "PrepareError", "Job", "prepare", "transcode", "even_hw", "main"]

MANIFEST = "prepare_manifest.csv"
MARKER = ".ctrlaug_prepare.json"
PART = ".part"
ANNOTATION_EXTENSIONS = (".txt", ".csv", ".json", ".tsv", ".lst")
MANIFEST_FIELDS = (
    "source", "output", "status", "frames", "source_frames", "fps", "width", "height", "bytes", "reason",
    "sha256",
)  # fmt: skip


class PrepareError(CtrlAugError):
    """The run is refused (DST inside SRC, DST holding other files, settings differ, ...)."""


@dataclass(frozen=True)
class PrepareSettings:
    """Encoding settings; a DST is resumed only with the same ones (stored in DST/.ctrlaug_prepare.json)."""

    short_side: int = 128  # target short side (pixels); sources already smaller are not enlarged
    crf: int = 23  # x264 constant rate factor (lower = larger files, closer to the source)
    gop: int = 16  # keyframe interval in frames: a seek decodes at most this many extra frames
    preset: str = "veryfast"  # x264 speed/size trade-off of the encode (decoding speed is unaffected)
    tune: str = "fastdecode"  # x264 tuning: no CABAC, no deblocking, no weighted prediction


@dataclass(frozen=True)
class Job:
    source: str
    output: str


def even_hw(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output (h, w): short side ``short_side`` (never enlarged), each rounded to the nearest even
    number >= 2 (4:2:0 chroma)."""
    s = min(height, width)
    scale = short_side / s if s > short_side else 1.0
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


# ------------------------------------------------------------------------------------------------
# one video
# ------------------------------------------------------------------------------------------------


def _mux(out, stream, frame) -> None:
    """Encode one frame (None flushes) and write its packets."""
    for pkt in stream.encode(frame):
        out.mux(pkt)


def _source_frames(reader, h: int, w: int, time_base: Fraction) -> Iterable:
    """The source's frames as yuv420p VideoFrames of size (h, w) numbered 0, 1, 2, ... in
    ``time_base`` (one per output frame period), one reused swscale context."""
    import av
    from av.video.reformatter import VideoReformatter

    rf = VideoReformatter()
    if hasattr(reader, "frames"):  # a video file: decode in order
        frames = reader.frames()
    else:  # a frame folder: RGB images in chunks
        frames = (
            av.VideoFrame.from_ndarray(img, format="rgb24")
            for s in range(0, reader.num_frames, 32)
            for img in reader.get(range(s, min(reader.num_frames, s + 32)))
        )
    for i, f in enumerate(frames):
        g = rf.reformat(f, width=w, height=h, format="yuv420p", interpolation="AREA")
        g.pts, g.time_base = i, time_base  # constant frame rate: every source frame kept, in order
        yield g


def _count_decoded(path: str) -> int:
    with open_video(path) as r:
        return sum(1 for _ in r.frames())


def transcode(source: str, output: str, settings: PrepareSettings) -> dict:
    """Re-encode ``source`` to ``output`` (via ``output + ".part"``, verified, then renamed).

    Returns the manifest row fields; raises :class:`BadVideoError` for an unusable source or an
    output that does not verify."""
    import av

    part = output + PART
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    try:
        with open_video(source) as r:
            n_src = int(r.num_frames)
            fps = float(r.fps) or 25.0
            h, w = even_hw(r.height, r.width, settings.short_side)
            rate = Fraction(fps).limit_denominator(1001)
            with av.open(part, mode="w", format="mp4") as out:
                opts = {"crf": str(settings.crf), "preset": settings.preset, "g": str(settings.gop)}
                if settings.tune:
                    opts["tune"] = settings.tune
                st = out.add_stream("libx264", rate=rate, options=opts)
                st.width, st.height, st.pix_fmt = w, h, "yuv420p"
                st.codec_context.thread_count = 1  # parallelism is over videos
                for frame in _source_frames(r, h, w, 1 / rate):
                    _mux(out, st, frame)
                _mux(out, st, None)
        n_out = _count_decoded(part)
        if abs(n_out - n_src) > 1:
            raise BadVideoError(
                source, f"output verification failed: {n_out} frames decoded, source has {n_src}"
            )
        _fsync(part)  # on disk before it carries the final name
        digest = sha256_file(part)  # what a resumed run checks the output against
        os.replace(part, output)
        fsync_dir(os.path.dirname(output) or ".")
    except av.FFmpegError as e:
        raise BadVideoError(source, f"transcoding failed ({type(e).__name__}: {e})") from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    return {
        "frames": n_out, "source_frames": n_src, "fps": round(fps, 4), "width": w, "height": h,
        "bytes": os.path.getsize(output), "sha256": digest,
    }  # fmt: skip


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: the kernel kills this worker when the run dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed run leaves no orphaned workers behind."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _run_job(job: Job, settings: PrepareSettings) -> dict:
    """Worker entry point: a manifest row; never raises for a bad source."""
    row = {"source": job.source, "output": job.output, "reason": ""}
    t0 = time.perf_counter()
    try:
        row.update(transcode(job.source, job.output, settings), status="done")
    except BadVideoError as e:
        row.update(status="bad", reason=e.reason)
    except Exception as e:  # a worker must survive anything a file can throw
        row.update(status="bad", reason=f"unexpected error ({type(e).__name__}: {e})")
    row["seconds"] = time.perf_counter() - t0
    return row


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_destination(src: str, dst: str, fmt: str, settings: PrepareSettings) -> None:
    if not os.path.isdir(src):
        raise PrepareError(f"SRC must be the dataset's root directory: {src} is not a directory")
    if _inside(dst, src):
        raise PrepareError(f"DST {dst} is inside SRC {src}: choose a folder outside the source dataset")
    if _inside(src, dst):
        raise PrepareError(f"SRC {src} is inside DST {dst}: choose a DST that does not contain the source")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise PrepareError(f"DST {dst} exists and is not a directory")
    if not os.path.isdir(dst) or not os.listdir(dst):
        return
    marker = os.path.join(dst, MARKER)
    if not os.path.isfile(marker):
        some = sorted(os.listdir(dst))[:3]
        raise PrepareError(
            f"DST {dst} exists and holds other files ({', '.join(some)}, ...) but no {MARKER} of an "
            "earlier prepare run: choose an empty or new folder"
        )
    try:
        with open(marker) as f:
            old = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrepareError(
            f"DST {dst}: cannot read {MARKER} of the earlier prepare run ({type(e).__name__}: {e}); "
            "choose a new folder"
        ) from None
    if not isinstance(old, dict):
        raise PrepareError(f"DST {dst}: {MARKER} is not the record of a prepare run; choose a new folder")
    want = _marker(src, fmt, settings)
    if old != want:
        diff = {k: (old.get(k), v) for k, v in want.items() if old.get(k) != v}
        raise PrepareError(
            f"DST {dst} was prepared with other inputs or settings {diff} (earlier, now): resume with "
            "the same ones or choose a new folder"
        )


def _marker(src: str, fmt: str, settings: PrepareSettings) -> dict:
    return {"source": src, "format": fmt, **asdict(settings)}


def _format_kwargs(fmt: str) -> list[dict]:
    """Every official variant of the split files: all folds, both Diving-48 versions."""
    if fmt in ("ucf101", "hmdb51"):
        return [{"fold": k} for k in (1, 2, 3)]
    if fmt == "diving48":
        return [{"version": "v2"}, {"version": "v1"}]
    return [{}]


def list_jobs(src: str, dst: str, fmt: str) -> tuple[list[Job], list[tuple[str, str]]]:
    """(jobs, [(path, reason)] of listed videos that are missing or cannot be prepared).

    Raises :class:`DatasetFormatError` when SRC is not a dataset of this format."""
    sources: dict[str, None] = {}
    problems: dict[str, str] = {}
    found_any = False
    for split in format_splits(fmt, src):
        for kw in _format_kwargs(fmt):
            try:
                rl = load_records(fmt, src, split, **kw)
            except DatasetFormatError:
                continue
            found_any = True
            for rec in rl.records:
                sources.setdefault(os.path.realpath(rec.path), None)
            for path, reason in rl.missing:
                problems.setdefault(path, reason)
    if not found_any:
        load_records(fmt, src, format_splits(fmt, src)[0])  # raises the format's own error
    jobs, outputs = [], {}
    for s in sorted(sources):
        if not _inside(s, src):
            problems[s] = f"outside SRC {src}: not prepared"
            continue
        rel = os.path.relpath(s, src)
        out = os.path.join(dst, os.path.splitext(rel)[0] + ".mp4")
        if out in outputs:
            problems[s] = f"output name {out} already taken by {outputs[out]}"
            continue
        outputs[out] = s
        jobs.append(Job(s, out))
    return jobs, sorted(problems.items())


def _copy_annotations(src: str, dst: str, fmt: str, renamed: dict[str, str]) -> list[str]:
    """Copy split/annotation files from SRC to the same place under DST (atomically); CSV lists of
    the ``csv`` format get their ``path`` column pointed at the prepared videos."""
    copied = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.lower().endswith(ANNOTATION_EXTENSIONS):
                continue
            s = os.path.join(dirpath, fn)
            d = os.path.join(dst, os.path.relpath(s, src))
            os.makedirs(os.path.dirname(d), exist_ok=True)
            tmp = d + PART
            if fmt == "csv" and fn.lower().endswith(".csv"):
                _rewrite_csv(s, tmp, d, renamed)
            else:
                shutil.copyfile(s, tmp)
            _fsync(tmp)
            os.replace(tmp, d)
            copied.append(d)
    return copied


def _rewrite_csv(s: str, tmp: str, d: str, renamed: dict[str, str]) -> None:
    with open(s, newline="") as f:
        rows = list(csv.reader(f))
    head = [c.strip() for c in rows[0]] if rows else []
    if "path" in head:
        k = head.index("path")
        base_s, base_d = os.path.dirname(s), os.path.dirname(d)
        for row in rows[1:]:
            if k < len(row) and row[k].strip():
                p = row[k].strip()
                full = os.path.realpath(p if os.path.isabs(p) else os.path.join(base_s, p))
                if full in renamed:
                    row[k] = os.path.relpath(renamed[full], base_d)
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _read_manifest(path: str) -> dict[str, dict]:
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        return {r["output"]: r for r in csv.DictReader(f) if r.get("output")}


def _write_manifest(path: str, rows: Iterable[dict]) -> None:
    tmp = path + PART
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in MANIFEST_FIELDS})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk or a folder gone read-only: one line naming the manifest
        raise io_error(e, path, "cannot write the manifest") from None


def _remove_parts(dst: str) -> int:
    n = 0
    for dirpath, _, filenames in os.walk(dst):
        for fn in filenames:
            if fn.endswith(PART):
                os.remove(os.path.join(dirpath, fn))
                n += 1
    return n


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _existing_row(job: Job, old: dict[str, dict]) -> tuple[dict | None, str]:
    """``(manifest row, "")`` of an output an earlier run finished, after checking it: its size
    and the SHA-256 of its manifest row; without a recorded checksum, the frame count of a full
    decode against its manifest row, else against the source's (within 1, as when it was written);
    ``(None, why)`` when it does not pass. A size and a header prove nothing: an output overwritten
    in place (its middle zeroed) keeps both."""
    size = os.path.getsize(job.output)
    if size == 0:
        return None, "empty file"
    prev = old.get(job.output)
    if not (prev and prev.get("status") in ("done", "skipped") and prev.get("source") == job.source):
        prev = None
    if prev is not None and _int(prev.get("bytes")) is not None and _int(prev["bytes"]) != size:
        return None, f"{size} bytes, the manifest says {prev['bytes']}"
    digest = sha256_file(job.output)
    if prev is not None and prev.get("sha256"):
        if prev["sha256"] != digest:
            return None, "its content changed since it was written (SHA-256 differs from the manifest's)"
        return {**prev, "status": "skipped", "reason": ""}, ""
    try:
        with open_video(job.output) as r:
            probed = {
                "frames": r.num_frames,
                "fps": round(float(r.fps), 4),
                "width": r.width,
                "height": r.height,
            }
        decoded = _count_decoded(job.output)  # no checksum to trust: decode it in full
    except BadVideoError as e:
        return None, f"does not decode ({e.reason})"
    except Exception as e:  # the decoder on a damaged file
        return None, f"does not decode ({type(e).__name__}: {e})"
    if abs(decoded - probed["frames"]) > 1:
        return None, f"{decoded} frames decode, its header says {probed['frames']}"
    if prev is not None and _int(prev.get("frames")) is not None:
        if abs(decoded - _int(prev["frames"])) > 1:
            return None, f"{decoded} frames, the manifest says {prev['frames']}"
        return {**prev, "status": "skipped", "reason": "", "sha256": digest}, ""
    row = {
        "source": job.source,
        "output": job.output,
        "status": "skipped",
        "reason": "",
        **probed,
        "bytes": size,
        "sha256": digest,
    }
    try:
        with open_video(job.source) as r:
            row["source_frames"] = r.num_frames
    except BadVideoError as e:
        row["reason"] = f"source not probed: {e.reason}"
        return row, ""
    if abs(decoded - row["source_frames"]) > 1:
        return None, f"{decoded} frames, the source has {row['source_frames']}"
    return row, ""


class _Progress:
    """One status line on stderr: count, rate and ETA (redrawn in place on a terminal)."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.n, self.bad = total, 0, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.last = -1.0

    def update(self, row: dict) -> None:
        self.n += 1
        self.bad += row["status"] == "bad"
        now = time.perf_counter()
        if self.n < self.total and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        el = now - self.t0
        rate = self.n / el if el > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        line = (
            f"prepare: {self.n}/{self.total} ({100 * self.n / max(1, self.total):.0f}%) "
            f"{rate:.2f} videos/s, bad {self.bad}, elapsed {_hms(el)}, ETA {_hms(eta)}"
        )
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and self.n == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def prepare(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str,
    settings: PrepareSettings | None = None,
    *,
    workers: int = 1,
    progress=None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Prepare SRC into DST (see the module docstring); returns the manifest rows.

    ``progress``: a text stream for the progress line (default stderr; ``False`` for none).
    ``on_row``: called in the main process after each video's row is recorded.
    Raises :class:`PrepareError` when the run is refused and :class:`DatasetFormatError` when SRC is
    not a dataset of this format; bad videos never raise."""
    settings = settings or PrepareSettings()
    if settings.short_side < 2 or settings.gop < 1 or not 0 <= settings.crf <= 51:
        raise PrepareError(f"bad settings {settings}: short_side >= 2, gop >= 1, 0 <= crf <= 51")
    fmt = canonical_format(fmt)
    if fmt == "synthetic":
        raise PrepareError("the synthetic set is rendered on the fly: write it with SyntheticMotion.write()")
    src, dst = os.path.realpath(os.fspath(src)), os.path.realpath(os.fspath(dst))
    _check_destination(src, dst, fmt, settings)
    jobs, problems = list_jobs(src, dst, fmt)
    check_output_dir(dst, "DST")  # writable, before any video is transcoded
    atomic_write(os.path.join(dst, MARKER), json.dumps(_marker(src, fmt, settings), indent=1))
    _remove_parts(dst)  # half-written outputs of a killed run
    manifest = os.path.join(dst, MANIFEST)
    old = _read_manifest(manifest)
    rows: dict[str, dict] = {}
    todo = []
    redo = []
    for job in jobs:
        if os.path.isfile(job.output):
            row, why = _existing_row(job, old)
            if row is not None:
                rows[job.output] = row
                continue
            redo.append(f"{job.output}: {why}")
            os.remove(job.output)
        todo.append(job)
    if redo and progress is not False:
        print(
            f"prepare: {len(redo)} earlier output(s) failed the check and are redone: " + "; ".join(redo[:5]),
            file=progress if progress is not None else sys.stderr,
        )
    for path, reason in problems:
        rows["missing:" + path] = {"source": path, "output": "", "status": "missing", "reason": reason}
    _copy_annotations(src, dst, fmt, {j.source: j.output for j in jobs})
    _write_manifest(manifest, rows.values())

    bar = None if progress is False else _Progress(len(todo), progress)
    last_write = time.perf_counter()

    def record(row: dict) -> None:
        nonlocal last_write
        rows[row["output"]] = row
        if bar is not None:
            bar.update(row)
        if time.perf_counter() - last_write > 2.0:
            _write_manifest(manifest, rows.values())
            last_write = time.perf_counter()
        if on_row is not None:
            on_row(row)

    if workers > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(
            min(workers, len(todo)), initializer=_die_with_parent, initargs=(os.getpid(),)
        )
        with pool as ex:
            futs = [ex.submit(_run_job, job, settings) for job in todo]
            for fut in as_completed(futs):
                record(fut.result())
    else:
        for job in todo:
            record(_run_job(job, settings))
    out = sorted(rows.values(), key=lambda r: (r["source"], r["output"]))
    _write_manifest(manifest, out)
    return out


def summary(rows: list[dict], src: str, dst: str) -> str:
    count = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "bad", "missing")}
    src_bytes = sum(os.path.getsize(r["source"]) for r in rows if r["status"] in ("done", "skipped"))
    out_bytes = sum(int(r.get("bytes") or 0) for r in rows if r["status"] in ("done", "skipped"))
    lines = [
        f"BAD\t{r['source']}\t{r['status']}: {r['reason']}" for r in rows if r["status"] in ("bad", "missing")
    ]
    lines.append(
        f"prepared {src} -> {dst}: {count['done']} transcoded, {count['skipped']} already done, "
        f"{count['bad']} bad, {count['missing']} missing; {src_bytes / 1e6:.1f} MB -> {out_bytes / 1e6:.1f} MB; "
        f"manifest {os.path.join(dst, MANIFEST)}"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ctrlaug.data.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="dataset root (read only)")
    ap.add_argument("dst", help="output root: new, empty, or an earlier run's DST to resume")
    ap.add_argument("--format", required=True, help="ucf101 | hmdb51 | kinetics400 | diving48 | folder | csv")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    for f in fields(PrepareSettings):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0 when every video was prepared, 1 when some are bad or missing
    (listed), 2 with one ``error:`` line when the run is refused (:func:`ctrlaug.cli.run_cli`)."""
    return run_cli(_parser(), _run, argv)


def _run(a: argparse.Namespace) -> int:
    settings = PrepareSettings(**{f.name: getattr(a, f.name) for f in fields(PrepareSettings)})
    rows = prepare(a.src, a.dst, a.format, settings, workers=a.workers)
    print(summary(rows, os.path.realpath(a.src), os.path.realpath(a.dst)))
    return 1 if any(r["status"] in ("bad", "missing") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
