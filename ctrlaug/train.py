"""Self-supervised pretraining: ``python -m ctrlaug.train [--config FILE] [key=value ...]``.

With no arguments it runs the embedded demo (a small-width R3D-18 on the factorised shapes
benchmark, CPU, a few minutes), then a linear probe of every factor for the trained encoder beside
the random-init floor, written to ``<out_dir>/probe.json``. ``--help`` lists every key.
``torchrun --nproc_per_node N -m ctrlaug.train ...`` runs DDP (gloo on CPU, nccl on CUDA);
``batch_size`` is the global batch, split evenly over the ranks.

A thin entry point (nothing imports it): the loop is :mod:`ctrlaug.engine.trainer`, the read-out
:mod:`ctrlaug.eval.factors`, the conventions of the command line :mod:`ctrlaug.cli`.
"""

from __future__ import annotations

import sys
import time
import warnings

import yaml

from ctrlaug.cli import run_cli
from ctrlaug.config import ConfigError, config_to_dict, help_text, load_config
from ctrlaug.engine.trainer import train
from ctrlaug.eval.factors import run_probe, write_probe
from ctrlaug.utils import dist as dist_utils


def _parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    path, overrides, want_help = None, [], False
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            want_help = True
        elif a == "--config":
            path = next(it, None)
            if path is None:
                raise ConfigError("bad training config: --config needs a YAML path")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif "=" not in a and a.endswith((".yaml", ".yml")):
            path = a
        elif a.startswith("--") and "=" in a:
            overrides.append(a[2:])
        else:
            overrides.append(a)
    return path, overrides, want_help


USAGE = """usage: python -m ctrlaug.train [--config FILE.yaml] [key=value ...]
       python -m ctrlaug.train --print-config [--config FILE.yaml] [key=value ...]
       torchrun --nproc_per_node N -m ctrlaug.train [--config FILE.yaml] [key=value ...]

No arguments: the embedded demo (small R3D-18, shapes benchmark, CPU, a few minutes), then a
linear probe of every factor for the trained encoder beside a random-init one (probe.json). Values given as key=value are parsed
as YAML (lists: key=[3,4] or key=3,4; nested: augment.num_clips=3, rc.tau=0.1; a loss's switch:
nce=true is nce.enabled=true).

keys (default  [type] {choices}):
"""


def _parse(argv: list[str]):
    """``(cfg or None, print_config)``; ``--help`` prints the usage and every key (cfg None)."""
    print_config = "--print-config" in argv
    path, overrides, want_help = _parse_args([a for a in argv if a != "--print-config"])
    if want_help:
        print(USAGE + help_text())
        return None, False
    return load_config(path, overrides), print_config


def _run(parsed) -> int:
    cfg, print_config = parsed
    if cfg is None:
        return 0
    if print_config:  # the resolved config (defaults < file < overrides), as config.yaml holds it
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    t0 = time.perf_counter()
    result = train(cfg)
    trainer = result["trainer"]
    if trainer.main:
        hist = result["history"]
        if hist:
            first = [h["loss"] for h in hist[: max(1, len(hist) // 10)] if not h.get("skipped")]
            last = [h["loss"] for h in hist[-max(1, len(hist) // 10) :] if not h.get("skipped")]
            if first and last:
                print(
                    f"[ctrlaug.train] {result['steps']} steps in {time.perf_counter() - t0:.0f}s; "
                    f"loss {sum(first) / len(first):.4f} (first 10%) -> {sum(last) / len(last):.4f} (last 10%)"
                )
        if cfg.eval.linear:
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = run_probe(cfg, trainer.obj.encoder, trainer.device)
            write_probe(cfg, res, time.perf_counter() - t1)
        print(f"[ctrlaug.train] total {time.perf_counter() - t0:.0f}s; run folder {cfg.out_dir}")
    if dist_utils.is_dist():
        dist_utils.barrier()
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parse, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
