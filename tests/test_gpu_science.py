"""The GPU-scale science preset and its script, checked on the CPU at a tiny size."""

import json
import os
import subprocess
import sys

from ctrlaug.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_preset_is_the_paper_geometry_on_the_shapes_benchmark():
    cfg = load_config(os.path.join(ROOT, "configs", "shapes-gpu.yaml"))
    assert cfg.dataset == "shapes" and cfg.model.arch == "r3d18" and cfg.model.width == 1.0
    assert (cfg.augment.size, cfg.augment.clip_frames, cfg.augment.global_frames) == (112, 16, 16)
    assert cfg.model.global_stride1_stages == [3, 4] and cfg.augment.num_clips == 4
    # the frames are rendered above the view size, so crops are downsampled, never upscaled
    assert cfg.shapes.size >= cfg.augment.size and cfg.shapes.num_frames >= 3 * cfg.augment.clip_frames
    # 12 epochs x 2048 videos / 64 = 384 steps: the <= 4 minute H200 budget in its header
    assert cfg.epochs * cfg.shapes.split_size("train") // cfg.batch_size == 384


def test_gpu_science_script_tiny_writes_both_rows(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "SCIENCE_TINY": "1", "PY": sys.executable}
    r = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu_science.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    steps = (tmp_path / "science" / "steps.log").read_text()
    assert "train l_nce rc=0" in steps and "train full rc=0" in steps, steps + r.stdout[-2000:]
    assert "diagnose l_nce rc=0" in steps and "diagnose full rc=0" in steps, steps
    res = json.load(open(tmp_path / "science" / "science.json"))
    for row in ("l_nce", "full"):
        assert res[row]["probe"]["primary"] == "shape"
        assert set(res[row]["probe"]["factors"]) == {"shape", "motion", "colour", "background"}
        assert "focus" in json.dumps(res[row]["diagnose"])
