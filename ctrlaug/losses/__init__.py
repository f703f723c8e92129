"""The four objectives of the paper and the module that composes them for one training step.

- :class:`RegionContrastLoss` L_rc, eq. 3-4 (soft-target region contrast over all global cells
  of the batch on every rank, plus an optional memory queue).
- :class:`LowLevelMILoss` L_mi, eq. 5-6 (MINE on same-intensity-level pairs, adversarial through
  gradient reversal; then the frozen estimator on local-global pairs).
- :class:`TemporalDependencyLoss` L_td, eq. 7 (ordered vs shuffled clip sequences with the global
  feature; GRU / MLP / GRU+MLP heads, or the VCOP classification baseline).
- :class:`ClipInfoNCELoss` L_nce, eq. 2 (clip-level InfoNCE, the baseline of Table 7).
- :class:`CtrlAugObjective` holds the encoder, the heads and the losses; its ``forward`` runs one
  step's encoder passes on a :class:`StepBatch` and returns every loss term, so one DDP wrapper
  covers all parameters.

One module per loss (``rc``, ``mi`` with the MI bounds, ``td``, ``nce``), the composition in
``objective`` and the shared pieces in ``base``. Each loss has a small config dataclass
(:class:`RCConfig`, :class:`MIConfig`, :class:`TDConfig`, :class:`NCEConfig`) that the training
config nests as ``rc``, ``mi``, ``td``, ``nce`` and that is handed straight to the loss's
constructor. Each loss also has the same per-step entry point,
``term(ctx)``: it reads what it needs from one :class:`StepContext` and returns
``{"loss": ..., "stats": {...}}`` (L_rc adds ``"keys"`` for the memory queue).

Distributed training: features that pair across videos are all-gathered with
:func:`ctrlaug.utils.dist.gather_with_grad` (each rank's gradient reaches every rank's own
features), and every step-level random choice uses a generator seeded by (seed, step), identical
on all ranks; so a DDP run computes the same losses and gradients as one process holding the
whole global batch.
"""

from ctrlaug.losses.base import ESTIMATORS, OUR_CHOICE, StepContext
from ctrlaug.losses.mi import (
    LowLevelMILoss,
    MIBound,
    MIConfig,
    dv_bound,
    grad_reverse,
    infonce_bound,
    jsd_bound,
    same_level_partners,
)
from ctrlaug.losses.nce import ClipInfoNCELoss, NCEConfig
from ctrlaug.losses.objective import LOSSES, CtrlAugObjective, StepBatch
from ctrlaug.losses.rc import FeatureQueue, RCConfig, RegionContrastLoss, cells
from ctrlaug.losses.td import TDConfig, TemporalDependencyLoss, random_derangement_orders

__all__ = [
    "ESTIMATORS",
    "OUR_CHOICE",
    "LOSSES",
    "RCConfig",
    "MIConfig",
    "TDConfig",
    "NCEConfig",
    "StepBatch",
    "StepContext",
    "grad_reverse",
    "dv_bound",
    "jsd_bound",
    "infonce_bound",
    "MIBound",
    "same_level_partners",
    "random_derangement_orders",
    "FeatureQueue",
    "RegionContrastLoss",
    "LowLevelMILoss",
    "TemporalDependencyLoss",
    "ClipInfoNCELoss",
    "CtrlAugObjective",
    "cells",
]
