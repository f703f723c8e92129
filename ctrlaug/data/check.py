"""Scan a dataset and list every bad video.

    python -m ctrlaug.data.check ROOT --format ucf101 [--split all] [--fold 1] [--decode sample]

Every video referenced by the chosen split(s) is opened (container and packet index), checked
against ``--min-frames`` and decoded (``--decode sample``: first, middle and last frame;
``full``: every frame; ``none``: index only). Videos listed by a split but absent on disk are
reported too. Output: one ``BAD<TAB>path<TAB>reason`` line per bad video, then a summary line.
Exit status: 0 when every video is good, 1 when any is bad, 2 when the dataset itself cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from ctrlaug.cli import run_cli

from .decode import BadVideoError, open_video
from .records import DatasetFormatError, VideoRecord, canonical_format, format_splits, load_records

__all__ = ["check_video", "check_dataset", "main"]


def check_video(record: VideoRecord, min_frames: int = 8, decode: str = "sample") -> str | None:
    """None if the video is usable, else the reason."""
    try:
        with open_video(record.path, **record.window()) as r:
            n = r.num_frames
            if n < min_frames:
                return f"too short: {n} frames < min_frames={min_frames}"
            if decode == "sample":
                r.get(sorted({0, n // 2, n - 1}), short_side=64)
            elif decode == "full":
                for s in range(0, n, 64):
                    r.get(list(range(s, min(n, s + 64))), short_side=64)
    except BadVideoError as e:
        return e.reason
    except Exception as e:  # the checker must survive anything a file can throw
        return f"unexpected error ({type(e).__name__}: {e})"
    return None


def _check_one(args):
    rec, min_frames, decode = args
    return rec.path, check_video(rec, min_frames, decode)


def check_dataset(
    fmt: str,
    root: str,
    split: str = "all",
    *,
    min_frames: int = 8,
    decode: str = "sample",
    jobs: int = 1,
    **format_kwargs,
) -> tuple[int, list[tuple[str, str]]]:
    """Return (number of videos scanned, [(path, reason)] of bad ones, sorted by path)."""
    splits = format_splits(fmt, root) if split == "all" else [split]
    seen: dict[str, VideoRecord] = {}
    bad: dict[str, str] = {}
    for s in splits:
        try:
            rl = load_records(fmt, root, s, **format_kwargs)
        except DatasetFormatError:
            if split != "all" or s == splits[0]:
                raise
            continue  # e.g. a Kinetics test CSV that is not there
        for rec in rl.records:
            seen.setdefault(rec.path, rec)
        for path, reason in rl.missing:
            bad.setdefault(path, reason)
    work = [(rec, min_frames, decode) for rec in seen.values()]
    if jobs > 1 and len(work) > 1:
        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(_check_one, work, chunksize=8))
    else:
        results = [_check_one(w) for w in work]
    for path, reason in results:
        if reason is not None:
            bad[path] = reason
    return len(seen) + sum(1 for p in bad if p not in seen), sorted(bad.items())


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ctrlaug.data.check", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="dataset root (or CSV file for --format csv)")
    ap.add_argument("--format", required=True, help="ucf101 | hmdb51 | kinetics400 | diving48 | folder | csv")
    ap.add_argument("--split", default="all", help="split to scan, or 'all' (default)")
    ap.add_argument(
        "--fold", type=int, default=None, help="official split number for ucf101/hmdb51 (default 1)"
    )
    ap.add_argument("--version", default=None, help="diving48 annotation version: v1 | v2 (default v2)")
    ap.add_argument("--min-frames", type=int, default=8, help="fewer frames = bad (default 8)")
    ap.add_argument(
        "--decode", choices=("none", "sample", "full"), default="sample", help="how much to decode"
    )
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command line: exit 0 when every video is good, 1 when any is bad (listed), 2 with one
    ``error:`` line when the dataset itself cannot be read (:func:`ctrlaug.cli.run_cli`)."""
    return run_cli(_parser(), _run, argv)


def _run(a: argparse.Namespace) -> int:
    kw = {}
    fmt = canonical_format(a.format)
    if a.fold is not None:
        kw["fold"] = a.fold
    if a.version is not None:
        kw["version"] = a.version
    n, bad = check_dataset(
        fmt,
        os.path.expanduser(a.root),
        a.split,
        min_frames=a.min_frames,
        decode=a.decode,
        jobs=a.jobs,
        **kw,
    )
    for path, reason in bad:
        print(f"BAD\t{path}\t{reason}")
    print(f"checked {n} videos ({fmt}, split {a.split}): {len(bad)} bad, {n - len(bad)} good")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
