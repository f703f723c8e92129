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

The rooms of this package, one job each: :mod:`.tables` (the paper's rows, their overrides and
numbers), :mod:`.runs` (one run: its folder, overrides, training and probe, ``result.json``),
:mod:`.diagnostics` (the runs' diagnostics, own start and random-init floor), :mod:`.summary`
(mean ± std, differences, the demo gate, Spearman), :mod:`.report` (markdown, bar chart, files)
and :mod:`.runner` (:func:`run_table` and the command line's input files). Every public name is
importable from here.
"""

from __future__ import annotations

from ctrlaug.studies.ablate.diagnostics import (
    DIAG_COLUMNS,
    DIAGNOSE_VIDEOS,
    DiagnoseFn,
    DiagnoseRandomFn,
    DiagnoseStartFn,
    OrderFn,
    add_diagnostics,
    compact_diagnostics,
    compact_order,
    diagnose_own_start,
    diagnose_random,
    diagnose_run,
    flat_diagnostics,
    floor_inits,
    floor_of,
    order_run,
    own_start_encoder,
    own_start_objective,
    start_key,
)
from ctrlaug.studies.ablate.report import (
    ordering_sentence,
    to_markdown,
    write_summary,
)
from ctrlaug.studies.ablate.runner import (
    config_file_overrides,
    read_calibration,
    run_table,
)
from ctrlaug.studies.ablate.runs import (
    TrainFn,
    load_result,
    missing_runs,
    own_start_dir,
    plan_runs,
    random_init_dir,
    run_dir,
    run_one,
    run_overrides,
    train_and_probe,
    write_result,
)
from ctrlaug.studies.ablate.summary import (
    mean_std,
    spearman,
    summarise,
)
from ctrlaug.studies.ablate.tables import (
    BLUR_LEVELS,
    TABLE_TITLES,
    TABLES,
    Row,
    select_rows,
    slugify,
)

__all__ = [
    "Row",
    "slugify",
    "BLUR_LEVELS",
    "TABLES",
    "TABLE_TITLES",
    "select_rows",
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
    "spearman",
    "mean_std",
    "summarise",
    "ordering_sentence",
    "to_markdown",
    "write_summary",
    "run_table",
    "config_file_overrides",
    "read_calibration",
]
