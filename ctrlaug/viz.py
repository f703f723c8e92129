"""Pictures of what an encoder attends to:
``python -m ctrlaug.viz caam --checkpoint RUN_OR_CKPT --video clip.mp4 --out caam.png``.

A thin entry point (nothing imports it): the maps are :mod:`ctrlaug.studies.viz`.
"""

from __future__ import annotations

import argparse
import sys

from ctrlaug.cli import run_cli
from ctrlaug.studies.viz import run_caam


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctrlaug.viz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("caam", help="class-agnostic activation maps of videos as a PNG strip")
    c.add_argument("--checkpoint", help="ckpt_*.pt file or run folder")
    c.add_argument("--config", help="model config YAML (default: the checkpoint's own)")
    c.add_argument("--random-init", action="store_true", help="random-init encoder (baseline picture)")
    c.add_argument("--video", action="append", required=True, help="video file (repeat for several)")
    c.add_argument("--out", required=True, help="output PNG")
    c.add_argument("--gif", help="also write an animated GIF of the overlays here")
    c.add_argument("--frames", type=int, default=0, help="frames per clip (default: config clip_frames)")
    c.add_argument("--size", type=int, default=0, help="crop side (default: config augment.size)")
    c.add_argument("--columns", type=int, default=8, help="frames shown per video")

    def run(a) -> None:
        kw = {k: v for k, v in vars(a).items() if k not in ("cmd", "video", "out")}
        for w in run_caam(a.video, a.out, **kw):
            print(f"wrote {w}")

    return run_cli(p, run, argv)


if __name__ == "__main__":
    sys.exit(main())
