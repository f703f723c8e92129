"""Dataset adapters: the official split formats of UCF-101, HMDB-51, Kinetics-400 and Diving-48,
a class-per-folder layout and a CSV list, all turned into a list of :class:`VideoRecord`.

A missing root, split or annotation file raises :class:`DatasetFormatError` naming the expected
path(s) and the format. Videos listed by a split but absent on disk are left out with one warning
and kept in ``missing`` (``python -m ctrlaug.data.check`` lists them).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ctrlaug.errors import CtrlAugError, UsageError

from .decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .formats import canonical_format, get_format, rendered_names

__all__ = [
    "VideoRecord",
    "RecordList",
    "DatasetFormatError",
    "FORMATS",
    "load_records",
    "format_splits",
    "ucf101_records",
    "hmdb51_records",
    "kinetics400_records",
    "diving48_records",
    "folder_records",
    "csv_records",
    "list_records",
]

log = logging.getLogger("ctrlaug.data")


class DatasetFormatError(CtrlAugError, FileNotFoundError):
    """A dataset root, split or annotation file is missing or malformed."""


def _label(value, where: str) -> int:
    """An integer of an annotation file (a label, a frame number); :class:`DatasetFormatError`
    naming ``where`` (file and line or entry) when it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{where}: expected an integer, got {value!r}") from None


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset.

    path: video file or frame folder; label: class index (-1 when unknown); start_sec/end_sec: time
    window (untrimmed Kinetics downloads); start_frame/end_frame: frame window (end exclusive).
    """

    path: str
    label: int = -1
    start_sec: float | None = None
    end_sec: float | None = None
    start_frame: int | None = None
    end_frame: int | None = None

    def window(self) -> dict[str, float | int]:
        """Non-None window arguments for :func:`ctrlaug.data.decode.open_video`."""
        keys = ("start_sec", "end_sec", "start_frame", "end_frame")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class RecordList:
    """records: usable videos; classes: class names (label i -> classes[i]); missing: (path, reason)
    of listed videos not found on disk; name: format name."""

    records: list[VideoRecord]
    classes: list[str]
    missing: list[tuple[str, str]]
    name: str


def _need_dir(path: str, fmt: str, what: str) -> None:
    if not os.path.isdir(path):
        raise DatasetFormatError(f"{fmt}: {what} not found: expected a directory at {path}")


def _first_existing(candidates: Sequence[str], fmt: str, what: str, layout: str) -> str:
    for c in candidates:
        if os.path.exists(c):
            return c
    listed = "\n  ".join(candidates)
    raise DatasetFormatError(f"{fmt}: {what} not found; expected one of:\n  {listed}\nformat: {layout}")


def _resolve_video(dirs: Sequence[str], rel: str) -> str | None:
    """The file ``dir/rel`` in the first dir that has it, else a frame folder ``dir/rel-without-ext``,
    else the same stem with another video extension."""
    stem, _ = os.path.splitext(rel)
    for d in dirs:
        p = os.path.join(d, rel)
        if os.path.isfile(p):
            return p
    for d in dirs:
        p = os.path.join(d, stem)
        if os.path.isdir(p):
            return p
        for ext in VIDEO_EXTENSIONS:
            q = p + ext
            if os.path.isfile(q):
                return q
    return None


def _warn_missing(fmt: str, missing: list[tuple[str, str]]) -> None:
    if missing:
        log.warning(
            "%s: %d listed videos not found on disk (first: %s); left out", fmt, len(missing), missing[0][0]
        )


# ------------------------------------------------------------------------------------------------
# UCF-101
# ------------------------------------------------------------------------------------------------

UCF_LAYOUT = (
    "ROOT/ucfTrainTestlist/{classInd.txt, trainlist0N.txt, testlist0N.txt} and videos at "
    "ROOT/<Class>/v_<Class>_gXX_cYY.avi (or ROOT/UCF-101/..., ROOT/videos/...; frame folders accepted)"
)


def ucf101_records(
    root: str, split: str = "train", fold: int = 1, split_dir: str | None = None
) -> RecordList:
    """UCF-101 (classInd.txt: ``1 ApplyEyeMakeup``; trainlist01.txt: ``Class/video.avi 1``;
    testlist01.txt: ``Class/video.avi``). Labels are 0-based."""
    fmt = "ucf101"
    _need_dir(root, fmt, "dataset root")
    if split not in ("train", "test"):
        raise UsageError(f"{fmt}: split must be 'train' or 'test', got {split!r}")
    if fold not in get_format(fmt).folds:
        raise UsageError(f"{fmt}: fold must be 1, 2 or 3, got {fold}")
    sdirs = (
        [split_dir]
        if split_dir
        else [os.path.join(root, d) for d in ("ucfTrainTestlist", "splits", "annotations")] + [root]
    )
    cls_file = _first_existing(
        [os.path.join(d, "classInd.txt") for d in sdirs], fmt, "classInd.txt", UCF_LAYOUT
    )
    sdir = os.path.dirname(cls_file)
    list_file = os.path.join(sdir, f"{split}list0{fold}.txt")
    if not os.path.isfile(list_file):
        raise DatasetFormatError(f"{fmt}: split file not found: expected {list_file}\nformat: {UCF_LAYOUT}")
    classes: list[str] = []
    with open(cls_file) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
                raise DatasetFormatError(
                    f"{cls_file}:{n}: expected '<index from 1> <ClassName>', got {line.strip()!r}"
                )
            classes.append(parts[1])
    cidx = {c: i for i, c in enumerate(classes)}
    vdirs = [root, os.path.join(root, "UCF-101"), os.path.join(root, "videos")]
    records, missing = [], []
    with open(list_file) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].replace("\\", "/")
            cname = rel.split("/")[0]
            if len(parts) > 1:
                label = _label(parts[1], f"{list_file}:{n}") - 1
            elif cname in cidx:
                label = cidx[cname]
            else:
                raise DatasetFormatError(f"{list_file}:{n}: class {cname!r} of {rel!r} is not in {cls_file}")
            p = _resolve_video(vdirs, rel)
            if p is None:
                missing.append((os.path.join(root, rel), "listed in split file but not found"))
            else:
                records.append(VideoRecord(p, label))
    _warn_missing(fmt, missing)
    return RecordList(records, classes, missing, fmt)


# ------------------------------------------------------------------------------------------------
# HMDB-51
# ------------------------------------------------------------------------------------------------

HMDB_LAYOUT = (
    "ROOT/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt with lines '<video>.avi <0|1|2>' "
    "(1 train, 2 test, 0 unused) and videos at ROOT/<class>/<video>.avi (or ROOT/videos/..., ROOT/hmdb51_org/...)"
)


def hmdb51_records(
    root: str, split: str = "train", fold: int = 1, split_dir: str | None = None
) -> RecordList:
    """HMDB-51 official splits: one file per class and fold; code 1 = train, 2 = test, 0 = unused.
    Classes are the sorted class names of the split files."""
    fmt = "hmdb51"
    _need_dir(root, fmt, "dataset root")
    if split not in ("train", "test"):
        raise UsageError(f"{fmt}: split must be 'train' or 'test', got {split!r}")
    want = "1" if split == "train" else "2"
    suffix = f"_test_split{fold}.txt"
    cands = (
        [split_dir]
        if split_dir
        else [os.path.join(root, d) for d in ("testTrainMulti_7030_splits", "splits", "annotations")] + [root]
    )
    sdir = None
    for d in cands:
        if os.path.isdir(d) and any(f.endswith(suffix) for f in os.listdir(d)):
            sdir = d
            break
    if sdir is None:
        listed = "\n  ".join(os.path.join(d, f"<class>{suffix}") for d in cands)
        raise DatasetFormatError(
            f"{fmt}: split files not found; expected:\n  {listed}\nformat: {HMDB_LAYOUT}"
        )
    files = sorted(f for f in os.listdir(sdir) if f.endswith(suffix))
    classes = [f[: -len(suffix)] for f in files]
    vdirs = [root, os.path.join(root, "videos"), os.path.join(root, "hmdb51_org")]
    records, missing = [], []
    for label, (cname, fname) in enumerate(zip(classes, files)):
        path = os.path.join(sdir, fname)
        with open(path) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise DatasetFormatError(
                        f"{path}:{n}: expected '<video>.avi <0|1|2>', got {line.strip()!r}"
                    )
                if parts[1] != want:
                    continue
                p = _resolve_video(vdirs, f"{cname}/{parts[0]}")
                if p is None:
                    missing.append(
                        (os.path.join(root, cname, parts[0]), "listed in split file but not found")
                    )
                else:
                    records.append(VideoRecord(p, label))
    _warn_missing(fmt, missing)
    return RecordList(records, classes, missing, fmt)


# ------------------------------------------------------------------------------------------------
# Kinetics-400
# ------------------------------------------------------------------------------------------------

K400_LAYOUT = (
    "CSV with header 'label,youtube_id,time_start,time_end,split' at ROOT/annotations/<split>.csv "
    "(or ROOT/<split>.csv, ROOT/kinetics-400_<split>.csv); videos named "
    "<youtube_id>_<start:06d>_<end:06d>.<ext> (trimmed) or <youtube_id>.<ext> (untrimmed, the window "
    "is applied) anywhere under ROOT/<split>/ (or ROOT/videos/, ROOT)"
)


def _k400_csv(root: str, split: str, fmt: str) -> str:
    names = [
        f"{split}.csv",
        f"kinetics-400_{split}.csv",
        f"kinetics_400_{split}.csv",
        f"kinetics400_{split}.csv",
    ]
    if split == "val":
        names += ["validate.csv", "kinetics-400_validate.csv"]
    dirs = [os.path.join(root, "annotations"), root, os.path.join(root, "kinetics400")]
    return _first_existing(
        [os.path.join(d, n) for d in dirs for n in names], fmt, f"{split} annotation CSV", K400_LAYOUT
    )


def _read_csv_rows(path: str, required: Iterable[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        miss = [c for c in required if c not in cols]
        if miss:
            raise DatasetFormatError(f"{path}: missing CSV column(s) {miss}; header is {cols}")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _index_videos(dirs: Sequence[str]) -> dict[str, str]:
    """stem -> path of every video file / frame folder under ``dirs`` (first found wins)."""
    index: dict[str, str] = {}
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for dirpath, dirnames, filenames in os.walk(d):
            for fn in filenames:
                if fn.lower().endswith(VIDEO_EXTENSIONS):
                    index.setdefault(os.path.splitext(fn)[0], os.path.join(dirpath, fn))
            if filenames and not dirnames and any(fn.lower().endswith(IMAGE_EXTENSIONS) for fn in filenames):
                index.setdefault(os.path.basename(dirpath), dirpath)
    return index


def kinetics400_records(root: str, split: str = "train", annotation: str | None = None) -> RecordList:
    """Kinetics-400 from the official CSVs (label, youtube_id, time_start, time_end, split).

    Classes: sorted label names of the train CSV (plus this split's, if it has others), so train and
    val agree. A CSV without a label column (test) gives label -1.
    """
    fmt = "kinetics400"
    _need_dir(root, fmt, "dataset root")
    if split not in ("train", "val", "test"):
        raise UsageError(f"{fmt}: split must be 'train', 'val' or 'test', got {split!r}")
    csv_path = annotation or _k400_csv(root, split, fmt)
    if not os.path.isfile(csv_path):
        raise DatasetFormatError(
            f"{fmt}: annotation CSV not found: expected {csv_path}\nformat: {K400_LAYOUT}"
        )
    rows = _read_csv_rows(csv_path, ("youtube_id", "time_start", "time_end"))
    names = {r["label"] for r in rows if r.get("label")}
    if split != "train" and annotation is None:
        try:
            names |= {
                r["label"] for r in _read_csv_rows(_k400_csv(root, "train", fmt), ("label",)) if r["label"]
            }
        except DatasetFormatError:
            pass
    classes = sorted(names)
    cidx = {c: i for i, c in enumerate(classes)}
    index = _index_videos([os.path.join(root, split), os.path.join(root, "videos"), root])
    records, missing = [], []
    for n, r in enumerate(rows, 2):
        try:
            t0, t1 = float(r["time_start"]), float(r["time_end"])
        except ValueError:
            raise DatasetFormatError(
                f"{csv_path}:{n}: time_start/time_end must be numbers, got {r}"
            ) from None
        yid = r["youtube_id"]
        label = cidx[r["label"]] if r.get("label") else -1
        trimmed = f"{yid}_{int(t0):06d}_{int(t1):06d}"
        if trimmed in index:
            records.append(VideoRecord(index[trimmed], label))
        elif yid in index:
            records.append(VideoRecord(index[yid], label, start_sec=t0, end_sec=t1))
        else:
            missing.append((os.path.join(root, split, trimmed + ".mp4"), "listed in CSV but not found"))
    _warn_missing(fmt, missing)
    return RecordList(records, classes, missing, fmt)


# ------------------------------------------------------------------------------------------------
# Diving-48
# ------------------------------------------------------------------------------------------------

DIVING_LAYOUT = (
    "JSON list of {vid_name, label, start_frame, end_frame} at ROOT/Diving48_V2_<split>.json (v2) or "
    "ROOT/Diving48_<split>.json (v1) (or under ROOT/annotations/), videos at ROOT/rgb/<vid_name>.mp4 "
    "(or ROOT/videos/, ROOT; frame folders accepted)"
)


def diving48_records(
    root: str, split: str = "train", version: str = "v2", use_frame_range: bool = False
) -> RecordList:
    """Diving-48 V1/V2 JSON annotations. The released rgb clips are already trimmed, so the
    ``start_frame``/``end_frame`` of the JSON are applied only with ``use_frame_range=True``."""
    fmt = "diving48"
    _need_dir(root, fmt, "dataset root")
    if split not in ("train", "test"):
        raise UsageError(f"{fmt}: split must be 'train' or 'test', got {split!r}")
    version = version.lower()
    if version not in ("v1", "v2"):
        raise UsageError(f"{fmt}: version must be 'v1' or 'v2', got {version!r}")
    name = f"Diving48_V2_{split}.json" if version == "v2" else f"Diving48_{split}.json"
    path = _first_existing(
        [os.path.join(root, name), os.path.join(root, "annotations", name)],
        fmt,
        f"{version} {split} JSON",
        DIVING_LAYOUT,
    )
    try:
        with open(path) as f:
            items = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of objects, got {type(items).__name__}")
    vdirs = [os.path.join(root, "rgb"), os.path.join(root, "videos"), os.path.join(root, "frames"), root]
    records, missing, labels = [], [], set()
    for n, it in enumerate(items):
        if not isinstance(it, dict) or "vid_name" not in it or "label" not in it:
            raise DatasetFormatError(f"{path}: entry {n} must have keys vid_name and label, got {it!r}")
        label = _label(it["label"], f"{path}: entry {n}")
        labels.add(label)
        p = _resolve_video(vdirs, f"{it['vid_name']}.mp4")
        if p is None:
            missing.append(
                (os.path.join(root, "rgb", f"{it['vid_name']}.mp4"), "listed in JSON but not found")
            )
            continue
        if use_frame_range and "start_frame" in it and "end_frame" in it:
            records.append(
                VideoRecord(
                    p,
                    label,
                    start_frame=_label(it["start_frame"], f"{path}: entry {n} start_frame"),
                    end_frame=_label(it["end_frame"], f"{path}: entry {n} end_frame"),
                )
            )
        else:
            records.append(VideoRecord(p, label))
    vocab = os.path.join(os.path.dirname(path), "Diving48_vocab.json")
    n_cls = max(48, max(labels, default=-1) + 1)
    classes = [str(i) for i in range(n_cls)]
    if os.path.isfile(vocab):
        try:
            with open(vocab) as f:
                v = json.load(f)
            if isinstance(v, list) and len(v) >= n_cls:
                classes = [" ".join(x) if isinstance(x, list) else str(x) for x in v]
        except (json.JSONDecodeError, OSError):
            pass
    _warn_missing(fmt, missing)
    return RecordList(records, classes, missing, fmt)


# ------------------------------------------------------------------------------------------------
# generic layouts
# ------------------------------------------------------------------------------------------------

FOLDER_LAYOUT = (
    "ROOT/<split>/<class>/<video file or frame folder> (or ROOT/<class>/... when split is None/'all'); "
    "optional ROOT/classes.txt (one class per line) fixes the label order"
)


def folder_records(root: str, split: str | None = "train") -> RecordList:
    """Class-per-folder layout. Labels: the order of ROOT/classes.txt if present, else the sorted
    class folder names of this split."""
    fmt = "folder"
    _need_dir(root, fmt, "dataset root")
    base = root if split in (None, "all", "") else os.path.join(root, split)
    if not os.path.isdir(base):
        raise DatasetFormatError(
            f"{fmt}: split folder not found: expected a directory at {base}\nformat: {FOLDER_LAYOUT}"
        )
    class_dirs = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    cls_file = os.path.join(root, "classes.txt")
    if os.path.isfile(cls_file):
        with open(cls_file) as f:
            classes = [ln.strip() for ln in f if ln.strip()]
        unknown = [d for d in class_dirs if d not in classes]
        if unknown:
            raise DatasetFormatError(f"{base}: class folders {unknown[:5]} are not listed in {cls_file}")
    else:
        classes = class_dirs
    if not class_dirs:
        raise DatasetFormatError(f"{fmt}: no class folders in {base}\nformat: {FOLDER_LAYOUT}")
    cidx = {c: i for i, c in enumerate(classes)}
    records = []
    for c in class_dirs:
        cdir = os.path.join(base, c)
        for name in sorted(os.listdir(cdir)):
            p = os.path.join(cdir, name)
            if os.path.isdir(p) or name.lower().endswith(VIDEO_EXTENSIONS):
                records.append(VideoRecord(p, cidx[c]))
    return RecordList(records, classes, [], fmt)


CSV_LAYOUT = (
    "CSV with a header; columns: path (required, relative to the CSV's folder), label (class index or "
    "name, optional), start_sec/end_sec and start_frame/end_frame (optional). ROOT is the CSV file or a "
    "folder holding <split>.csv"
)


def csv_records(root: str, split: str | None = "train") -> RecordList:
    """A CSV list of videos. Integer labels are used as given; names are mapped to sorted indices."""
    fmt = "csv"
    if os.path.isfile(root):
        path = root
    else:
        _need_dir(root, fmt, "dataset root (a CSV file or a folder with <split>.csv)")
        path = os.path.join(root, f"{split}.csv")
        if not os.path.isfile(path):
            raise DatasetFormatError(f"{fmt}: list not found: expected {path}\nformat: {CSV_LAYOUT}")
    rows = _read_csv_rows(path, ("path",))
    base = os.path.dirname(os.path.abspath(path))
    raw = [r.get("label", "") for r in rows]
    named = any(x and not x.lstrip("-").isdigit() for x in raw)
    classes = sorted({x for x in raw if x}) if named else []
    cidx = {c: i for i, c in enumerate(classes)}
    records, missing = [], []

    def num(r, k, typ):
        v = r.get(k, "")
        if v == "":
            return None
        try:
            return typ(v)
        except ValueError:
            raise DatasetFormatError(f"{path}: column {k} must be a number, got {v!r}") from None

    for r, lab in zip(rows, raw):
        p = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
        label = (cidx[lab] if named else _label(lab, f"{path}: label")) if lab else -1
        if not os.path.exists(p):
            missing.append((p, "listed in CSV but not found"))
            continue
        records.append(
            VideoRecord(
                p, label, num(r, "start_sec", float), num(r, "end_sec", float),
                num(r, "start_frame", int), num(r, "end_frame", int),
            )
        )  # fmt: skip
    if not named:
        n_cls = max((x.label for x in records), default=-1) + 1
        classes = [str(i) for i in range(n_cls)]
    _warn_missing(fmt, missing)
    return RecordList(records, classes, missing, fmt)


LIST_LAYOUT = (
    "headerless lines 'path label' (a video file) or 'dir num_frames label' (a frame folder), "
    "separated by spaces or tabs, as MMAction2 / PyTorchVideo / VideoMAE write them; integer labels "
    "(0-based, or 1-based: detected, or give label_offset); '#' lines and blank lines skipped; relative "
    "paths resolve against the list's folder, then its videos/ and rawframes/ subfolders. ROOT is the "
    "list file or a folder holding <split>.txt; an optional classes.txt beside it names the classes"
)


def _list_file(root: str, split: str | None) -> str:
    if os.path.isfile(root):
        return root
    _need_dir(root, "list", "dataset root (a list file or a folder with <split>.txt)")
    path = os.path.join(root, f"{split or 'train'}.txt")
    if not os.path.isfile(path):
        raise DatasetFormatError(f"list: list not found: expected {path}\nformat: {LIST_LAYOUT}")
    return path


def _parse_list(path: str) -> list[tuple[int, str, int | None, int]]:
    """(line number, path, num_frames or None, raw label) of every entry of a list file; a
    :class:`DatasetFormatError` naming the file and line for a malformed one."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read the list: {e}".splitlines()[0]) from None
    out, ncols = [], None
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if n == 1 and parts[0].lower() in ("path", "filename", "video", "frame_dir") and len(parts) <= 3:
            raise DatasetFormatError(
                f"{path}:1: looks like a header ({line.strip()!r}); the list format has none (use "
                "dataset=csv for a CSV with a header)"
            )
        if len(parts) not in (2, 3):
            raise DatasetFormatError(
                f"{path}:{n}: expected 'path label' or 'dir num_frames label', got {len(parts)} fields "
                f"({line.strip()[:80]!r}; paths with spaces are not supported)"
            )
        if ncols is not None and len(parts) != ncols:
            raise DatasetFormatError(
                f"{path}:{n}: {len(parts)} fields where the lines above have {ncols} "
                "(one list holds either videos or frame folders)"
            )
        ncols = len(parts)
        try:
            label = int(parts[-1])
        except ValueError:
            raise DatasetFormatError(f"{path}:{n}: label must be an integer, got {parts[-1]!r}") from None
        frames = None
        if len(parts) == 3:
            try:
                frames = int(parts[1])
            except ValueError:
                frames = -1
            if frames <= 0:
                raise DatasetFormatError(
                    f"{path}:{n}: num_frames must be a positive integer, got {parts[1]!r}"
                )
        out.append((n, parts[0], frames, label))
    return out


