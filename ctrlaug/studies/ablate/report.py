"""A table's summary written out: the markdown (rows beside the paper's numbers, the ordering
sentence, the demo gate, every factor and diagnostic), the bar chart and the ``.md``/``.json``/
``.png`` files."""

from __future__ import annotations

import os

from ctrlaug.reports import write_json, write_text
from ctrlaug.studies.ablate.summary import mean_std
from ctrlaug.utils.atomic import atomic_open

__all__ = ["ordering_sentence", "to_markdown", "write_summary"]


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
    m, s = mean_std(xs or [])
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
