"""Calibrate a benchmark before comparing objectives on it: the supervised ceiling and the
random-init floor of every factor, at the pretraining run's own budget.

``python -m ctrlaug.calibrate [--config FILE.yaml] [key=value ...] [--seeds 0,1,2] [--out DIR]``
reads the same configuration as ``python -m ctrlaug.train`` (the embedded demo by default) and,
for every labelled factor of its dataset (shape, motion, colour, background on the shapes
benchmark; the class on a real dataset):

* **supervised ceiling**: the same encoder (arch, width), from random init, trained *with that
  factor's labels* for as many steps and videos per step as the pretraining run takes
  (``epochs x ceil(videos / batch_size)``), Adam at the run's lr, on one random centre clip of
  each video per step (horizontal flips only where a mirror cannot change the factor); top-1 of
  the test split, softmax averaged over the probe clips;
* **random-init floor**: the linear probe of a random-init encoder (the demo's probe);
* **chance**: the test split's majority-class rate.

Writes ``<out>/calibration.json`` and ``calibration.md``. A benchmark is usable for comparing
pretraining objectives when the primary factor's ceiling is high (>= 80%) and the floor far below
it (docs/benchmark.md). Tune a benchmark against these two numbers only, never against the
objectives' results.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from ctrlaug.config import ConfigError, TrainConfig, config_to_dict
from ctrlaug.errors import UsageError
from ctrlaug.eval.factors import probe_datasets
from ctrlaug.eval.finetune import finetune
from ctrlaug.eval.floor import mean_spread, random_init_seed
from ctrlaug.eval.linear import factor_probe
from ctrlaug.models import build_encoder

__all__ = ["supervised_ceiling", "random_init_floor", "calibrate", "gap_closed", "GATE_FRACTION"]

# The demo gate (docs/benchmark.md): pretraining must close at least this fraction of the gap from
# the random-init probe to the supervised ceiling, on the primary factor, for every seed.
GATE_FRACTION = 1.0 / 3.0

# Factors whose label a horizontal mirror changes (right <-> left): no flip augmentation for them.
MIRROR_SENSITIVE = ("motion",)


class _FactorLabelled(torch.utils.data.Dataset):
    """An eval-mode dataset whose ``label`` is one factor's label."""

    def __init__(self, ds, factor: str) -> None:
        self.ds, self.labels = ds, ds.factor_labels()[factor]

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        return {"views": self.ds[index]["views"], "label": int(self.labels[index])}


def pretrain_steps(cfg: TrainConfig, num_videos: int) -> int:
    """Optimizer steps of the pretraining run of ``cfg`` on ``num_videos`` videos."""
    per_epoch = math.ceil(num_videos / cfg.batch_size)
    if cfg.optim.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.optim.max_steps_per_epoch)
    return per_epoch * cfg.epochs


