"""Running a table: every missing (row, seed) run, then the missing diagnostics, then the summary
(:func:`run_table`); and the inputs of the command line: a training YAML as overrides
(:func:`config_file_overrides`) and a calibration file (:func:`read_calibration`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ctrlaug.errors import UsageError
from ctrlaug.studies.ablate.diagnostics import (
    DiagnoseFn,
    DiagnoseRandomFn,
    DiagnoseStartFn,
    OrderFn,
    add_diagnostics,
    diagnose_own_start,
    diagnose_random,
    diagnose_run,
    order_run,
)
from ctrlaug.studies.ablate.report import to_markdown, write_summary
from ctrlaug.studies.ablate.runs import TrainFn, plan_runs, run_one, train_and_probe
from ctrlaug.studies.ablate.summary import summarise

__all__ = ["run_table", "config_file_overrides", "read_calibration"]


def run_table(
    table: str,
    seeds: Sequence[int],
    out: str,
    extra: Sequence[str] = (),
    plot: bool = True,
    rows: Sequence[str] | None = None,
    diagnose: bool = True,
    *,
    calibration: dict | None = None,
    train_fn: TrainFn = train_and_probe,
    diagnose_fn: DiagnoseFn = diagnose_run,
    diagnose_random_fn: DiagnoseRandomFn = diagnose_random,
    diagnose_start_fn: DiagnoseStartFn = diagnose_own_start,
    order_fn: OrderFn = order_run,
) -> dict:
    """Run every missing (row, seed) of ``table`` (or of ``rows``) with ``train_fn``, add whatever
    diagnostics are missing (``diagnose=True``, :func:`add_diagnostics`: each run's diagnostics and
    order study, the own start and the random-init floor of every seed), then write and return the
    summary (with the demo gate per row when a ``calibration`` is given, see :func:`summarise`).

    The summary always lists every row of the table; rows without results show as missing.
    """
    plans = plan_runs(table, seeds, out, extra, rows)
    for i, p in enumerate(plans, 1):
        tag = f"[ctrlaug.ablate] {table} {i}/{len(plans)} {p['row'].label} seed {p['seed']}"
        if p["done"]:
            print(f"{tag}: result exists, skipped")
            continue
        print(f"{tag}: training into {p['dir']}", flush=True)
        r = run_one(p, table, train_fn)
        print(f"{tag}: top-1 {r['top1']:.1f}% (random init {r['random_top1']:.1f}%) in {r['wall_s']:.0f}s")
    if diagnose:
        add_diagnostics(plans, table, out, diagnose_fn, diagnose_random_fn, diagnose_start_fn, order_fn)
    summary = summarise(table, seeds, out, calibration, rows)
    paths = write_summary(summary, out, plot=plot)
    print(to_markdown(summary))
    print(f"[ctrlaug.ablate] wrote {', '.join(paths.values())}")
    return summary


def config_file_overrides(path: str) -> list[str]:
    """The keys of a training YAML as ``key=value`` overrides (nested keys dotted, values in YAML
    flow syntax), so that every run of a table starts from that file: the runner's overrides are
    applied after them. ``out_dir`` is left out (each run has its own). ConfigError naming the file
    when it cannot be read."""
    from ctrlaug.config import ConfigError
    from ctrlaug.utils.cfgtools import read_yaml

    loaded = read_yaml(path, "--config file") or {}  # UTF-8, no aliases: one line naming it otherwise
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: must hold a mapping of keys")

    def flat(prefix: str, v) -> list[str]:
        if isinstance(v, dict):
            return [o for k, x in v.items() for o in flat(f"{prefix}{k}.", x)]
        return [f"{prefix[:-1]}={json.dumps(v)}"]

    return [o for k, v in loaded.items() if k != "out_dir" for o in flat(f"{k}.", v)]


def read_calibration(path: str, seeds: Sequence[int]) -> dict:
    """The calibration JSON at ``path``; ValueError naming the file when it is unreadable, not a
    calibration, or lacks one of ``seeds``."""
    try:
        with open(path) as f:
            cal = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--calibration {path}: cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(cal, dict) or not {"primary", "seeds", "factors"} <= set(cal):
        raise UsageError(f"--calibration {path}: not a calibration.json (needs primary, seeds, factors)")
    missing = sorted(set(seeds) - {int(k) for k in cal["seeds"]})
    if missing:
        raise UsageError(f"--calibration {path}: seeds {missing} were not calibrated (it has {cal['seeds']})")
    return cal
