"""The mechanism diagnostics of a table's runs: each run's diagnostics and L_td order study, the
runs' own starting weights and the random-init floor of every seed (:func:`add_diagnostics`, the
default hooks that compute them), and the flat columns the summary reads from them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ctrlaug.reports import write_json
from ctrlaug.studies.ablate.runs import load_result, own_start_dir, random_init_dir, write_result

__all__ = [
    "DIAGNOSE_VIDEOS",
    "DIAG_COLUMNS",
    "DiagnoseFn",
    "DiagnoseRandomFn",
    "DiagnoseStartFn",
    "OrderFn",
    "compact_diagnostics",
    "compact_order",
    "diagnose_run",
    "order_run",
    "own_start_objective",
    "own_start_encoder",
    "start_key",
    "diagnose_own_start",
    "diagnose_random",
    "flat_diagnostics",
    "floor_of",
    "floor_inits",
    "add_diagnostics",
]


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


#: ``diagnose_fn(run_folder) -> compact diagnostics`` (see :func:`compact_diagnostics`)
DiagnoseFn = Callable[[str], dict]
#: ``diagnose_random_fn(overrides, folder, init) -> compact diagnostics`` of init ``init`` of the floor
DiagnoseRandomFn = Callable[[list[str], str, int], dict]
#: ``diagnose_start_fn(overrides, folder) -> compact diagnostics`` (with ``order``) of the own start
DiagnoseStartFn = Callable[[list[str], str], dict]
#: ``order_fn(run_folder) -> compact order study`` (see :func:`compact_order`)
OrderFn = Callable[[str], dict]


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


def floor_inits(rec: dict | None) -> list[dict]:
    """The init diagnostics of a random_init result.json; an old one holds only ``diagnostics``."""
    if not rec:
        return []
    return list(rec.get("inits") or ([rec["diagnostics"]] if rec.get("diagnostics") else []))


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
        res = load_result(p["dir"])
        if res is None:
            continue
        old = res.get("diagnostics")
        if _needs_diagnosis(old):
            print(f"[ctrlaug.ablate] diagnosing {p['dir']}", flush=True)
            new = dict(diagnose_fn(p["dir"]))
            if old and "order" in old and "order" not in new:
                new["order"] = old["order"]
            res["diagnostics"] = new
            write_result(p["dir"], res)
        if "order" not in res["diagnostics"]:
            print(f"[ctrlaug.ablate] order study of {p['dir']}", flush=True)
            res["diagnostics"]["order"] = order_fn(p["dir"])
            write_result(p["dir"], res)
    for seed in sorted({p["seed"] for p in plans}):
        seed_plans = [p for p in plans if p["seed"] == seed]
        first = seed_plans[0]
        key = start_key(load_config(None, first["overrides"]))
        d = own_start_dir(out, table, seed)
        rec = load_result(d)
        if rec is None or rec.get("key") != key or _needs_diagnosis(rec.get("diagnostics")):
            other = [
                p["row"].label for p in seed_plans if start_key(load_config(None, p["overrides"])) != key
            ]
            if other:
                print(f"[ctrlaug.ablate] note: {', '.join(other)} start from other encoder settings than "
                      f"{first['row'].label}; their own-start differences are left out")  # fmt: skip
            print(f"[ctrlaug.ablate] diagnosing the own start of seed {seed}", flush=True)
            diag = diagnose_start_fn(first["overrides"], d)
            write_result(d, {"seed": seed, "key": key, "built_as": _BUILT_AS, "diagnostics": diag})
        d = random_init_dir(out, table, seed)
        inits = floor_inits(load_result(d))
        for i in range(FLOOR_INITS):
            if i < len(inits) and not _needs_diagnosis(inits[i]):
                continue
            print(f"[ctrlaug.ablate] diagnosing random init {i} of seed {seed}", flush=True)
            diag = diagnose_random_fn(first["overrides"], d, i)
            inits[i : i + 1] = [diag]
            write_result(
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
