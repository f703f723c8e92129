"""Mechanism diagnostics: each claim of the paper measured directly on the shapes benchmark.

``python -m ctrlaug.diagnose RUN_OR_CKPT [--random-init] [--out DIR] [--videos N] [--device D]``
loads the encoder of a pretraining checkpoint (or a run folder's newest one; ``--random-init``
keeps the freshly initialised encoder of the same config), renders held-out videos of the
factorised shapes benchmark (:mod:`ctrlaug.data.shapes`, the config's ``shapes`` settings and
``eval.split``) and writes ``<out>/diagnose.json`` and ``diagnose.md`` (``diagnose_random.*``
for ``--random-init``; default out: the run folder). A config whose dataset is not ``shapes`` is
diagnosed on the shapes benchmark at its own clip geometry, and the output says so. A bad path
prints one ``error:`` line and exits with code 2. docs/diagnostics.md explains how to read it.

Every held-out video gives one clip: ``clip_frames`` frames from the middle of the video (frame
step ``clip_step``), the centre square crop of the evaluation views (``eval_crop``) resized to
``augment.size``, exactly as the evaluation datasets cut it; the object masks are cut the same
way. Features are the encoder's pooled last feature map (eval mode, BN running statistics).
The held-out videos are split in two halves by video (a seeded permutation), never by view:
the probes of 1 and 2 train on one half and are tested on the other.

1. **Level decodability** (L_mi removes low-level shortcuts, paper §3.2). Each clip is rendered
   at ``levels`` intensity levels of tau_l drawn uniformly from all levels of the config's
   ``augment`` (same content, only the level differs; parameters drawn inside each level as in
   training, :func:`~ctrlaug.augment.sample_level_params`). One linear probe per level component:
   the brightness, contrast and saturation bins, the hue bin and the blur combination, the exact
   labels the L_mi discriminator is trained on (bins of the *strength* ``|factor - 1|`` unless
   ``augment.signed_levels``). The joint level (512 classes) is not probed: far too many classes
   for a few hundred views. Lower is what L_mi aims for; chance is the majority-bin rate.
2. **Arrow of time** (L_td captures temporal order, §3.3). Every clip and its time reversal (the
   same frames in the opposite order). The shapes benchmark's motion is time-symmetric in
   distribution (a reversed ``right`` video is a ``left`` video), so "forward vs reversed" is
   undecidable there; the binary label is therefore the direction of the *displayed* motion along
   its axis (right or down = 1, left or up = 0), which flips under reversal. Both classes hold
   exactly the same frames, so an encoder blind to frame order scores exactly 50%.
3. **Foreground focus** (region contrast attends to the moving object, Fig. 3). CAAM = channel
   mean of the last feature map [T', H', W'] of the unaugmented clip (non-negative: the network
   ends in a ReLU). The clip's object masks are downsampled *to the feature grid by area* (the
   fraction of each cell covered by the object), and focus = (share of CAAM energy inside the
   object) / (object's area share); 1 = no preference, > 1 = attends to the object. This is
   exact for what the map resolves (upsampling the map adds no information); note the grid is
   coarse at CPU sizes (2 x 2 cells for a 48 px clip), which the JSON records.
4. **Factors**: one linear probe per factor (:func:`ctrlaug.eval.linear.fit_factor_probes`) and the
   weighted kNN (:func:`ctrlaug.eval.metrics.knn_top1`, k=20, t=0.07), trained on the unaugmented
   centre clips of ``videos`` videos of the config's train split, tested on the held-out clips
   (one clip per video, so lower than the demo's 10-clip probe).

Cost: 6 forward passes per held-out video with the default 4 levels, plus one per train video.

The rooms of this package, one job each: :mod:`.probes` (the linear decodability probes),
:mod:`.focus` (the focus ratio, its control and the focus rank), :mod:`.premise` (the level
premise, no network), :mod:`.clips` (benchmark clips and encoder passes), :mod:`.measure`
(:func:`diagnose`: the four measurements on one encoder), :mod:`.order` (the L_td order study),
:mod:`.report` (summary line, markdown, floor summary) and :mod:`.runner` (the command's options
and :func:`run`). Every public name is importable from here.
"""

from __future__ import annotations

from ctrlaug.studies.diagnose import clips, focus, measure, order, premise, probes, report, runner
from ctrlaug.studies.diagnose.clips import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.focus import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.measure import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.order import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.premise import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.probes import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.report import *  # noqa: F403 (the package re-exports each room's names)
from ctrlaug.studies.diagnose.runner import *  # noqa: F403 (the package re-exports each room's names)

# every room's public names, nothing else (each room's __all__ is the one list to edit)
__all__ = [
    *probes.__all__,
    *focus.__all__,
    *premise.__all__,
    *clips.__all__,
    *measure.__all__,
    *order.__all__,
    *report.__all__,
    *runner.__all__,
]
