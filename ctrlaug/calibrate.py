"""Calibrate the benchmark before comparing objectives on it:
``python -m ctrlaug.calibrate [--config FILE] [--seeds 0,1,2] [--factors ...] [--out DIR] [key=value ...]``
writes the supervised ceiling and the random-init floor of every factor (``calibration.json``,
``calibration.md``).

A thin entry point (nothing imports it): the study is :mod:`ctrlaug.studies.calibrate`.
"""

from __future__ import annotations

import argparse
import os
import sys

from ctrlaug.cli import parse_seeds, run_cli
from ctrlaug.config import load_config
from ctrlaug.reports import write_report
from ctrlaug.studies.calibrate import calibrate, to_markdown
from ctrlaug.utils.safeio import check_output_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctrlaug.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="training YAML (default: the embedded demo)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--factors", default=None, help="comma-separated factors (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: <out_dir>/calibration)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for ctrlaug.train")
    return p


def _run(a) -> None:
    cfg = load_config(a.config, a.overrides)
    seeds = parse_seeds(a.seeds)
    out = check_output_dir(a.out or os.path.join(cfg.out_dir, "calibration"), "--out folder")
    res = calibrate(cfg, seeds, a.factors.split(",") if a.factors else None)
    md = to_markdown(res)
    write_report(os.path.join(out, "calibration"), res, md)
    print(md + f"-> {out}/calibration.json")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
