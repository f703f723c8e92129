"""Ablation runner: the paper's §4.4 ablations (Tables 4-7) on the embedded shapes benchmark.

    python -m ctrlaug.ablate {table4,table5,table6,table7} [--seeds 0,1,2] [--out runs/ablate]
                             [--epochs N] [--rows SLUG,...] [--dry-run] [key=value ...]

Each table is a list of :class:`Row` s: a label, the ``key=value`` overrides that realise the row on
top of the demo defaults of :class:`ctrlaug.config.TrainConfig`, and the linear-probe top-1 the
paper reports for it on UCF-101 and HMDB-51 (R3D-18 pretrained on UCF-101 for 150 epochs):

* Table 4 -- local-global sampling: number of local clips K and the temporal resolution T_v of the
  global feature (``augment.num_clips``, ``model.global_stride1_stages``: [3,4] -> 8, [4] -> 4, [] -> 2).
* Table 5 -- low-level augmentation levels: #B/C/S, #H, #G (``augment.levels_*``, ``augment.blur_levels``).
* Table 6 -- temporal dependency head: None / VCOP / MLP / GRU / GRU+MLP (``td``, ``td.head``).
* Table 7 -- learning objectives: L_nce, L_rc, L_mi, L_td switches (``nce``, ``rc``, ``mi``, ``td``).

For each row and seed the training runs in-process into ``<out>/<table>/<row-slug>/seed<k>/``,
then the linear probe of :func:`ctrlaug.eval.factors.run_probe`; the trained-encoder and random-init
top-1 go to ``result.json`` there as soon as the run ends, and runs whose ``result.json`` exists
are skipped (an interrupted ablation resumes; an interrupted *run* resumes from its checkpoint).
The summary goes to ``<out>/<table>.md``, ``<out>/<table>.json`` and, when matplotlib is
importable, ``<out>/<table>.png``. The shapes benchmark is CPU-sized: compare the *ordering* of
the rows with the paper's (Spearman rank correlation), not the absolute numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ctrlaug.errors import UsageError
from ctrlaug.reports import write_json, write_text

__all__ = [
    "Row",
    "TABLES",
    "TABLE_TITLES",
    "slugify",
    "spearman",
    "select_rows",
    "plan_runs",
    "run_one",
    "run_table",
    "train_and_probe",
    "diagnose_run",
    "diagnose_random",
    "add_diagnostics",
    "summarise",
    "write_summary",
]


@dataclass(frozen=True)
class Row:
    """One row of a paper ablation table."""

    label: str
    overrides: tuple[str, ...]
    ucf101: float  # paper's linear-probe top-1 on UCF-101 (%)
    hmdb51: float  # paper's linear-probe top-1 on HMDB-51 (%)

    @property
    def slug(self) -> str:
        return slugify(self.label)


def slugify(label: str) -> str:
    """File-system-safe name of a row label: ``'L_rc+L_mi'`` -> ``'l_rc-l_mi'``, ``'K=2 T_v=4'`` -> ``'k2-t_v4'``."""
    s = re.sub(r"[^a-z0-9_.]+", "-", label.lower().replace("=", ""))
    return s.strip("-") or "row"


# T_v of the global feature (16-frame global view) -> stages with temporal stride 1 (config.py).
_TV = {2: "[]", 4: "[4]", 8: "[3,4]"}


def _t4(k: int, tv: int, ucf: float, hmdb: float) -> Row:
    ov = [f"augment.num_clips={k}", f"model.global_stride1_stages={_TV[tv]}"]
    if k == 1:
        ov.append("td=false")  # L_td orders clips: needs K >= 2; the K=1 row is the paper's baseline
    return Row(f"K={k} T_v={tv}", tuple(ov), ucf, hmdb)


# Blur levels (kernel, sigma_lo, sigma_hi) for #G of Table 5. G=4 is the paper's (supplementary §1:
# 2 radii x 2 sigma ranges); G=2 keeps the 2 radii over one sigma range; G=5 adds a middle kernel.
BLUR_LEVELS = {
    2: "[[7,0.1,2.0],[11,0.1,2.0]]",
    4: "[[7,0.1,0.5],[7,0.5,2.0],[11,0.1,0.5],[11,0.5,2.0]]",
    5: "[[7,0.1,0.5],[7,0.5,2.0],[9,0.1,2.0],[11,0.1,0.5],[11,0.5,2.0]]",
}


def _t5(bcs: int, h: int, g: int, ucf: float, hmdb: float) -> Row:
    ov = [f"augment.levels_{n}={bcs}" for n in ("brightness", "contrast", "saturation")]
    ov += [f"augment.levels_hue={h}", f"augment.blur_levels={BLUR_LEVELS[g]}"]
    return Row(f"B/C/S={bcs} H={h} G={g}", tuple(ov), ucf, hmdb)


#: Paper Tables 4-7 (numbers copied from the paper; linear probe top-1 %, UCF-101 / HMDB-51).
TABLES: dict[str, list[Row]] = {
    # Table 4: local-global sampling (K clips, T_v). T_c = 2 for a 16-frame clip.
    "table4": [
        _t4(1, 2, 47.8, 26.3),
        _t4(2, 2, 50.1, 27.5),
        _t4(2, 4, 53.5, 28.9),
        _t4(3, 2, 51.5, 28.1),
        _t4(3, 4, 57.7, 29.7),
        _t4(3, 8, 58.3, 29.9),
        _t4(4, 4, 54.2, 28.4),
        _t4(4, 8, 60.1, 31.3),
    ],
    # Table 5: intensity levels of brightness/contrast/saturation, hue, Gaussian blur.
    "table5": [
        _t5(2, 2, 2, 55.2, 28.4),
        _t5(4, 2, 4, 60.1, 31.3),
        _t5(4, 4, 4, 58.3, 29.5),
        _t5(5, 2, 5, 59.4, 30.7),
    ],
    # Table 6: temporal dependency head of L_td.
    "table6": [
        Row("None", ("td=false",), 54.5, 28.3),
        Row("VCOP", ("td.head=vcop",), 57.6, 29.4),
        Row("MLP", ("td.head=mlp",), 58.8, 30.1),
        Row("GRU", ("td.head=gru",), 60.1, 31.3),
        Row("GRU+MLP", ("td.head=gru_mlp",), 60.5, 31.0),
    ],
    # Table 7: learning objectives (L_nce is the standard clip-level contrastive loss).
    "table7": [
        Row("L_nce", ("nce=true", "rc=false", "mi=false", "td=false"), 57.1, 30.3),
        Row("L_rc", ("rc=true", "mi=false", "td=false"), 61.4, 32.5),
        Row("L_rc+L_mi", ("rc=true", "mi=true", "td=false"), 66.2, 38.1),
        Row("L_rc+L_td", ("rc=true", "mi=false", "td=true"), 64.1, 36.4),
        Row("L_nce+L_mi+L_td", ("nce=true", "rc=false", "mi=true", "td=true"), 62.3, 35.9),
        Row("L_rc+L_mi+L_td", ("rc=true", "mi=true", "td=true"), 71.2, 44.1),
    ],
}

TABLE_TITLES = {
    "table4": "Table 4: local-global sampling (K local clips, T_v of the global feature)",
    "table5": "Table 5: low-level augmentation levels (#B/C/S, #H, #G)",
    "table6": "Table 6: temporal dependency head",
    "table7": "Table 7: learning objectives",
}


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


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


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value: no spread measured)."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


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


def select_rows(table: str, rows: Sequence[str] | None = None) -> list[Row]:
    """Rows of ``table`` named in ``rows`` (labels or slugs, any case), in that order; all rows
    (in the table's order) when None/empty."""
    if not rows:
        return list(TABLES[table])
    want = [r.strip().lower() for r in rows if r.strip()]
    # in the order asked for (the most informative runs first), each row once
    picked = [r for w in want for r in TABLES[table] if w in (r.label.lower(), r.slug)]
    picked = [r for i, r in enumerate(picked) if r not in picked[:i]]
    want = set(want)
    known = {r.label.lower() for r in picked} | {r.slug for r in picked}
    missing = sorted(want - known)
    if missing:
        valid = ", ".join(r.slug for r in TABLES[table])
        raise UsageError(f"unknown row(s) {', '.join(missing)} of {table}; valid: {valid}")
    return picked


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


#: Held-out videos the mechanism diagnostics use per run (ctrlaug.diagnose).
DIAGNOSE_VIDEOS = 256


def compact_diagnostics(d: dict) -> dict:
    """The numbers of a :func:`ctrlaug.studies.diagnose.diagnose` result that the tables show (%, ratio)."""
    return {
        "level": d["level"]["mean_top1"],
        "level_chance": d["level"]["mean_chance"],
        "lowlevel": d["level"]["applied"]["mean_top1"],
        "lowlevel_chance": d["level"]["applied"]["mean_chance"],
        "arrow": d["arrow"]["top1"],
        "focus": d["focus"]["ratio"],
        "focus_control": d["focus"].get("control"),
        "factors_knn": {k: v["knn"] for k, v in d["factors"].items()},
    }


def _diagnose_dir(d: str, cfg, encoder, videos: int) -> dict:
    from ctrlaug.studies.diagnose import diagnose, write_report

    full = diagnose(encoder, cfg, videos=videos, seed=cfg.seed)
    write_report(full, os.path.join(d, "diagnose"))
    return compact_diagnostics(full)


def diagnose_run(run_folder: str, videos: int = DIAGNOSE_VIDEOS) -> dict:
    """The default ``diagnose_fn`` of the runner: mechanism diagnostics of a finished run's encoder
    (its newest checkpoint) on ``videos`` held-out videos; also written to ``<run>/diagnose.json``
    and ``.md``."""
    from ctrlaug.eval.encoder import load_encoder

    enc, cfg, _ = load_encoder(run_folder, None, False)
    return _diagnose_dir(run_folder, cfg, enc, videos)


def diagnose_random(overrides: list[str], folder: str, videos: int = DIAGNOSE_VIDEOS) -> dict:
    """The default ``diagnose_random_fn``: the same diagnostics for the random-init encoder the
    probe compares against (the first init of the seed's floor, ctrlaug.eval.floor)."""
    import torch

    from ctrlaug.config import load_config
    from ctrlaug.eval.floor import random_init_seed
    from ctrlaug.models import build_encoder

    cfg = load_config(None, overrides)
    torch.manual_seed(random_init_seed(cfg.seed))
    return _diagnose_dir(
        folder, cfg, build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages), videos
    )


