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

from ctrlaug.studies.ablate import diagnostics, report, runner, runs, summary, tables
from ctrlaug.studies.ablate.diagnostics import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.ablate.report import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.ablate.runner import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.ablate.runs import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.ablate.summary import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.ablate.tables import *  # noqa: F403 (the package re-exports each room's names)

# every room's public names, nothing else (each room's __all__ is the one list to edit)
__all__ = [
    *tables.__all__,
    *runs.__all__,
    *diagnostics.__all__,
    *summary.__all__,
    *report.__all__,
    *runner.__all__,
]