def list_records(
    root: str, split: str | None = "train", label_offset: int | None = None, prefix: str | None = None
) -> RecordList:
    """A headerless ``path label`` / ``dir num_frames label`` list (see :data:`LIST_LAYOUT`).

    ``label_offset`` is subtracted from every label: None = detected (1 when no list of the dataset
    -- the file, or the folder's train/val/test.txt -- has a label 0 and their smallest is 1, else
    0). ``prefix``: the folder relative paths resolve against (default: the list's folder,
    then its ``videos/`` and ``rawframes/``)."""
    fmt = "list"
    path = _list_file(root, split)
    entries = _parse_list(path)
    if not entries:
        raise DatasetFormatError(f"{path}: the list has no entries\nformat: {LIST_LAYOUT}")
    base = os.path.dirname(os.path.abspath(path))
    if label_offset is None:
        lists = [path]
        if not os.path.isfile(root):  # every split list of the folder: a split may lack class 0
            lists += [os.path.join(root, f"{s}.txt") for s in get_format(fmt).splits]
            lists = [p for p in dict.fromkeys(lists) if os.path.isfile(p)]
        labels = [e[3] for p in lists for e in (entries if p == path else _parse_list(p))]
        label_offset = 1 if min(labels) == 1 else 0
        if label_offset:
            log.info("%s: labels start at 1 (no label 0 in %d list(s)): label_offset=1", path, len(lists))
    cls_file = os.path.join(base, "classes.txt")
    classes: list[str] = []
    if os.path.isfile(cls_file):
        with open(cls_file, encoding="utf-8") as f:
            classes = [ln.strip() for ln in f if ln.strip()]
    dirs = [prefix] if prefix else [base, os.path.join(base, "videos"), os.path.join(base, "rawframes")]
    records, missing = [], []
    for n, rel, frames, raw in entries:
        label = raw - label_offset
        if label < 0 or (classes and label >= len(classes)):
            where = f" of the {len(classes)} in {cls_file}" if classes else ""
            raise DatasetFormatError(
                f"{path}:{n}: label {raw} with label_offset {label_offset} is not a class index{where}"
            )
        if os.path.isabs(rel):
            p = rel if os.path.exists(rel) else None
        elif frames is not None:
            p = next((os.path.join(d, rel) for d in dirs if os.path.isdir(os.path.join(d, rel))), None)
        else:
            p = _resolve_video(dirs, rel)
        if p is None:
            missing.append((rel, f"listed in {path}:{n} but not found"))
            continue
        records.append(VideoRecord(p, label, end_frame=frames))
    if not classes:
        classes = [str(i) for i in range(max((r.label for r in records), default=-1) + 1)]
    _warn_missing(fmt, missing)
    return RecordList(records, classes, missing, fmt)


