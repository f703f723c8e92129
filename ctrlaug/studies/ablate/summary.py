"""The summary of a table: per row the mean ± std over seeds, every factor and diagnostic, the
differences from the runs' own start, the demo gate against a calibration, and the rank
correlation (Spearman) of our ordering of the rows with the paper's."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ctrlaug.studies.ablate.diagnostics import (
    DIAG_COLUMNS,
    flat_diagnostics,
    floor_inits,
    floor_of,
    start_key,
)
from ctrlaug.studies.ablate.runs import load_result, missing_runs, own_start_dir, random_init_dir, run_dir
from ctrlaug.studies.ablate.tables import TABLE_TITLES, TABLES

__all__ = ["spearman", "mean_std", "summarise"]


def _ranks(xs: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties given their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); None if undefined (n < 2 or constant)."""
    if len(a) != len(b):
        raise ValueError(f"spearman: lengths differ ({len(a)} vs {len(b)})")
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value: no spread measured)."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _key_of(overrides: Sequence[str] | None) -> dict | None:
    from ctrlaug.config import load_config

    try:
        return start_key(load_config(None, list(overrides or ())))
    except Exception:  # an old or foreign result whose overrides no longer load: no own start
        return None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarise(
    table: str,
    seeds: Sequence[int],
    out: str,
    calibration: dict | None = None,
    rows: Sequence[str] | None = None,
) -> dict:
    """Mean ± std over seeds per row, random-init baseline and the rank correlation with the paper.

    With ``calibration`` (the JSON of ``python -m ctrlaug.calibrate`` for the same seeds), every
    row also gets ``gap_closed`` per seed (:func:`ctrlaug.studies.calibrate.gap_closed`) and ``gate``:
    whether it closes at least ``GATE_FRACTION`` of the gap on every seed it has run.

    Per row, ``per_seed`` (keyed by the seed as a string) holds the shape probe, every factor, every
    diagnostic (:func:`flat_diagnostics`), the own start's and the random floor's values, and
    ``minus_own_start`` (run - own start, per diagnostic; None where the own start was diagnosed with
    other encoder settings, :func:`start_key`); the table's ``own_start`` and ``random_floor`` per
    seed, and ``missing``: the runs of ``rows`` (default: every row) without a result.
    """
    own, floors = {}, {}
    for k in seeds:
        rec = load_result(own_start_dir(out, table, k))
        if rec and rec.get("diagnostics"):
            own[str(k)] = {"key": rec.get("key"), "diagnostics": flat_diagnostics(rec["diagnostics"])}
        inits = floor_inits(load_result(random_init_dir(out, table, k)))
        if inits:
            floors[str(k)] = {"n": len(inits), "floor": floor_of(inits)}
    rows_out = []
    randoms: dict[int, float] = {}
    random_results: dict[int, dict] = {}
    for row in TABLES[table]:
        accs, results, done, per_seed = [], [], [], {}
        for seed in seeds:
            r = load_result(run_dir(out, table, row, seed))
            if r is None:
                continue
            done.append(seed)
            accs.append(float(r["top1"]))
            results.append(r)
            if r.get("random_top1") is not None and seed not in randoms:
                randoms[seed] = float(r["random_top1"])
                random_results[seed] = r
            per_seed[str(seed)] = _per_seed(r, own.get(str(seed)), floors.get(str(seed)))
        mean, std = mean_std(accs)
        extras = _extras(results, "trained")
        for k in DIAG_COLUMNS:
            extras["diag"][f"{k}_minus_own_start"] = [
                v["minus_own_start"][k] for v in per_seed.values() if v["minus_own_start"].get(k) is not None
            ]
        rows_out.append(
            {
                "label": row.label,
                "overrides": list(row.overrides),
                "n": len(accs),
                "top1": accs,
                "mean": mean,
                "std": std,
                "paper_ucf101": row.ucf101,
                "paper_hmdb51": row.hmdb51,
                **extras,
                "per_seed": per_seed,
                **_gate(calibration, dict(zip(done, accs))),
            }
        )
    have = [r for r in rows_out if r["mean"] is not None]
    rho_ucf = spearman([r["mean"] for r in have], [r["paper_ucf101"] for r in have])
    rho_hmdb = spearman([r["mean"] for r in have], [r["paper_hmdb51"] for r in have])
    rmean, rstd = mean_std(list(randoms.values()))
    rand = []
    for k in seeds:
        f = floors.get(str(k), {}).get("floor", {})
        means = {c: v["mean"] for c, v in f.items()}
        rand.append({"factors": random_results.get(k, {}).get("factors"), "diagnostics": means})
    start = [{"diagnostics": v["diagnostics"]} for v in own.values()]
    return {
        "table": table,
        "title": TABLE_TITLES[table],
        "seeds": list(seeds),
        "rows": rows_out,
        "random_init": {"mean": rmean, "std": rstd, "n": len(randoms), **_extras(rand, "random_init")},
        "own_start": {"per_seed": own, **_extras(start, "trained")},
        "random_floor": floors,
        "missing": missing_runs(table, seeds, out, rows),
        "spearman_ucf101": rho_ucf,
        "spearman_hmdb51": rho_hmdb,
        "rows_compared": len(have),
    }


def _per_seed(r: dict, own: dict | None, floor: dict | None) -> dict:
    """One run's record in the summary: probe, factors, diagnostics, own start, floor, differences."""
    diag = flat_diagnostics(r.get("diagnostics"))
    same = own is not None and own.get("key") is not None and own["key"] == _key_of(r.get("overrides"))
    start = own["diagnostics"] if same else None
    return {
        "top1": float(r["top1"]),
        "factors": {f: v.get("trained") for f, v in (r.get("factors") or {}).items()},
        "diagnostics": diag,
        "own_start": start,
        "random_floor": floor["floor"] if floor else None,
        "minus_own_start": {k: _sub(diag.get(k), (start or {}).get(k)) for k in DIAG_COLUMNS},
    }


def _gate(calibration: dict | None, top1: dict[int, float]) -> dict:
    """``{"gap_closed": {seed: fraction}, "gate": bool}`` of one row, or {} without a calibration."""
    if calibration is None or not top1:
        return {}
    from ctrlaug.studies.calibrate import GATE_FRACTION, gap_closed

    frac = gap_closed(calibration, top1)
    return {"gap_closed": frac, "gate": all(f >= GATE_FRACTION for f in frac.values())}


def _extras(results: list[dict], which: str) -> dict:
    """Per-factor probe and diagnostic values over seeds: ``{"factors": {f: [..]}, "diag": {k: [..]}}``
    (``diag`` also holds ``focus_minus_control`` per seed)."""
    factors: dict[str, list[float]] = {}
    diag: dict[str, list[float]] = {k: [] for k in (*DIAG_COLUMNS, "focus_minus_control")}
    for r in results:
        for f, v in (r.get("factors") or {}).items():
            if isinstance(v, dict) and v.get(which) is not None:
                factors.setdefault(f, []).append(float(v[which]))
        if r.get("diagnostics"):
            d = flat_diagnostics(r["diagnostics"])
            for k in DIAG_COLUMNS:
                if d.get(k) is not None:
                    diag[k].append(d[k])
            gap = _sub(d.get("focus"), d.get("focus_control"))
            if gap is not None:
                diag["focus_minus_control"].append(gap)
    return {"factors": factors, "diag": diag}
