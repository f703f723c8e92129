"""Ablation runner, the paper's §4.4 ablations (Tables 4-7) on the embedded shapes benchmark:

    python -m ctrlaug.ablate {table4,table5,table6,table7} [--seeds 0,1,2] [--out runs/ablate]
                             [--epochs N] [--rows SLUG,...] [--dry-run] [key=value ...]

A thin entry point (nothing imports it): the tables, runs and summaries are
:mod:`ctrlaug.studies.ablate`.
"""

from __future__ import annotations

import argparse
import sys

from ctrlaug.cli import parse_seeds, run_cli
from ctrlaug.config import load_config
from ctrlaug.studies.ablate import (
    TABLE_TITLES,
    TABLES,
    DiagnoseFn,
    DiagnoseRandomFn,
    DiagnoseStartFn,
    OrderFn,
    TrainFn,
    config_file_overrides,
    diagnose_own_start,
    diagnose_random,
    diagnose_run,
    order_run,
    plan_runs,
    read_calibration,
    run_table,
    train_and_probe,
)
from ctrlaug.utils.safeio import check_output_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ctrlaug.ablate",
        allow_abbrev=False,
        description="Run a paper ablation table (§4.4, Tables 4-7) on the embedded shapes benchmark.",
    )
    p.add_argument("table", choices=sorted(TABLES), help="which paper table to reproduce")
    p.add_argument(
        "--config",
        default=None,
        help="training YAML every run starts from instead of the embedded demo (e.g. "
        "configs/shapes-grid4.yaml); its out_dir is ignored (runs live under --out)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", default="runs/ablate", help="output folder (default runs/ablate)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every run")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    p.add_argument("--rows", default="", help="comma-separated row slugs or labels to run (default: all)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG bar chart")
    p.add_argument("--no-diagnose", action="store_true", help="skip the mechanism diagnostics of each run")
    p.add_argument(
        "--calibration",
        default=None,
        help="calibration.json of `python -m ctrlaug.calibrate` for the same seeds: adds the demo gate "
        "(fraction of the random-init -> supervised gap closed, per seed) to the summary",
    )
    p.add_argument("overrides", nargs="*", help="key=value training overrides applied to every run")
    return p


def main(
    argv: list[str] | None = None,
    *,
    train_fn: TrainFn = train_and_probe,
    diagnose_fn: DiagnoseFn = diagnose_run,
    diagnose_random_fn: DiagnoseRandomFn = diagnose_random,
    diagnose_start_fn: DiagnoseStartFn = diagnose_own_start,
    order_fn: OrderFn = order_run,
) -> int:
    """The CLI; the hooks are those of :func:`run_table` (tests pass fast fakes)."""
    hooks = dict(
        train_fn=train_fn,
        diagnose_fn=diagnose_fn,
        diagnose_random_fn=diagnose_random_fn,
        diagnose_start_fn=diagnose_start_fn,
        order_fn=order_fn,
    )
    return run_cli(_parse, lambda parsed: _run(*parsed, hooks), argv)


def _parse(argv: list[str]):
    """``(args, rest)``: the known arguments and the ``key=value`` overrides mixed among them."""
    parser = _parser()
    args, rest = parser.parse_known_intermixed_args(argv)
    bad = [a for a in rest if "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    return args, rest


def _run(args, rest, hooks: dict) -> int:
    seeds = parse_seeds(args.seeds)
    extra = [o[2:] if o.startswith("--") else o for o in [*args.overrides, *rest]]
    if args.epochs is not None:
        extra.append(f"epochs={args.epochs}")
    if args.config:
        extra = [*config_file_overrides(args.config), *extra]
    rows = [r for r in args.rows.split(",") if r.strip()]
    plans = plan_runs(args.table, seeds, args.out, extra, rows)
    calibration = read_calibration(args.calibration, seeds) if args.calibration else None
    for p in plans:
        load_config(None, p["overrides"])  # fail fast on a bad override, before any training
    if not args.dry_run:
        check_output_dir(args.out, "--out folder")  # before the first run trains
    if args.dry_run:
        print(f"{TABLE_TITLES[args.table]}: {len(plans)} runs ({sum(p['done'] for p in plans)} done)")
        for p in plans:
            state = "done" if p["done"] else "todo"
            print(f"  [{state}] {p['row'].label} seed {p['seed']} -> {p['dir']}: {' '.join(p['overrides'])}")
        return 0
    run_table(
        args.table,
        seeds,
        args.out,
        extra,
        plot=not args.no_plot,
        rows=rows,
        diagnose=not args.no_diagnose,
        calibration=calibration,
        **hooks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
