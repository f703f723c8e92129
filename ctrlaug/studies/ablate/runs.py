"""One run of a table: its folder and overrides, the plan of every (row, seed) run, training and
probing it (:func:`train_and_probe`, the default ``train_fn``), its ``result.json`` on disk, and
the folders of the per-seed own start and random-init floor."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence

from ctrlaug.reports import write_json
from ctrlaug.studies.ablate.tables import Row, select_rows

__all__ = [
    "TrainFn",
    "run_dir",
    "run_overrides",
    "plan_runs",
    "train_and_probe",
    "run_one",
    "load_result",
    "write_result",
    "own_start_dir",
    "random_init_dir",
    "missing_runs",
]

#: ``train_fn(overrides) -> {"top1", "random_top1", "train_top1", "steps", "primary", "factors"}``
TrainFn = Callable[[list[str]], dict]


def run_dir(out: str, table: str, row: Row, seed: int) -> str:
    return os.path.join(out, table, row.slug, f"seed{seed}")


def run_overrides(row: Row, seed: int, out_dir: str, extra: Sequence[str] = ()) -> list[str]:
    """Overrides of one run: kNN monitor off (the table reports the final linear probe only; a
    user's ``eval.knn_every=N`` turns it back on), the user's ``extra`` (budget, size), then the row's,
    then seed/out_dir.

    The row's overrides come after the user's so that a row always means what the paper's row means.
    """
    return [
        "eval.knn_every=0",
        *extra,
        *row.overrides,
        f"seed={seed}",
        f"out_dir={out_dir}",
        "eval.linear=true",
    ]


def plan_runs(
    table: str, seeds: Sequence[int], out: str, extra: Sequence[str] = (), rows: Sequence[str] | None = None
) -> list[dict]:
    """Every (row, seed) run of ``table``: its folder, overrides and whether its result exists."""
    plans = []
    for row in select_rows(table, rows):
        for seed in seeds:
            d = run_dir(out, table, row, seed)
            plans.append(
                {
                    "row": row,
                    "seed": seed,
                    "dir": d,
                    "overrides": run_overrides(row, seed, d, extra),
                    "done": os.path.exists(os.path.join(d, "result.json")),
                }
            )
    return plans


def train_and_probe(overrides: list[str]) -> dict:
    """The default ``train_fn`` of the runner: :func:`ctrlaug.engine.trainer.train`, then :func:`ctrlaug.eval.factors.run_probe` (every factor;
    ``<run>/probe.json`` is written as by the demo)."""
    from ctrlaug.config import load_config
    from ctrlaug.engine.trainer import train
    from ctrlaug.eval.factors import run_probe, write_probe

    cfg = load_config(None, overrides)
    result = train(cfg)
    trainer = result["trainer"]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = run_probe(cfg, trainer.obj.encoder, trainer.device)
    write_probe(cfg, res, time.perf_counter() - t0)
    return {
        "top1": float(res["trained"]["top1"]),
        "train_top1": float(res["trained"].get("train_top1", float("nan"))),
        "random_top1": float(res["random_init"]["top1"]),
        "steps": int(result["steps"]),
        "primary": res.get("primary"),
        "factors": res.get("factors"),
    }


def run_one(plan: dict, table: str, train_fn: TrainFn = train_and_probe) -> dict:
    """Train + probe one run with ``train_fn`` and write its ``result.json`` at once; returns the
    result."""
    t0 = time.perf_counter()
    os.makedirs(plan["dir"], exist_ok=True)
    res = train_fn(plan["overrides"])
    row: Row = plan["row"]
    out = {
        "table": table,
        "row": row.label,
        "seed": plan["seed"],
        "top1": res["top1"],
        "random_top1": res.get("random_top1"),
        "train_top1": res.get("train_top1"),
        "steps": res.get("steps"),
        "primary": res.get("primary"),
        "factors": res.get("factors"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "overrides": list(plan["overrides"]),
    }
    write_result(plan["dir"], out)
    return out


def load_result(d: str) -> dict | None:
    try:
        with open(os.path.join(d, "result.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def own_start_dir(out: str, table: str, seed: int) -> str:
    """``<out>/<table>/own_start/seed<k>/``: the diagnostics of the runs' own starting weights."""
    return os.path.join(out, table, "own_start", f"seed{seed}")


def random_init_dir(out: str, table: str, seed: int) -> str:
    """``<out>/<table>/random_init/seed<k>/``: the diagnostics of the random-init floor's inits."""
    return os.path.join(out, table, "random_init", f"seed{seed}")


def missing_runs(table: str, seeds: Sequence[int], out: str, rows: Sequence[str] | None = None) -> list[dict]:
    """The (row, seed) runs of ``table`` (or of ``rows``) that have no ``result.json`` yet:
    ``[{"row", "slug", "seed", "dir"}]`` in the planned order."""
    return [
        {"row": p["row"].label, "slug": p["row"].slug, "seed": p["seed"], "dir": p["dir"]}
        for p in plan_runs(table, seeds, out, rows=rows)
        if not p["done"]
    ]


def write_result(d: str, res: dict) -> None:
    """Write one run's ``<d>/result.json`` (atomically, indented)."""
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "result.json")
    write_json(path, res, indent=1)
