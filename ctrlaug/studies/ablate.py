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
After training, :func:`add_diagnostics` adds whatever diagnostics are missing: each run's mechanism
diagnostics and L_td order study, and per seed the run's own starting weights
(``<out>/<table>/own_start/seed<k>/``) and the random-init floor over every init
(``<out>/<table>/random_init/seed<k>/``). The summary goes to ``<out>/<table>.md``,
``<out>/<table>.json`` (per row and seed every number, the run - own start differences and the
runs still missing) and, when matplotlib is importable, ``<out>/<table>.png``. The shapes benchmark is CPU-sized: compare the *ordering* of
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
from ctrlaug.utils.atomic import atomic_open

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
    "diagnose_own_start",
    "order_run",
    "own_start_objective",
    "own_start_encoder",
    "start_key",
    "own_start_dir",
    "random_init_dir",
    "flat_diagnostics",
    "floor_of",
    "missing_runs",
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
        "focus_rank": d["focus"].get("rank"),
        "factors_knn": {k: v["knn"] for k, v in d["factors"].items()},
    }


def compact_order(res: dict) -> dict:
    """The top-1 values (%) of a :func:`ctrlaug.studies.diagnose.order_study` result: the run's own
    L_td head (``own_head``: how often it scores the true order above a deranged one; None without
    a head, with ``own_head_bound`` its bound estimate) and the fresh probes on frozen features."""
    th = res.get("trained_head")
    return {
        "own_head": th.get("td_acc") if th else None,
        "own_head_bound": th.get("mi_td") if th else None,
        "probe_clips_and_global": res["probe_clips_and_global"]["top1"],
        "probe_clips_only": res["probe_clips_only"]["top1"],
        "probe_clips_in_global_crop": res["probe_clips_in_global_crop"]["top1"],
    }


def _diagnose_dir(d: str, cfg, encoder, videos: int, stem: str = "diagnose") -> dict:
    from ctrlaug.studies.diagnose import diagnose, write_report

    full = diagnose(encoder, cfg, videos=videos, seed=cfg.seed)
    write_report(full, os.path.join(d, stem))
    return compact_diagnostics(full)


def diagnose_run(run_folder: str, videos: int = DIAGNOSE_VIDEOS) -> dict:
    """The default ``diagnose_fn`` of the runner: mechanism diagnostics of a finished run's encoder
    (its newest checkpoint) on ``videos`` held-out videos; also written to ``<run>/diagnose.json``
    and ``.md``."""
    from ctrlaug.eval.encoder import load_encoder

    enc, cfg, _ = load_encoder(run_folder, None, False)
    return _diagnose_dir(run_folder, cfg, enc, videos)


def _order_dir(d: str, obj, cfg, videos: int, stem: str = "order", **extra) -> dict:
    from ctrlaug.studies.diagnose import order_study

    res = order_study(obj, cfg, videos=videos, seed=cfg.seed)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, stem + ".json"), {**extra, **res})
    return compact_order(res)


def order_run(run_folder: str, videos: int = DIAGNOSE_VIDEOS) -> dict:
    """The default ``order_fn``: the L_td order study (:func:`ctrlaug.studies.diagnose.order_study`)
    of a finished run's full objective (encoder and heads of its newest checkpoint, loaded as
    ``python -m ctrlaug.diagnose RUN --order`` does) on ``videos`` held-out videos, seeded with the
    run's seed; the full result goes to ``<run>/order.json``, the compact one (:func:`compact_order`)
    is returned."""
    import torch

    from ctrlaug.engine.build import build_objective
    from ctrlaug.eval.encoder import load_encoder
    from ctrlaug.utils.checkpoint import load_checkpoint

    enc, cfg, ckpt = load_encoder(run_folder, None, False)
    torch.manual_seed(cfg.seed)
    obj = build_objective(cfg)
    obj.encoder = enc
    obj.load_state_dict(load_checkpoint(ckpt)["model"])
    return _order_dir(run_folder, obj, cfg, videos, checkpoint=ckpt, random_init=False)


def own_start_objective(cfg):
    """The objective a run of ``cfg`` starts from, exactly as the trainer builds it
    (``Trainer._build``: ``torch.manual_seed(cfg.seed)``, then :func:`ctrlaug.engine.build.build_objective`),
    before any step. Leaves torch's global RNG as the trainer's build leaves it."""
    import torch

    from ctrlaug.engine.build import build_objective

    torch.manual_seed(cfg.seed)
    return build_objective(cfg)


