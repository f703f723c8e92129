"""The diagnostics' reports: the one-line summary, the markdown, the random-init floor's summary
and the JSON + markdown pair on disk."""

from __future__ import annotations

import os

from ctrlaug import reports
from ctrlaug.eval.floor import mean_spread
from ctrlaug.studies.diagnose.probes import APPLIED, APPLIED_BINS, LEVEL_COMPONENTS

__all__ = ["fmt_value", "summary_line", "to_markdown", "floor_summary", "write_report"]


def fmt_value(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary_line(res: dict) -> str:
    lv, fo = res["level"], res["focus"]
    return (
        f"diagnose: level {lv['mean_top1']:.1f}% (chance {lv['mean_chance']:.1f}) | applied low-level "
        f"{lv['applied']['mean_top1']:.1f}% (chance {lv['applied']['mean_chance']:.1f}) | arrow "
        f"{res['arrow']['top1']:.1f}% (chance 50) | focus {fmt_value(fo['ratio'], 2)} "
        f"(shuffled-mask control {fmt_value(fo.get('control'), 2)}, rank {fmt_value(fo.get('rank'), 2)}) | "
        + " ".join(f"{k} {v['linear']:.1f}/{v['knn']:.1f}" for k, v in res["factors"].items())
        + f" (linear/knn %) | {res['seconds']:.1f} s"
    )


def to_markdown(res: dict) -> str:
    """The human-readable report of a :func:`diagnose` result."""
    lv, ar, fo = res["level"], res["arrow"], res["focus"]
    head = f"checkpoint: `{res.get('checkpoint')}`" + (" (random init)" if res.get("random_init") else "")
    lines = [
        "# Mechanism diagnostics",
        "",
        f"{head}; benchmark: shapes, {res['videos']} held-out videos ({res['test_split']}), "
        f"{res['train_videos']} train videos ({res['train_split']}) for the factor probes; clip "
        f"{'x'.join(map(str, res['clip']))}; {res['seconds']:.1f} s on {res['device']}.",
    ]
    if res.get("note"):
        lines += ["", f"Note: {res['note']}."]
    lines += [
        "",
        f"## L_mi: tau_l level decodability ({res['levels_per_video']} levels per clip; lower = fewer shortcuts)",
        "",
        "| component | test top-1 % | train top-1 % | chance % |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {lv[k]['top1']:.1f} | {lv[k]['train_top1']:.1f} | {lv[k]['chance']:.1f} |"
        for k in LEVEL_COMPONENTS
    ]
    lines += [
        f"| mean | {lv['mean_top1']:.1f} | | {lv['mean_chance']:.1f} |",
        "",
        f"Applied low-level values ({APPLIED_BINS} equal-count bins of the signed factor actually "
        "applied to each view; a linear probe can read these, unlike the unsigned L_mi bins above):",
        "",
        "| value | test top-1 % | train top-1 % | chance % |",
        "|---|---|---|---|",
        *[
            f"| {k} | {lv['applied'][k]['top1']:.1f} | {lv['applied'][k]['train_top1']:.1f} | "
            f"{lv['applied'][k]['chance']:.1f} |"
            for k in APPLIED
        ],
        f"| mean | {lv['applied']['mean_top1']:.1f} | | {lv['applied']['mean_chance']:.1f} |",
        "",
        "## L_td: arrow of time (clip vs its time reversal; higher = order-aware)",
        "",
        f"test top-1 {ar['top1']:.1f}% (train {ar['train_top1']:.1f}%, chance {ar['chance']:.1f}%)",
        "",
        "## Region contrast: CAAM focus on the moving object (1 = no preference)",
        "",
        f"focus ratio {fmt_value(fo['ratio'], 3)} (std {fmt_value(fo['ratio_std'], 3)} over {fo['clips']} clips); "
        f"{fmt_value(fo['inside'], 1)}% of the CAAM energy on an object covering {fo['area']:.1f}% of the "
        f"{'x'.join(map(str, fo['grid']))} feature grid; shuffled-mask control (each map against "
        f"another clip's mask) {fmt_value(fo.get('control'), 3)}",
        "",
        f"focus rank {fmt_value(fo.get('rank'), 3)} (std {fmt_value(fo.get('rank_std'), 3)}): how often the object's "
        "region carries more CAAM energy per unit of area than another clip's object region (0.5 = no "
        "preference, 1 = always; independent of how peaked the map is)",
        "",
        "## Factors (one centre clip per video)",
        "",
        "| factor | linear % | linear train % | kNN % | chance % |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k}{' (primary)' if k == res['primary'] else ''} | {v['linear']:.1f} | {v['linear_train']:.1f} "
        f"| {v['knn']:.1f} | {v['chance']:.1f} |"
        for k, v in res["factors"].items()
    ]
    if res.get("floor"):
        n = next(iter(res["floor"].values()))["n"]
        lines += [
            "",
            f"## Random-init floor over {n} inits (ctrlaug.eval.floor; the numbers above are the first)",
            "",
        ]
        lines += ["| measure | mean ± std | min-max |", "|---|---|---|"]
        for k, v in res["floor"].items():
            lines.append(f"| {k} | {v['mean']:.2f} ± {v['std']:.2f} | {v['min']:.2f}-{v['max']:.2f} |")
    return "\n".join(lines) + "\n"


def floor_summary(results: list[dict]) -> dict:
    """Mean and spread (:func:`ctrlaug.eval.floor.mean_spread`) of the headline numbers of several
    :func:`diagnose` results (the random-init floor over its inits)."""

    def pick(r: dict) -> dict[str, float | None]:
        out = {
            "level": r["level"]["mean_top1"],
            "lowlevel": r["level"]["applied"]["mean_top1"],
            "arrow": r["arrow"]["top1"],
            "focus": r["focus"]["ratio"],
            "focus_control": r["focus"].get("control"),
            "focus_rank": r["focus"].get("rank"),
        }
        out.update({f"{k}_linear": v["linear"] for k, v in r["factors"].items()})
        return out

    rows = [pick(r) for r in results]
    return {
        k: mean_spread([row[k] for row in rows]) for k in rows[0] if all(row[k] is not None for row in rows)
    }


def write_report(res: dict, stem: str) -> str:
    """Write ``res`` of :func:`diagnose` as ``<stem>.json`` and ``<stem>.md``; returns ``stem``."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    reports.write_report(stem, res, to_markdown(res))
    return stem
