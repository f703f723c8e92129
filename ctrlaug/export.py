"""Export the encoder of a pretraining run for use elsewhere:
``python -m ctrlaug.export RUN_OR_CKPT OUT [--format ctrlaug|safetensors|torchvision|mmaction2]``.

Formats: ``ctrlaug`` (default; backbone + metadata, ``ctrlaug.models.load_backbone`` reads it),
``safetensors`` (the same in a safetensors file), ``torchvision`` (VideoResNet keys; stock
``r3d_18()`` for ``model.arch=r3d18_tv``) and ``mmaction2`` (ResNet3d keys, ``r3d18_tv``/``r3d34_tv``).

RUN_OR_CKPT is a ``ckpt_*.pt`` or a run folder (its newest checkpoint). Bad input prints one
``error:`` line and exits with code 2. See docs/evaluation.md, "Using the encoder elsewhere".

A thin entry point (nothing imports it): the export is :mod:`ctrlaug.eval.export`.
"""

from __future__ import annotations

import argparse
import sys

from ctrlaug.cli import run_cli
from ctrlaug.eval.export import FORMATS, export


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctrlaug.export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="ckpt_*.pt file or a run folder")
    p.add_argument("out", metavar="OUT", help="output file (e.g. r3d18_ctrlaug.pt)")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default="ctrlaug",
        help="ctrlaug: backbone + metadata (default); safetensors: the same as a .safetensors file; "
        "torchvision: VideoResNet keys (stock r3d_18 for r3d18_tv; width 1); "
        "mmaction2: ResNet3d keys under backbone. (r3d18_tv/r3d34_tv, width 1)",
    )
    p.add_argument("--config", help="model config YAML (default: the checkpoint's own)")
    return p


def main(argv: list[str] | None = None) -> int:
    def go(a):
        meta = export(a.checkpoint, a.out, a.fmt, a.config)
        src = meta["source"]
        print(
            f"exported {meta['arch']} width {meta['width']} ({a.fmt}) from {src['checkpoint']} "
            f"(step {src['step']}, commit {src['git_commit'] or 'unknown'}) -> {a.out}"
        )

    return run_cli(build_parser(), go, argv)


if __name__ == "__main__":
    sys.exit(main())
