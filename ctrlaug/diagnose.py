"""Mechanism diagnostics of a pretrained encoder on the shapes benchmark:
``python -m ctrlaug.diagnose RUN_OR_CKPT [--random-init] [--order] [--out DIR] [--videos N] [--device D]``
writes ``diagnose.json`` and ``diagnose.md`` (docs/diagnostics.md explains how to read them).

A thin entry point (nothing imports it): the study is :mod:`ctrlaug.studies.diagnose`.
"""

from __future__ import annotations

import argparse
import sys

from ctrlaug.cli import run_cli
from ctrlaug.studies.diagnose import DiagnoseOptions, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctrlaug.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", metavar="RUN_OR_CKPT", help="ckpt_*.pt file or a run folder")
    p.add_argument("--random-init", action="store_true", help="random-init encoder of the same config")
    p.add_argument("--config", help="model/data config YAML (default: the checkpoint's own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--videos", type=int, default=256, help="held-out (and train) videos (default 256)")
    p.add_argument("--levels", type=int, default=4, help="tau_l levels per held-out clip (default 4)")
    p.add_argument("--seed", type=int, default=0, help="levels, video halves and probes (default 0)")
    p.add_argument("--out", help="output folder (default: the checkpoint's run folder)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument(
        "--order",
        action="store_true",
        help="the L_td order study instead: can clip order be read from the frozen features? (order.json)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), lambda args: run(DiagnoseOptions(**vars(args))), argv)


if __name__ == "__main__":
    sys.exit(main())
