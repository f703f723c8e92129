"""The read-out printed after pretraining: a linear probe of every labelled factor for the trained
encoder, beside the random-init floor over :data:`ctrlaug.eval.floor.FLOOR_INITS` encoders,
written to ``<out_dir>/probe.json`` and ``probe.txt``; and the eval-mode datasets that probe and
the kNN monitor share.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ctrlaug.config import TrainConfig
from ctrlaug.data import build_train_dataset
from ctrlaug.eval.floor import FLOOR_INITS, mean_spread, random_init_seed
from ctrlaug.eval.linear import factor_probe
from ctrlaug.models import build_encoder
from ctrlaug.reports import write_json, write_text

__all__ = ["probe_datasets", "run_probe", "write_probe"]


def probe_datasets(cfg: TrainConfig):
    """(train, test) eval-mode datasets of the probe and the kNN monitor: ``split`` and
    ``eval.split``, ``eval.clips`` uniformly spaced centre-cropped clips per video."""
    aug = dataclasses.replace(cfg.augment, eval_clips=cfg.eval.clips)
    pcfg = dataclasses.replace(cfg, augment=aug)
    return tuple(build_train_dataset(pcfg, split, mode="eval") for split in (cfg.split, cfg.eval.split))


def run_probe(cfg: TrainConfig, encoder: torch.nn.Module, device: torch.device) -> dict:
    """Linear probe of every labelled factor, for ``encoder`` and for a random-init encoder of the
    same architecture (seeded ``cfg.seed + 1``), and the random-init floor over
    :data:`ctrlaug.eval.floor.FLOOR_INITS` such encoders (``random_init_floor``: mean and spread).

    Returns ``{"primary", "factors": {factor: {"trained", "random_init", "chance", "trained_train"}},
    "trained": {...}, "random_init": {...}}``; the last two hold the primary factor's
    ``top1``/``train_top1`` and the probe set sizes.
    """
    train_set, test_set = probe_datasets(cfg)
    kw = dict(epochs=cfg.eval.linear_epochs, num_workers=cfg.num_workers, seed=cfg.seed)
    trained = factor_probe(encoder, train_set, test_set, **kw)
    inits = []  # the random-init floor over FLOOR_INITS encoders (ctrlaug.eval.floor)
    for i in range(FLOOR_INITS):
        torch.manual_seed(random_init_seed(cfg.seed, i))
        rand = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages).to(device)
        inits.append(factor_probe(rand, train_set, test_set, **kw))
    random_init = inits[0]
    primary = train_set.primary_factor
    sizes = {"num_train": len(train_set), "num_test": len(test_set)}
    return {
        "primary": primary,
        "factors": {
            f: {
                "trained": trained[f]["top1"],
                "random_init": random_init[f]["top1"],
                "random_init_floor": mean_spread([r[f]["top1"] for r in inits]),
                "chance": trained[f]["chance"],
                "trained_train": trained[f]["train_top1"],
            }
            for f in trained
        },
        "trained": {**trained[primary], **sizes},
        "random_init": {**random_init[primary], **sizes},
    }


def write_probe(cfg: TrainConfig, res: dict, seconds: float) -> str:
    """Print the per-factor probe and write ``<out_dir>/probe.json`` (and ``probe.txt``)."""
    tr = res["trained"]
    lines = [
        f"linear probe on {cfg.dataset}/{cfg.eval.split} ({tr['num_train']} train / {tr['num_test']} test "
        f"videos, {seconds:.0f}s), top-1 %:",
        f"  {'factor':<12} {'trained':>8} {f'random-init ({FLOOR_INITS} inits)':>24} {'chance':>7}",
    ]
    for f, r in res["factors"].items():
        tag = "  (primary)" if f == res["primary"] else ""
        fl = r.get("random_init_floor") or {"mean": r["random_init"], "std": 0.0}
        floor = f"{fl['mean']:.1f} ± {fl['std']:.1f}"
        lines.append(f"  {f:<12} {r['trained']:>8.1f} {floor:>24} {r['chance']:>7.1f}{tag}")
    msg = "\n".join(lines)
    print(msg)
    write_text(os.path.join(cfg.out_dir, "probe.txt"), msg + "\n")
    out = {
        "primary": res["primary"],
        "factors": {
            f: {
                **{k: round(r[k], 2) for k in ("trained", "random_init", "chance")},
                **(
                    {"random_init_floor": {k: v for k, v in r["random_init_floor"].items()}}
                    if "random_init_floor" in r
                    else {}
                ),
            }
            for f, r in res["factors"].items()
        },
        "num_train": tr["num_train"],
        "num_test": tr["num_test"],
    }
    path = os.path.join(cfg.out_dir, "probe.json")
    write_json(path, out)
    return path
