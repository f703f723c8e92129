"""The ``list`` dataset format (issue 30): headerless ``path label`` / ``dir num_frames label``
lists as MMAction2, PyTorchVideo and VideoMAE write them."""

from __future__ import annotations

import os

import pytest
from data_fixtures import VideoPool, index_frames, make_frame_folder

from ctrlaug.augment import AugmentConfig
from ctrlaug.config import load_config
from ctrlaug.data import DataConfig, DatasetFormatError, build_dataset, load_records
from ctrlaug.data.records import format_splits

pytest.importorskip("av", reason="PyAV is a test dependency (pip install av)")

SMALL = AugmentConfig(size=32)
FAST = DataConfig(short_side=48, min_frames=8)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """videos/<cls>/<k>.mp4 for 2 classes, and a frame folder rawframes/c/clip0."""
    r = tmp_path_factory.mktemp("list")
    pool = VideoPool(str(tmp_path_factory.mktemp("pool")), n=2, frames=24)
    for c in ("a", "b"):
        for k in range(2):
            pool.copy(os.path.join(r, "videos", c, f"{k}.mp4"))
    make_frame_folder(str(r / "rawframes" / "c" / "clip0"), index_frames(20, 48, 64))
    return r


def test_video_list_spaces_tabs_comments_and_missing(root):
    (root / "train.txt").write_text(
        "# MMAction2 video list\n"
        "a/0.mp4 0\n"
        "a/1.mp4\t0\n"
        "\n"
        "b/0.mp4   1\n"
        f"{root / 'videos' / 'b' / '1.mp4'} 1\n"  # absolute
        "b/gone.mp4 1\n"
    )
    rl = load_records("list", str(root), "train")
    assert [os.path.relpath(r.path, root) for r in rl.records] == [
        "videos/a/0.mp4",
        "videos/a/1.mp4",
        "videos/b/0.mp4",
        "videos/b/1.mp4",
    ]
    assert [r.label for r in rl.records] == [0, 0, 1, 1] and rl.classes == ["0", "1"]
    assert len(rl.missing) == 1 and "train.txt:7" in rl.missing[0][1]
    ds = build_dataset("list", root / "train.txt", None, augment=SMALL, data=FAST)  # the file itself
    assert ds.labels == [0, 0, 1, 1] and ds[2]["label"] == 1 and ds[2]["skipped"] == []
    assert format_splits("list", str(root)) == ["train"]


def test_one_based_labels_are_detected_or_given(root):
    (root / "one.txt").write_text("a/0.mp4 1\nb/0.mp4 2\n")
    assert [r.label for r in load_records("list", str(root / "one.txt")).records] == [0, 1]
    assert [r.label for r in load_records("list", str(root / "one.txt"), label_offset=0).records] == [1, 2]
    # in a folder every list counts: a test split without class 0 keeps offset 0 when train has one
    d = root / "split"
    d.mkdir(exist_ok=True)
    (d / "train.txt").write_text(f"{root}/videos/a/0.mp4 0\n{root}/videos/b/0.mp4 1\n")
    (d / "test.txt").write_text(f"{root}/videos/b/1.mp4 1\n")
    (d / "notes.txt").write_text("not a list\n")  # not a split list: never read
    assert [r.label for r in load_records("list", str(d), "test").records] == [1]


def test_frame_folder_lines(root):
    (root / "frames.txt").write_text("c/clip0 16 0\n")
    rl = load_records("list", str(root / "frames.txt"), label_offset=0)
    (rec,) = rl.records
    assert rec.path == str(root / "rawframes" / "c" / "clip0") and rec.end_frame == 16 and rec.label == 0
    ds = build_dataset("list", root / "frames.txt", None, augment=SMALL, data=FAST, label_offset=0)
    s = ds[0]
    assert s["skipped"] == [] and s["num_frames"] == 16


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("a/0.mp4 0\nb/0.mp4\n", 2, "expected 'path label' or 'dir num_frames label', got 1 fields"),
        ("a/0.mp4 zero\n", 1, "label must be an integer, got 'zero'"),
        ("a/0.mp4 0\nc/clip0 16 0\n", 2, "3 fields where the lines above have 2"),
        ("c/clip0 x 0\n", 1, "num_frames must be a positive integer, got 'x'"),
        ("a/0.mp4 -1\n", 1, "label -1 with label_offset 0 is not a class index"),
        ("path label\na/0.mp4 0\n", 1, "looks like a header"),
        ("my video.mp4 0 1 2\n", 1, "paths with spaces are not supported"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, match):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(DatasetFormatError, match=match) as ei:
        load_records("list", str(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}:") and "\n" not in msg


def test_classes_file_and_missing_list(root, tmp_path):
    d = tmp_path / "named"
    d.mkdir()
    (d / "classes.txt").write_text("walk\nrun\n")
    (d / "train.txt").write_text(f"{root}/videos/a/0.mp4 0\n{root}/videos/b/0.mp4 2\n")
    with pytest.raises(DatasetFormatError, match=r"train.txt:2: label 2 .* of the 2 in .*classes.txt"):
        load_records("list", str(d), "train")
    (d / "train.txt").write_text(f"{root}/videos/a/0.mp4 0\n{root}/videos/b/0.mp4 1\n")
    assert load_records("list", str(d), "train").classes == ["walk", "run"]
    with pytest.raises(DatasetFormatError, match="val.txt"):
        load_records("list", str(d), "val")
    (d / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DatasetFormatError, match="no entries"):
        load_records("list", str(d / "empty.txt"))


def test_config_accepts_the_list_format(root):
    cfg = load_config(None, ["dataset=list", f"data_root={root / 'train.txt'}"])
    assert cfg.dataset == "list"


def test_the_label_offset_and_prefix_are_config_keys(root, tmp_path):
    """data.label_offset / data.list_prefix reach the list reader from a command line's key=value."""
    from ctrlaug.data import build_train_dataset

    (root / "one_based.txt").write_text("a/0.mp4 1\nb/0.mp4 2\n")
    base = ["dataset=list", f"data_root={root / 'one_based.txt'}", "augment.size=32", "data.short_side=48"]
    assert build_train_dataset(load_config(None, base)).labels == [0, 1]  # detected
    assert build_train_dataset(load_config(None, [*base, "data.label_offset=0"])).labels == [1, 2]  # given
    lst = tmp_path / "flat.txt"
    lst.write_text("0.mp4 0\n1.mp4 1\n")
    cfg = load_config(None, ["dataset=list", f"data_root={lst}", f"data.list_prefix={root / 'videos' / 'a'}"])
    assert [os.path.dirname(r.path) for r in build_train_dataset(cfg).records] == [
        str(root / "videos" / "a")
    ] * 2
