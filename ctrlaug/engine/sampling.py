"""Data order and seeds of a pretraining run: every random choice is a function of (seed, purpose,
epoch or step, index), so a resumed run reproduces the uninterrupted one and a DDP run reproduces
one process on the same global batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ctrlaug.config import (
    ConfigError,
)
from ctrlaug.data import collate_views

__all__ = ["derive_seed", "EpochIndexed", "GlobalBatches", "collate_train"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, purpose, step, ...)."""
    s = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
    return (int(s[0]) << 31 ^ int(s[1])) & ((1 << 63) - 1)


class EpochIndexed(Dataset):
    """Keys are (epoch, index): the per-sample view seed (seed, epoch, index) travels with the key,
    so persistent DataLoader workers need no set_epoch broadcast."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        epoch, idx = key
        self.ds.set_epoch(epoch)
        return self.ds[idx]


class GlobalBatches:
    """Batch sampler: a (seed, epoch) permutation cut into global batches; this rank's slice.

    Rank r of W takes items [r*B/W, (r+1)*B/W) of every global batch, so gathering the ranks in
    order gives exactly the batch one process would see. Set ``epoch`` and ``start`` (batches to
    skip when resuming mid-epoch) before iterating.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int, world: int, max_steps: int = 0):
        if global_batch % world:
            raise ConfigError(
                f"bad training config: batch_size={global_batch} must be divisible by the {world} ranks"
            )
        if n < global_batch:
            raise ConfigError(f"bad training config: batch_size={global_batch} exceeds the dataset size {n}")
        self.n, self.B, self.seed, self.rank, self.world = n, global_batch, seed, rank, world
        self.steps = n // global_batch
        if max_steps:
            self.steps = min(self.steps, max_steps)
        self.epoch, self.start = 0, 0

    def __len__(self):
        return self.steps - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, 0, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.B // self.world
        for s in range(self.start, self.steps):
            batch = perm[s * self.B : (s + 1) * self.B]
            yield [(self.epoch, i) for i in batch[self.rank * per : (self.rank + 1) * per]]


def collate_train(samples):
    """The training DataLoader's collate: views and boxes; tau_l levels are drawn per step on the device."""
    return collate_views(samples, levels=False)
