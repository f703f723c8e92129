"""The random-init floor: one seed convention for every tool that reports it.

A random-init encoder is the floor a pretrained encoder is compared against (docs/benchmark.md).
It is itself noisy (the shapes benchmark's colour probe moves by up to 20 points between inits),
so every floor is reported over :data:`FLOOR_INITS` initialisations, mean and spread:

* a run or tool invocation of seed ``s`` builds its random-init encoders after
  ``torch.manual_seed(random_init_seed(s, i))`` = ``s + 1 + i`` for ``i < FLOOR_INITS``;
* the probe classifiers and every other random choice keep the seed ``s`` itself;
* the first of them (``i = 0``, seed ``s + 1``) is the single random-init number of earlier
  versions (the demo's probe, calibrate, ablate), so old results stay comparable.

Used by ``ctrlaug.train`` (the demo probe), ``ctrlaug.calibrate``, ``ctrlaug.diagnose`` and
``ctrlaug.evaluate --random-init`` (through ``load_encoder``) and ``ctrlaug.ablate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["FLOOR_INITS", "random_init_seed", "mean_spread"]

#: Random initialisations every reported floor is taken over.
FLOOR_INITS = 3


def random_init_seed(seed: int, i: int = 0) -> int:
    """The torch seed of the ``i``-th random-init encoder of a run (or tool call) of ``seed``."""
    if i < 0:
        raise ValueError(f"random-init index must be >= 0, got {i}")
    return int(seed) + 1 + int(i)


def mean_spread(values: Sequence[float]) -> dict:
    """``{"mean", "std", "min", "max", "n", "values"}`` of a few numbers; std is the sample
    standard deviation (0 for one value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_spread needs at least one value")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}