def own_start_encoder(cfg):
    """The encoder weights a run of ``cfg`` starts from (see :func:`own_start_objective`)."""
    return own_start_objective(cfg).encoder


def start_key(cfg) -> dict:
    """The settings that decide a run's own-start encoder and what its diagnostics see: every row of
    a table that shares them shares one own-start diagnosis per seed."""
    return {
        "arch": cfg.model.arch,
        "width": cfg.model.width,
        "spatial_stride1_stages": list(cfg.model.spatial_stride1_stages),
        "size": cfg.augment.size,
        "clip_frames": cfg.augment.clip_frames,
        "eval_split": cfg.eval.split,
    }


def diagnose_own_start(overrides: list[str], folder: str, videos: int = DIAGNOSE_VIDEOS) -> dict:
    """The default ``diagnose_start_fn``: the diagnostics of the run's own starting weights
    (:func:`own_start_objective` of the config of ``overrides``; ``<folder>/diagnose.json``/``.md``)
    and the order study's fresh probes on its encoder (``<folder>/order.json``). The untrained L_td
    head differs between rows, so the own start's ``own_head`` is left out (None)."""
    from ctrlaug.config import load_config

    cfg = load_config(None, overrides)
    obj = own_start_objective(cfg)
    res = _diagnose_dir(folder, cfg, obj.encoder, videos)
    order = _order_dir(folder, obj, cfg, videos, checkpoint=None, own_start=True)
    res["order"] = {**order, "own_head": None, "own_head_bound": None}
    return res


def diagnose_random(overrides: list[str], folder: str, init: int = 0, videos: int = DIAGNOSE_VIDEOS) -> dict:
    """The default ``diagnose_random_fn``: the same diagnostics for init ``init`` of the random-init
    floor (seed ``random_init_seed(seed, init)``, ctrlaug.eval.floor); init 0 is the encoder the
    probe compares against. Written to ``<folder>/diagnose.json`` (init 0) or
    ``diagnose_init<i>.json``."""
    import torch

    from ctrlaug.config import load_config
    from ctrlaug.eval.floor import random_init_seed
    from ctrlaug.models import build_encoder

    cfg = load_config(None, overrides)
    torch.manual_seed(random_init_seed(cfg.seed, init))
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    return _diagnose_dir(folder, cfg, enc, videos, "diagnose" if init == 0 else f"diagnose_init{init}")


#: ``train_fn(overrides) -> {"top1", "random_top1", "train_top1", "steps", "primary", "factors"}``
TrainFn = Callable[[list[str]], dict]
#: ``diagnose_fn(run_folder) -> compact diagnostics`` (see :func:`compact_diagnostics`)
DiagnoseFn = Callable[[str], dict]
#: ``diagnose_random_fn(overrides, folder, init) -> compact diagnostics`` of init ``init`` of the floor
DiagnoseRandomFn = Callable[[list[str], str, int], dict]
#: ``diagnose_start_fn(overrides, folder) -> compact diagnostics`` (with ``order``) of the own start
DiagnoseStartFn = Callable[[list[str], str], dict]
#: ``order_fn(run_folder) -> compact order study`` (see :func:`compact_order`)
OrderFn = Callable[[str], dict]


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


#: Order-study columns of the summary -> keys of :func:`compact_order`.
_ORDER_COLUMNS = {
    "order_head": "own_head",
    "order_probe": "probe_clips_and_global",
    "order_clips_only": "probe_clips_only",
    "order_global_crop": "probe_clips_in_global_crop",
}

#: Every diagnostic the summary carries (:func:`flat_diagnostics`); old results lack some (None).
DIAG_COLUMNS = (
    "lowlevel",
    "level",
    "arrow",
    "focus",
    "focus_control",
    "focus_rank",
    *_ORDER_COLUMNS,
)


def flat_diagnostics(d: dict | None) -> dict[str, float | None]:
    """The :data:`DIAG_COLUMNS` of a stored compact diagnostics dict (the order study's nested under
    ``order``), plus ``knn_<factor>``; a value that is absent (an old result) is None."""
    d = d or {}
    out: dict[str, float | None] = {k: d.get(k) for k in DIAG_COLUMNS if k not in _ORDER_COLUMNS}
    order = d.get("order") or {}
    out.update({k: order.get(v, d.get(k)) for k, v in _ORDER_COLUMNS.items()})  # d.get: already flat
    out.update({k: v for k, v in d.items() if k.startswith("knn_")})
    out.update({f"knn_{f}": v for f, v in (d.get("factors_knn") or {}).items()})
    return {k: None if v is None else float(v) for k, v in out.items()}


