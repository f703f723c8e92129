"""Feature extraction sharded over torchrun ranks (issue 30): 2 CPU processes with gloo give the
features of one process, in dataset order, on every rank."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import TINY

from ctrlaug.config import load_config
from ctrlaug.eval.features import extract_clip_features
from ctrlaug.eval.protocols import build_eval_datasets
from ctrlaug.models import build_encoder

# two spawned processes on 2 busy cores: ~30 s
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# 5 test videos: an odd count, so the two ranks hold shares of different sizes (3 and 2)
SMALL = [*TINY, "synthetic.test_per_class=3", "synthetic.num_classes=2", "augment.eval_clips=2"]


def _setup():
    cfg = load_config(None, SMALL)
    _, te = build_eval_datasets(cfg, eval_clips=2)
    te = torch.utils.data.Subset(te, range(5))
    torch.manual_seed(0)
    enc = build_encoder("r3d18", 0.0625)
    return enc, te


def _worker(r, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=r, world_size=2)
    try:
        enc, te = _setup()
        f, y = extract_clip_features(enc, te, batch_size=1, shard=True)
        torch.save({"f": f, "y": y, "n": len(te)}, os.path.join(out, f"rank{r}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_one_process_features(tmp_path):
    enc, te = _setup()
    n = len(te)
    assert n % 2 == 1, n
    f1, y1 = extract_clip_features(enc, te, batch_size=1)
    init = f"file://{tmp_path / 'rdzv'}"
    mp.spawn(_worker, args=(init, str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["n"] == n
        assert torch.equal(got["y"], y1)
        assert got["f"].shape == f1.shape and torch.equal(got["f"], f1), (got["f"] - f1).abs().max()
    # without a process group, shard=True is the one-process path
    f2, _ = extract_clip_features(enc, te, batch_size=1, shard=True)
    assert torch.equal(f2, f1)