FORMATS = {
    "ucf101": ucf101_records,
    "hmdb51": hmdb51_records,
    "kinetics400": kinetics400_records,
    "diving48": diving48_records,
    "folder": folder_records,
    "csv": csv_records,
    "list": list_records,
}
RENDERED = rendered_names()  # rendered on the fly, no files (ctrlaug.data.build_dataset)


def format_splits(fmt: str, root: str) -> list[str | None]:
    """The splits a format has (used by the checker to scan a whole dataset)."""
    f = get_format(fmt)
    if f.name == "folder":
        subs = [d for d in f.splits if os.path.isdir(os.path.join(root, d))]
        return subs or [None]
    if f.name in ("csv", "list"):
        ext = ".csv" if f.name == "csv" else ".txt"
        if os.path.isfile(root):
            return [None]
        return [s for s in f.splits if os.path.isfile(os.path.join(root, f"{s}{ext}"))] or ["train"]
    return list(f.splits)


def load_records(fmt: str, root: str, split: str | None = "train", **kwargs) -> RecordList:
    """Records of ``split`` of a dataset in format ``fmt`` (see :data:`FORMATS`); kwargs go to the
    adapter (``fold`` for ucf101/hmdb51, ``version``/``use_frame_range`` for diving48, ...)."""
    f = canonical_format(fmt)
    if f in RENDERED:
        raise UsageError(f"the {f!r} set is rendered, not read: use ctrlaug.data.build_dataset({f!r}, ...)")
    root = os.fspath(root)
    if f == "csv" and os.path.isfile(root):
        return csv_records(root, split)
    if f == "list" and os.path.isfile(root):
        return list_records(root, split, **kwargs)
    return FORMATS[f](root, split, **kwargs)  # type: ignore[operator]