def floor_of(inits: Sequence[dict]) -> dict:
    """Mean and spread (:func:`ctrlaug.eval.floor.mean_spread`: mean, std, min, max, n, values) of
    every diagnostic over the inits of a random-init floor, where every init has it."""
    from ctrlaug.eval.floor import mean_spread

    flats = [flat_diagnostics(d) for d in inits]
    if not flats:
        return {}
    keys = [k for k in flats[0] if all(f.get(k) is not None for f in flats)]
    return {k: mean_spread([f[k] for f in flats]) for k in keys}


def _floor_inits(rec: dict | None) -> list[dict]:
    """The init diagnostics of a random_init result.json; an old one holds only ``diagnostics``."""
    if not rec:
        return []
    return list(rec.get("inits") or ([rec["diagnostics"]] if rec.get("diagnostics") else []))


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
        rec = _load_result(own_start_dir(out, table, k))
        if rec and rec.get("diagnostics"):
            own[str(k)] = {"key": rec.get("key"), "diagnostics": flat_diagnostics(rec["diagnostics"])}
        inits = _floor_inits(_load_result(random_init_dir(out, table, k)))
        if inits:
            floors[str(k)] = {"n": len(inits), "floor": floor_of(inits)}
    rows_out = []
    randoms: dict[int, float] = {}
    random_results: dict[int, dict] = {}
    for row in TABLES[table]:
        accs, results, done, per_seed = [], [], [], {}
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
            per_seed[str(seed)] = _per_seed(r, own.get(str(seed)), floors.get(str(seed)))
        mean, std = _mean_std(accs)
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
    rmean, rstd = _mean_std(list(randoms.values()))
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
    if summary.get("missing"):
        todo = ", ".join(f"{m['row']} seed {m['seed']}" for m in summary["missing"])
        lines += [f"Runs still to come ({len(summary['missing'])}): {todo}.", ""]
    return "\n".join(lines)


def _ms(xs: list[float] | None, digits: int = 1) -> str:
    m, s = _mean_std(xs or [])
    if m is None:
        return "—"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


#: Diagnostic columns of the markdown table: (key in ``diag``, header, digits).
_MD_DIAG = (
    ("lowlevel", "applied low-level (L_mi: lower)", 1),
    ("level", "L_mi level bins", 1),
    ("arrow", "arrow of time (L_td: higher)", 1),
    ("focus", "CAAM focus", 2),
    ("focus_minus_control", "focus - control", 2),
    ("focus_rank", "focus rank", 3),
    ("focus_rank_minus_own_start", "focus rank - own start", 3),
    ("order_probe", "order probe", 1),
    ("order_head", "own L_td head", 1),
)


def _factor_table(summary: dict) -> list[str]:
    """Every factor's probe and the mechanism diagnostics per row (mean ± std over seeds), with the
    runs' own start and the random-init floor (per seed the mean over its inits)."""
    everyone = [
        *summary["rows"],
        {"label": "own start", **summary.get("own_start", {})},
        {"label": "random init", **summary["random_init"]},
    ]
    factors: list[str] = []
    for r in everyone:
        factors += [f for f in r.get("factors", {}) if f not in factors]
    if not factors and not any(any(r.get("diag", {}).values()) for r in everyone):
        return []
    head = ["row", *factors, *(h for _, h, _ in _MD_DIAG)]
    lines = [
        "Every factor's linear-probe top-1 (%) and the mechanism diagnostics (ctrlaug.diagnose, "
        "docs/diagnostics.md): decodability of the low-level transform applied to a view (mean over "
        "brightness, contrast, saturation, hue, blur; 4 equal-count bins, chance 25%) and of the L_mi "
        "level bins, the arrow of time (%, chance 50), the CAAM focus ratio on the moving object "
        "(1 = no preference), focus minus its shuffled-mask control, the focus rank (0.5 = no "
        "preference, 1 = the object's region always wins; peak-independent) and its change from the "
        "run's own starting weights, the order study's fresh probe (clips + global, chance 50) and "
        "the run's own L_td head (chance 50). Own start: the encoder each run starts from (seed s); "
        "random init: the mean over the floor's inits (seeds s+1..s+3) per seed.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in everyone:
        d = r.get("diag", {})
        cells = [_ms(r.get("factors", {}).get(f)) for f in factors]
        cells += [_ms(d.get(k), digits) for k, _, digits in _MD_DIAG]
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
    with atomic_open(path, "wb") as f:  # temp + rename: never through a planted link
        fig.savefig(f, format="png", dpi=100)
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


def _write_result(d: str, res: dict) -> None:
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "result.json")
    write_json(path, res, indent=1)