#: ``train_fn(overrides) -> {"top1", "random_top1", "train_top1", "steps", "primary", "factors"}``
TrainFn = Callable[[list[str]], dict]
#: ``diagnose_fn(run_folder) -> compact diagnostics`` (see :func:`compact_diagnostics`)
DiagnoseFn = Callable[[str], dict]
#: ``diagnose_random_fn(overrides, folder) -> compact diagnostics`` of the random-init encoder
DiagnoseRandomFn = Callable[[list[str], str], dict]


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
    _write_result(plan["dir"], out)
    return out


def _load_result(d: str) -> dict | None:
    try:
        with open(os.path.join(d, "result.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def summarise(table: str, seeds: Sequence[int], out: str, calibration: dict | None = None) -> dict:
    """Mean ± std over seeds per row, random-init baseline and the rank correlation with the paper.

    With ``calibration`` (the JSON of ``python -m ctrlaug.calibrate`` for the same seeds), every
    row also gets ``gap_closed`` per seed (:func:`ctrlaug.studies.calibrate.gap_closed`) and ``gate``:
    whether it closes at least ``GATE_FRACTION`` of the gap on every seed it has run.
    """
    rows = []
    randoms: dict[int, float] = {}
    random_results: dict[int, dict] = {}
    for row in TABLES[table]:
        accs, results, done = [], [], []
        for seed in seeds:
            r = _load_result(run_dir(out, table, row, seed))
            if r is None:
                continue
            done.append(seed)
            accs.append(float(r["top1"]))
            results.append(r)
            if r.get("random_top1") is not None and seed not in randoms:
                randoms[seed] = float(r["random_top1"])
                random_results[seed] = r
        mean, std = _mean_std(accs)
        rows.append(
            {
                "label": row.label,
                "overrides": list(row.overrides),
                "n": len(accs),
                "top1": accs,
                "mean": mean,
                "std": std,
                "paper_ucf101": row.ucf101,
                "paper_hmdb51": row.hmdb51,
                **_extras(results, "trained"),
                **_gate(calibration, dict(zip(done, accs))),
            }
        )
    have = [r for r in rows if r["mean"] is not None]
    rho_ucf = spearman([r["mean"] for r in have], [r["paper_ucf101"] for r in have])
    rho_hmdb = spearman([r["mean"] for r in have], [r["paper_hmdb51"] for r in have])
    rmean, rstd = _mean_std(list(randoms.values()))
    rand = []
    for k in seeds:
        d = _load_result(os.path.join(out, table, "random_init", f"seed{k}")) or {}
        rand.append(
            {"factors": random_results.get(k, {}).get("factors"), "diagnostics": d.get("diagnostics")}
        )
    return {
        "table": table,
        "title": TABLE_TITLES[table],
        "seeds": list(seeds),
        "rows": rows,
        "random_init": {"mean": rmean, "std": rstd, "n": len(randoms), **_extras(rand, "random_init")},
        "spearman_ucf101": rho_ucf,
        "spearman_hmdb51": rho_hmdb,
        "rows_compared": len(have),
    }


def _gate(calibration: dict | None, top1: dict[int, float]) -> dict:
    """``{"gap_closed": {seed: fraction}, "gate": bool}`` of one row, or {} without a calibration."""
    if calibration is None or not top1:
        return {}
    from ctrlaug.studies.calibrate import GATE_FRACTION, gap_closed

    frac = gap_closed(calibration, top1)
    return {"gap_closed": frac, "gate": all(f >= GATE_FRACTION for f in frac.values())}


def _gate_lines(summary: dict) -> list[str]:
    rows = [r for r in summary["rows"] if "gap_closed" in r]
    if not rows:
        return []
    seeds = summary["seeds"]
    lines = [
        "Demo gate: the fraction of the gap from the random-init probe to the supervised ceiling "
        "(calibration, per seed) that each row closes; it holds when every seed closes >= 1/3.",
        "",
        "| row | " + " | ".join(f"seed {k}" for k in seeds) + " | gate |",
        "|---|" + "---|" * len(seeds) + "---|",
    ]
    for r in rows:
        g = {int(k): v for k, v in r["gap_closed"].items()}
        cells = [f"{g[k]:.2f}" if k in g else "—" for k in seeds]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {'holds' if r['gate'] else 'fails'} |")
    return lines + [""]


DIAG_COLUMNS = ("lowlevel", "level", "arrow", "focus")


def _extras(results: list[dict], which: str) -> dict:
    """Per-factor probe and diagnostic values over seeds: ``{"factors": {f: [..]}, "diag": {k: [..]}}``."""
    factors: dict[str, list[float]] = {}
    diag: dict[str, list[float]] = {k: [] for k in DIAG_COLUMNS}
    for r in results:
        for f, v in (r.get("factors") or {}).items():
            factors.setdefault(f, []).append(float(v[which]))
        d = r.get("diagnostics")
        if d:
            for k in DIAG_COLUMNS:
                if d.get(k) is not None:
                    diag[k].append(float(d[k]))
    return {"factors": factors, "diag": diag}


def _fmt(m: float | None, s: float | None) -> str:
    if m is None:
        return "—"
    return f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"


def ordering_sentence(summary: dict) -> str:
    """One sentence stating whether our row ordering matches the paper's (by Spearman's rho)."""
    rho = summary["spearman_ucf101"]
    n = summary["rows_compared"]
    if rho is None:
        return f"Ordering vs the paper: undefined ({n} row(s) with results, or constant accuracies)."
    if rho >= 0.999:
        verdict = "matches the paper's ordering exactly"
    elif rho >= 0.5:
        verdict = "largely matches the paper's ordering"
    elif rho > -0.5:
        verdict = "does not clearly match the paper's ordering"
    else:
        verdict = "is largely the reverse of the paper's ordering"
    hm = summary["spearman_hmdb51"]
    hm_s = "undefined" if hm is None else f"{hm:+.2f}"
    return (
        f"Our ordering of the {n} rows {verdict}: Spearman rank correlation between our mean top-1 "
        f"and the paper's UCF-101 top-1 is {rho:+.2f} (HMDB-51: {hm_s})."
    )


def to_markdown(summary: dict) -> str:
    lines = [
        f"# {summary['title']}",
        "",
        "Linear-probe top-1 (%) of the primary factor of the embedded shapes benchmark (CPU-sized; see "
        "docs/ablation.md) beside the paper's UCF-101 / HMDB-51 numbers.",
        "",
        "| row | ours top-1 (mean ± std) | n | paper UCF-101 | paper HMDB-51 |",
        "|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['label']} | {_fmt(r['mean'], r['std'])} | {r['n']} | {r['paper_ucf101']:.1f} | "
            f"{r['paper_hmdb51']:.1f} |"
        )
    ri = summary["random_init"]
    lines += [
        "",
        f"Random-init encoder baseline: {_fmt(ri['mean'], ri['std'])} (n={ri['n']} seeds).",
        "",
        ordering_sentence(summary),
        "",
    ]
    lines += _gate_lines(summary)
    lines += _factor_table(summary)
    return "\n".join(lines)


def _ms(xs: list[float] | None, digits: int = 1) -> str:
    m, s = _mean_std(xs or [])
    if m is None:
        return "—"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _factor_table(summary: dict) -> list[str]:
    """Every factor's probe and the mechanism diagnostics per row (mean ± std over seeds)."""
    everyone = [*summary["rows"], {"label": "random init", **summary["random_init"]}]
    factors: list[str] = []
    for r in everyone:
        factors += [f for f in r.get("factors", {}) if f not in factors]
    if not factors:
        return []
    head = [
        "row",
        *factors,
        "applied low-level (L_mi: lower)",
        "L_mi level bins",
        "arrow of time (L_td: higher)",
        "CAAM focus",
    ]
    lines = [
        "Every factor's linear-probe top-1 (%) and the mechanism diagnostics (ctrlaug.diagnose, "
        "docs/diagnostics.md): decodability of the low-level transform applied to a view (mean over "
        "brightness, contrast, saturation, hue, blur; 4 equal-count bins, chance 25%) and of the L_mi "
        "level bins, the arrow of time (%, chance 50) and the CAAM focus ratio on the moving object "
        "(1 = no preference).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in everyone:
        d = r.get("diag", {})
        cells = [_ms(r.get("factors", {}).get(f)) for f in factors]
        cells += [_ms(d.get("lowlevel")), _ms(d.get("level")), _ms(d.get("arrow")), _ms(d.get("focus"), 2)]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plot(summary: dict, path: str) -> str | None:
    """Bar chart of ours (with error bars) beside the paper's UCF-101 (separate axes); None if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable; skipped the bar chart"
    rows = summary["rows"]
    labels = [r["label"] for r in rows]
    x = list(range(len(rows)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows)), 4))
    a1.bar(
        x,
        [r["mean"] or 0.0 for r in rows],
        yerr=[r["std"] or 0.0 for r in rows],
        capsize=4,
        color="tab:blue",
    )
    ri = summary["random_init"]["mean"]
    if ri is not None:
        a1.axhline(ri, color="gray", ls="--", label="random init")
        a1.legend()
    a1.set_title("ours (shapes benchmark, mean ± std over seeds)")
    a1.set_ylabel("linear probe top-1 (%)")
    w = 0.4
    a2.bar([i - w / 2 for i in x], [r["paper_ucf101"] for r in rows], w, label="UCF-101")
    a2.bar([i + w / 2 for i in x], [r["paper_hmdb51"] for r in rows], w, label="HMDB-51")
    a2.set_title("paper")
    a2.legend()
    for a in (a1, a2):
        a.set_xticks(x)
        a.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    fig.suptitle(summary["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_summary(summary: dict, out: str, plot: bool = True) -> dict[str, str]:
    """Write ``<out>/<table>.md``, ``.json`` and (matplotlib permitting) ``.png``; returns the paths."""
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, summary["table"])
    paths = {"md": base + ".md", "json": base + ".json"}
    write_text(paths["md"], to_markdown(summary))
    write_json(paths["json"], summary, indent=1)
    if plot:
        note = _plot(summary, base + ".png")
        if note:
            print(f"[ctrlaug.ablate] {note}")
        else:
            paths["png"] = base + ".png"
    return paths


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
) -> dict:
    """Run every missing (row, seed) of ``table`` (or of ``rows``) with ``train_fn``, add the
    mechanism diagnostics (``diagnose_fn``, ``diagnose_random_fn``) to every finished run that
    lacks them (``diagnose=True``), then write and return the summary (with the demo gate per row
    when a ``calibration`` is given, see :func:`summarise`).

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
        add_diagnostics(plans, table, out, diagnose_fn, diagnose_random_fn)
    summary = summarise(table, seeds, out, calibration)
    paths = write_summary(summary, out, plot=plot)
    print(to_markdown(summary))
    print(f"[ctrlaug.ablate] wrote {', '.join(paths.values())}")
    return summary


def _write_result(d: str, res: dict) -> None:
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "result.json")
    write_json(path, res, indent=1)


def add_diagnostics(
    plans: list[dict],
    table: str,
    out: str,
    diagnose_fn: DiagnoseFn = diagnose_run,
    diagnose_random_fn: DiagnoseRandomFn = diagnose_random,
) -> None:
    """Diagnose every finished run of ``plans`` whose ``result.json`` has no diagnostics yet
    (``diagnose_fn``), and the random-init encoder of every seed (``diagnose_random_fn``, into
    ``<out>/<table>/random_init/seed<k>/``); resumable."""
    for p in plans:
        res = _load_result(p["dir"])
        if res is not None and not res.get("diagnostics"):
            print(f"[ctrlaug.ablate] diagnosing {p['dir']}", flush=True)
            res["diagnostics"] = diagnose_fn(p["dir"])
            _write_result(p["dir"], res)
    for seed in sorted({p["seed"] for p in plans}):
        d = os.path.join(out, table, "random_init", f"seed{seed}")
        if _load_result(d) is None:
            first = next(p for p in plans if p["seed"] == seed)
            print(f"[ctrlaug.ablate] diagnosing the random-init encoder of seed {seed}", flush=True)
            _write_result(d, {"seed": seed, "diagnostics": diagnose_random_fn(first["overrides"], d)})


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


def _read_calibration(path: str, seeds: Sequence[int]) -> dict:
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
