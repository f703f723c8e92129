"""The paper's ablation tables (§4.4, Tables 4-7) as rows: a label, the ``key=value`` overrides
that realise the row on top of the demo defaults of :class:`ctrlaug.config.TrainConfig`, and the
linear-probe top-1 the paper reports for it on UCF-101 and HMDB-51; :func:`select_rows` picks
rows by label or slug."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ctrlaug.errors import UsageError

__all__ = ["Row", "slugify", "BLUR_LEVELS", "TABLES", "TABLE_TITLES", "select_rows"]


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