def supervised_ceiling(
    cfg: TrainConfig, factor: str, *, seed: int = 0, steps: int | None = None, log=None
) -> dict:
    """Train the config's encoder from random init with ``factor``'s labels; test top-1 (%)."""
    train_set, test_set = probe_datasets(cfg)
    steps = steps or pretrain_steps(cfg, len(train_set))
    epochs = max(1, round(steps * cfg.batch_size / len(train_set)))
    torch.manual_seed(seed)
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    n_cls = len(train_set.factor_classes()[factor])
    mirror_ok = factor not in MIRROR_SENSITIVE and not (
        factor == train_set.primary_factor and train_set.mirror_changes_labels
    )
    t0 = time.perf_counter()
    res = finetune(
        enc,
        _FactorLabelled(train_set, factor),
        _FactorLabelled(test_set, factor),
        n_cls,
        epochs=epochs,
        lr=cfg.optim.lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.optim.weight_decay,
        seed=seed,
        flip=mirror_ok,
        num_workers=cfg.num_workers,
        log=log,
    )
    return {
        "top1": res["video_top1"],
        "clip_top1": res["clip_top1"],
        "train_loss": res["train_loss"],
        "epochs": epochs,
        "steps": epochs * math.ceil(len(train_set) / cfg.batch_size),
        "flip": mirror_ok,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def random_init_floor(cfg: TrainConfig, *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Linear probe of every factor on a random-init encoder (the demo's probe protocol)."""
    train_set, test_set = probe_datasets(cfg)
    torch.manual_seed(random_init_seed(seed))  # the first init of the run of `seed` (ctrlaug.eval.floor)
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return factor_probe(
            enc, train_set, test_set, epochs=cfg.eval.linear_epochs, num_workers=cfg.num_workers, seed=seed
        )


def calibrate(cfg: TrainConfig, seeds=(0,), factors=None, log=print) -> dict:
    """The calibration table: ``{"primary", "factors": {f: {"supervised": [..], "random_init": [..],
    "chance"}}, "steps", "config"}`` with one value per seed."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_set, _ = probe_datasets(cfg)
    names = list(factors or train_set.factor_classes())
    unknown = sorted(set(names) - set(train_set.factor_classes()))
    if unknown:
        raise ConfigError(
            f"unknown factor(s) {unknown}; dataset {cfg.dataset!r} has {sorted(train_set.factor_classes())}"
        )
    table: dict = {f: {"supervised": [], "random_init": [], "chance": None} for f in names}
    for seed in seeds:
        floor = random_init_floor(cfg, seed=seed)
        for f in names:
            table[f]["random_init"].append(floor[f]["top1"])
            table[f]["chance"] = floor[f]["chance"]
            sup = supervised_ceiling(cfg, f, seed=seed)
            table[f]["supervised"].append(sup["top1"])
            table[f].setdefault("runs", []).append(sup)
            log(
                f"[calibrate] seed {seed} {f}: supervised {sup['top1']:.1f}% ({sup['steps']} steps, "
                f"{sup['seconds']:.0f}s, loss {sup['train_loss'][0]:.2f}->{sup['train_loss'][-1]:.2f}) | "
                f"random-init probe {floor[f]['top1']:.1f}% | chance {floor[f]['chance']:.1f}%"
            )
    return {
        "primary": train_set.primary_factor,
        "dataset": cfg.dataset,
        "steps": pretrain_steps(cfg, len(train_set)),
        "seeds": list(seeds),
        "factors": table,
        "config": config_to_dict(cfg),
    }


def gap_closed(calibration: dict, top1: dict[int, float], factor: str | None = None) -> dict[int, float]:
    """Fraction of the gap from the random-init floor to the supervised ceiling that a pretrained
    encoder closes, per seed: ``(top1 - random_init) / (supervised - random_init)``.

    ``calibration``: the dict :func:`calibrate` returns (or its JSON); ``top1``: seed -> probe
    top-1 % of the pretrained encoder on ``factor`` (default: the primary one). Every seed must
    have been calibrated, and its ceiling must lie above its floor (else the gap is undefined).
    """
    factor = factor or calibration["primary"]
    if factor not in calibration["factors"]:
        raise UsageError(f"factor {factor!r} not in the calibration (has {sorted(calibration['factors'])})")
    row = calibration["factors"][factor]
    index = {int(s): i for i, s in enumerate(calibration["seeds"])}
    out = {}
    for seed, t in top1.items():
        if int(seed) not in index:
            raise UsageError(f"seed {seed} was not calibrated (calibrated seeds: {sorted(index)})")
        i = index[int(seed)]
        sup, floor = row["supervised"][i], row["random_init"][i]
        if sup <= floor:
            raise UsageError(
                f"seed {seed}, factor {factor!r}: supervised ceiling {sup:.1f}% is not above the "
                f"random-init floor {floor:.1f}%, so the gap is undefined"
            )
        out[int(seed)] = (t - floor) / (sup - floor)
    return out


def to_markdown(res: dict) -> str:
    def cell(xs):
        if not xs:
            return "-"
        ms = mean_spread(xs)
        if len(xs) == 1:
            return f"{ms['mean']:.1f}"
        return f"{ms['mean']:.1f} ± {ms['std']:.1f} ({ms['min']:.1f}-{ms['max']:.1f})"

    lines = [
        f"Calibration of `{res['dataset']}` (primary factor: {res['primary']}; {res['steps']} steps; "
        f"seeds {res['seeds']}). Top-1 % on the test split; ranges over seeds.",
        "",
        "| factor | supervised ceiling | random-init probe | chance |",
        "|---|---|---|---|",
    ]
    for f, r in res["factors"].items():
        star = " (primary)" if f == res["primary"] else ""
        lines.append(
            f"| {f}{star} | {cell(r['supervised'])} | {cell(r['random_init'])} | {r['chance']:.1f} |"
        )
    return "\n".join(lines) + "\n"