def _needs_diagnosis(d: dict | None) -> bool:
    """Stored diagnostics that are absent or older than the focus rank are computed again."""
    return not d or "focus_rank" not in d


def add_diagnostics(
    plans: list[dict],
    table: str,
    out: str,
    diagnose_fn: DiagnoseFn = diagnose_run,
    diagnose_random_fn: DiagnoseRandomFn = diagnose_random,
    diagnose_start_fn: DiagnoseStartFn = diagnose_own_start,
    order_fn: OrderFn = order_run,
) -> None:
    """Add whatever diagnostics are missing; resumable (every piece is written as soon as it exists).

    * every finished run of ``plans``: its diagnostics (``diagnose_fn``) when its ``result.json`` has
      none or has them from before the focus rank, and its L_td order study (``order_fn``, under
      ``diagnostics.order``) when it has none;
    * every seed: the own start (``diagnose_start_fn``, into :func:`own_start_dir`), done again when
      absent, older than the focus rank or diagnosed with other encoder settings (:func:`start_key`);
    * every seed: the random-init floor's :data:`~ctrlaug.eval.floor.FLOOR_INITS` inits
      (``diagnose_random_fn(overrides, folder, init)``, into :func:`random_init_dir`); an old file
      with fewer inits is topped up.
    """
    from ctrlaug.config import load_config
    from ctrlaug.eval.floor import FLOOR_INITS, random_init_seed

    for p in plans:
        res = _load_result(p["dir"])
        if res is None:
            continue
        old = res.get("diagnostics")
        if _needs_diagnosis(old):
            print(f"[ctrlaug.ablate] diagnosing {p['dir']}", flush=True)
            new = dict(diagnose_fn(p["dir"]))
            if old and "order" in old and "order" not in new:
                new["order"] = old["order"]
            res["diagnostics"] = new
            _write_result(p["dir"], res)
        if "order" not in res["diagnostics"]:
            print(f"[ctrlaug.ablate] order study of {p['dir']}", flush=True)
            res["diagnostics"]["order"] = order_fn(p["dir"])
            _write_result(p["dir"], res)
    for seed in sorted({p["seed"] for p in plans}):
        seed_plans = [p for p in plans if p["seed"] == seed]
        first = seed_plans[0]
        key = start_key(load_config(None, first["overrides"]))
        d = own_start_dir(out, table, seed)
        rec = _load_result(d)
        if rec is None or rec.get("key") != key or _needs_diagnosis(rec.get("diagnostics")):
            other = [
                p["row"].label for p in seed_plans if start_key(load_config(None, p["overrides"])) != key
            ]
            if other:
                print(f"[ctrlaug.ablate] note: {', '.join(other)} start from other encoder settings than "
                      f"{first['row'].label}; their own-start differences are left out")  # fmt: skip
            print(f"[ctrlaug.ablate] diagnosing the own start of seed {seed}", flush=True)
            diag = diagnose_start_fn(first["overrides"], d)
            _write_result(d, {"seed": seed, "key": key, "built_as": _BUILT_AS, "diagnostics": diag})
        d = random_init_dir(out, table, seed)
        inits = _floor_inits(_load_result(d))
        for i in range(FLOOR_INITS):
            if i < len(inits) and not _needs_diagnosis(inits[i]):
                continue
            print(f"[ctrlaug.ablate] diagnosing random init {i} of seed {seed}", flush=True)
            diag = diagnose_random_fn(first["overrides"], d, i)
            inits[i : i + 1] = [diag]
            _write_result(
                d,
                {
                    "seed": seed,
                    "init_seeds": [random_init_seed(seed, j) for j in range(len(inits))],
                    "diagnostics": inits[0],  # init 0: the probe's random-init encoder, as before
                    "inits": inits,
                    "floor": floor_of(inits),
                },
            )


_BUILT_AS = "torch.manual_seed(seed); build_objective(cfg).encoder (as Trainer._build, before any step)"


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
