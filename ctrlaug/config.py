"""The training configuration schema: :class:`TrainConfig`, YAML files and ``key=value`` overrides.

Every field has a default, a one-line help (shown by ``python -m ctrlaug.train --help``) and,
where it matters, its valid choices or bounds, declared with :func:`ctrlaug.utils.cfgtools.opt`
(the generic loading, coercion and validation live in :mod:`ctrlaug.utils.cfgtools`). The
dataclass defaults *are* the embedded demo (a small-width R3D on the factorised shapes benchmark,
a few CPU minutes); ``configs/*.yaml`` hold the paper settings for UCF-101 and Kinetics-400.

Loading order: defaults < YAML file < ``key=value`` overrides. Nested dataclasses (``augment``,
``data``, ``shapes``, ``synthetic``, one per loss: ``rc``, ``mi``, ``td``, ``nce``, and the groups
``model``, ``optim``, ``log``, ``eval``) take dotted keys (``augment.num_clips=3``, ``rc.tau=0.1``,
``optim.lr=1e-4``) or a nested mapping in YAML; a loss also takes a bare switch (``nce=true`` =
``nce.enabled=true``). Unknown keys, the old flat keys (``tau``, ``mi_weight``, ``lr``, ``probe``,
...: :data:`RENAMED`) and bad values raise one :class:`ConfigError` that lists every problem with
the valid keys, the new name or the valid choices; configs saved by earlier versions are read
with :func:`migrate_saved_config`.
"""

from __future__ import annotations

from typing import ClassVar

import yaml

from ctrlaug.augment.config import AugmentConfig
from ctrlaug.data.dataset import DataConfig
from ctrlaug.data.formats import config_names, get_format
from ctrlaug.data.shapes import ShapesConfig
from ctrlaug.data.synthetic import SyntheticConfig
from ctrlaug.losses import OUR_CHOICE, MIConfig, NCEConfig, RCConfig, TDConfig
from ctrlaug.utils import cfgtools
from ctrlaug.utils.cfgtools import ConfigError, config, opt

__all__ = [
    "ConfigError",
    "TrainConfig",
    "ModelConfig",
    "OptimConfig",
    "LogConfig",
    "EvalConfig",
    "RENAMED",
    "RENAMED_IN_GROUPS",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "migrate_saved_config",
    "save_config",
    "help_text",
    "apply_overrides",
]


DATASETS = config_names()  # ctrlaug.data.formats: shapes, synthetic, ucf101, hmdb51, k400, ...

# The flat loss keys before the losses got their own nested configs.
_RENAMED = {
    "tau": "rc.tau",
    "queue_size": "rc.queue_size",
    "rc_weight": "rc.weight",
    "rc_backend": "rc.backend",
}
_RENAMED |= {
    f"mi_{k}": f"mi.{k}"
    for k in ("weight", "lg_weight", "estimator", "hidden", "ema", "grl", "max_pairs", "lr")
}
_RENAMED |= {f"td_{k}": f"td.{k}" for k in ("weight", "head", "hidden", "tau", "estimator", "shuffles")}
_RENAMED |= {f"nce_{k}": f"nce.{k}" for k in ("weight", "tau", "mode")}
_RENAMED["mi_ema"] = "mi.ema; L_td's moving-average rate, which mi_ema also set, is now td.ema"
# The flat model, optimisation, logging and evaluation keys before they got their groups.
_RENAMED |= {
    k: f"model.{k}"
    for k in (
        "arch",
        "width",
        "global_stride1_stages",
        "spatial_stride1_stages",
        "proj_hidden",
        "proj_dim",
        "sync_bn",
        "channels_last",
        "compile",
        "amp",
    )
}
_RENAMED |= {
    k: f"optim.{k}"
    for k in (
        "lr",
        "weight_decay",
        "lr_milestones",
        "lr_gamma",
        "grad_clip",
        "max_steps_per_epoch",
        "max_bad_steps",
    )
}
_RENAMED |= {
    k: f"log.{k}" for k in ("ckpt_every_steps", "keep_checkpoints", "tensorboard", "progress", "plot")
}
_RENAMED["log_every"] = "log.every"  # straight to today's name (log.log_every was renamed as well)
# "probe" also names a module and diagnose's probes: the evaluation keys say what they run instead.
_RENAMED |= {
    "probe": "eval.linear",
    "probe_split": "eval.split",
    "probe_clips": "eval.clips",
    "probe_epochs": "eval.linear_epochs",
    "knn_every": "eval.knn_every",
    "knn_k": "eval.knn_k",
    "knn_t": "eval.knn_t",
}

#: Every old flat key -> its dotted key today (after ``;``: a note), for the "renamed" errors
#: and :func:`migrate_saved_config`.
RENAMED = _RENAMED

#: Keys renamed inside their group because they repeated the group's name (``log.log_every`` ->
#: ``log.every``): group -> {old: new}. Each group's class holds its own as ``RENAMED`` (the
#: "renamed to" errors); :func:`migrate_saved_config` moves them in saved configs.
_RENAMED_IN_LOG = {"log_every": "every"}


# ----------------------------------------------------------------------------------------------
# Groups of TrainConfig besides the data, augmentation and loss configs
# ----------------------------------------------------------------------------------------------


@config
class ModelConfig:
    """The encoder and its per-cell projection head, and how they run."""

    arch: str = opt(
        "r3d18",
        "encoder: R3D-18 or R3D-34 (Hara et al.'s blocks, (1,2,2) max-pool for the paper's grids); "
        "r3d18_tv / r3d34_tv: torchvision's R3D stem (3x7x7 conv, no max-pool), loads into stock r3d_18",
        choices=("r3d18", "r3d34", "r3d18_tv", "r3d34_tv"),
    )
    width: float = opt(0.125, "channel multiplier of the encoder (1.0 = 64..512 channels)", min=1e-3)
    global_stride1_stages: list[int] = opt(
        None,
        "stages (2,3,4) run with temporal stride 1 on the global path: [3,4] -> T_v=8",
        factory=lambda: [3, 4],
    )
    spatial_stride1_stages: list[int] = opt(
        None,
        f"stages (2,3,4) built with spatial stride 1 (temporal stride kept): [4] at 64 px views "
        f"-> 4x4 grid ({OUR_CHOICE}; [] = Hara's layout)",
        factory=list,
    )
    proj_hidden: int = opt(128, f"hidden width of the per-cell projection head ({OUR_CHOICE})", min=1)
    proj_dim: int = opt(64, f"output width of the per-cell projection head ({OUR_CHOICE})", min=1)
    sync_bn: bool = opt(False, "synchronise BatchNorm statistics over DDP ranks")
    channels_last: bool = opt(True, "channels-last-3d memory format for the encoder (CUDA only)")
    compile: bool = opt(False, "torch.compile the encoder")
    amp: str = opt(
        "auto", "mixed precision: 'auto' = bf16 on CUDA, off on CPU", choices=("auto", "bf16", "fp16", "off")
    )

    def _problems(self) -> list[str]:
        errs = []
        for key in ("global_stride1_stages", "spatial_stride1_stages"):
            stages = getattr(self, key)
            if any(s not in (2, 3, 4) for s in stages) or len(set(stages)) != len(stages):
                errs.append(f"{key}: invalid value {stages!r}; valid choices: a subset of [2, 3, 4]")
        return errs


@config
class OptimConfig:
    """Adam on the encoder and heads (L_mi's G_theta has its own: ``mi.lr``), its schedule and guards."""

    lr: float = opt(1e-3, "Adam learning rate (paper: 1e-3)", min=0.0)
    weight_decay: float = opt(1e-5, "Adam weight decay (paper: 1e-5)", min=0.0)
    lr_milestones: list[int] | None = opt(
        None, "epochs where lr is divided by lr_gamma; null = paper rule (75% of epochs, 70% for k400)"
    )
    lr_gamma: float = opt(0.1, "step-decay factor", min=0.0)
    grad_clip: float = opt(0.0, "clip the global gradient norm (0 = off)", min=0.0)
    max_steps_per_epoch: int = opt(0, "stop each epoch after this many steps (0 = full epoch)", min=0)
    max_bad_steps: int = opt(5, "abort after this many consecutive non-finite losses", min=1)

    def _problems(self) -> list[str]:
        if self.lr_milestones is not None and any(m < 1 for m in self.lr_milestones):
            return [f"lr_milestones: epochs must be >= 1, got {self.lr_milestones!r}"]
        return []


@config
class LogConfig:
    """Metric rows, checkpoints, progress bar and plots of a run folder."""

    RENAMED: ClassVar[dict[str, str]] = _RENAMED_IN_LOG

    every: int = opt(5, "steps between metric rows (CSV, TensorBoard)", min=1)
    ckpt_every_steps: int = opt(0, "extra checkpoint every N steps (0 = per epoch only)", min=0)
    keep_checkpoints: int = opt(2, "checkpoints kept in out_dir (oldest deleted)", min=1)
    tensorboard: bool = opt(True, "write TensorBoard scalars when tensorboard is installed")
    progress: bool = opt(True, "progress bar with clips/s and ETA on stderr")
    plot: bool = opt(True, "loss-curve PNG at the end (needs matplotlib)")


@config
class EvalConfig:
    """The linear probe after pretraining (the demo) and the kNN monitor during it."""

    linear: bool = opt(True, "linear probe on the test split after training, beside a random-init encoder")
    split: str = opt("test", "split the linear probe tests on (trains on `split`)")
    clips: int = opt(2, "uniformly spaced clips averaged per video for probe features", min=1)
    linear_epochs: int = opt(200, "full-batch Adam epochs of the linear classifier", min=1)
    knn_every: int = opt(
        4,
        "weighted kNN top-1 every N epochs and after the last (bank: `split`, queries: `eval.split`, "
        "eval.clips clips per video); 0 = off",
        min=0,
    )
    knn_k: int = opt(20, "kNN monitor: neighbours that vote", min=1)
    knn_t: float = opt(0.07, "kNN monitor: vote weight exp(cos / knn_t)", min=1e-4)


@config
class TrainConfig:
    """Self-supervised pretraining of the paper (§3, §4.2). Defaults = the CPU demo."""

    RENAMED: ClassVar[dict[str, str]] = _RENAMED

    # ---- run ------------------------------------------------------------------------------------
    out_dir: str = opt(
        "runs/demo", "run folder: checkpoints, config.yaml, metrics.csv, TensorBoard, loss curve"
    )
    seed: int = opt(
        0, "seed of weights, data order, augmentations and loss sampling", min=0, max=cfgtools.SEED_MAX
    )
    device: str = opt("auto", "'auto' (cuda if available), 'cpu' or 'cuda'", choices=("auto", "cpu", "cuda"))
    resume: str = opt(
        "auto",
        "'auto': newest good checkpoint in out_dir if any; 'none': start fresh in a folder without "
        "checkpoints; 'fresh': start over, setting the folder's checkpoints aside; or a path",
    )
    threads: int = opt(0, "torch CPU threads per process (0 = torch's default)", min=0)

    # ---- data -----------------------------------------------------------------------------------
    dataset: str = opt("shapes", "pretraining dataset format", choices=DATASETS)
    data_root: str = opt(
        "", "dataset root (videos + split files, or a CSV for 'csv'); unused for synthetic and shapes"
    )
    split: str = opt("train", "split to pretrain on")
    fold: int = opt(1, "official split number for ucf101 / hmdb51 (paper: split 1)", min=1)
    synthetic: SyntheticConfig = opt(
        None,
        "synthetic motion set (dataset=synthetic); set fields with synthetic.<name>=value",
        factory=lambda: SyntheticConfig(train_per_class=24, test_per_class=24, num_frames=32, size=64),
    )
    shapes: ShapesConfig = opt(
        None,
        "factorised shapes benchmark (dataset=shapes): shape, motion, colour, background factors; "
        "set fields with shapes.<name>=value",
        factory=ShapesConfig,
    )
    data: DataConfig = opt(None, "decoding and robustness; data.seed null = the run seed", factory=DataConfig)
    num_workers: int = opt(1, "DataLoader worker processes per rank", min=0)
    batch_size: int = opt(
        16, "global batch of videos per step (split evenly over DDP ranks; paper: 128)", min=1
    )
    augment: AugmentConfig = opt(
        None,
        "controllable augmentations (tau_p, tau_l); set fields with augment.<name>=value",
        # hue 0.5 (any hue shift) instead of the paper's 0.1: on the shapes benchmark the object's
        # colour otherwise identifies a video and the contrast learns colour, not shape
        # (docs/benchmark.md); configs/ucf101.yaml and k400.yaml keep the paper's 0.1.
        factory=lambda: AugmentConfig(size=48, global_frames=8, clip_frames=8, levels_per_step=8, hue=0.5),
    )

    # ---- model -------------------------------------------------------------------------------
    model: ModelConfig = opt(
        None, "encoder and projection head; set fields with model.<name>=value", factory=ModelConfig
    )

    # ---- losses: each a nested config handed to its loss (ctrlaug.losses) ------------------------
    rc: RCConfig = opt(None, "L_rc, region contrast (eq. 3-4); rc=false switches it off", factory=RCConfig)
    mi: MIConfig = opt(
        None, "L_mi, low-level shortcut elimination (eq. 5-6); mi=false switches it off", factory=MIConfig
    )
    td: TDConfig = opt(
        None, "L_td, local-global temporal dependency (eq. 7); td=false switches it off", factory=TDConfig
    )
    nce: NCEConfig = opt(
        None,
        "L_nce, clip-level InfoNCE baseline (eq. 2, Table 7); nce=true switches it on",
        factory=NCEConfig,
    )

    # ---- optimisation ---------------------------------------------------------------------------
    epochs: int = opt(12, "training epochs (paper: 200 UCF-101, 100 K400)", min=1)
    optim: OptimConfig = opt(
        None,
        "optimiser, lr schedule and step guards; set fields with optim.<name>=value",
        factory=OptimConfig,
    )

    # ---- logging and checkpoints ----------------------------------------------------------------
    log: LogConfig = opt(
        None, "metric rows, checkpoints, progress, plots; set fields with log.<name>=value", factory=LogConfig
    )

    # ---- evaluation: linear probe after pretraining (the demo), kNN monitor during it -----------
    eval: EvalConfig = opt(
        None,
        "linear probe after training and kNN monitor; set fields with eval.<name>=value",
        factory=EvalConfig,
    )

    def _problems(self) -> list[str]:
        """Cross-field checks."""
        errs = []
        if not any(c.enabled for c in (self.rc, self.mi, self.td, self.nce)):
            errs.append("rc, mi, td, nce: every objective is off; enable at least one")
        if self.td.enabled and self.augment.num_clips < 2:
            errs.append(
                f"td: L_td orders clips and needs augment.num_clips >= 2, got {self.augment.num_clips}"
            )
        if self.dataset in DATASETS and not get_format(self.dataset).rendered and not self.data_root:
            errs.append(f"data_root: required for dataset={self.dataset!r}")
        return errs


#: Keys renamed inside a group of :class:`TrainConfig` (the group's ``RENAMED``): group -> {old: new}.
RENAMED_IN_GROUPS = {"log": LogConfig.RENAMED}


# ----------------------------------------------------------------------------------------------
# Loading and saving (the generic engine: ctrlaug.utils.cfgtools)
# ----------------------------------------------------------------------------------------------

_WHAT = "training config"


def config_from_dict(values: dict) -> TrainConfig:
    """Build and validate a TrainConfig from a (possibly nested) mapping."""
    if not isinstance(values, dict):
        raise ConfigError(f"bad training config: expected a mapping of keys, got {type(values).__name__}")
    cfgtools.check_expanded_size(values, _WHAT)
    return cfgtools.build(TrainConfig, values, what=_WHAT)


def migrate_saved_config(values: dict, source: str = "saved config") -> dict:
    """A config mapping saved by an earlier version (flat keys: ``tau``, ``mi_weight``, ``lr``,
    ``probe``, ... of :data:`RENAMED`, and ``rc: true`` as the switch) in today's nested form
    (``rc: {enabled, tau, ...}``, ``optim: {lr, ...}``, ``eval: {linear, ...}``); a mapping without
    old keys comes back unchanged.

    Only for configs read back from checkpoints and run folders, whose every field was saved, so
    the old run's values carry over exactly (``mi_ema`` also set L_td's rate: it fills both
    ``mi.ema`` and ``td.ema``). What a user writes with an old key still gets the "renamed to"
    error.

    A mapping that is no config (not a dict, nested too deep, or more values than a config has
    once shared references are expanded: a pickle can share them like a YAML alias bomb) raises a
    one-line :class:`ConfigError` naming ``source`` (say, the checkpoint's path) before anything
    walks or prints it.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"bad {source}: expected a mapping of keys, got {type(values).__name__}")
    cfgtools.check_expanded_size(values, source)
    out = cfgtools.expand_shorthand(TrainConfig, values)  # rc: true -> rc: {enabled: true}
    for k in [k for k in values if k in _RENAMED]:
        section, key = _RENAMED[k].split(";")[0].split(".")
        out.setdefault(section, {})[key] = out.pop(k)
    for section, moves in RENAMED_IN_GROUPS.items():  # log: {log_every: 5} -> log: {every: 5}
        group = out.get(section)
        if isinstance(group, dict) and any(k in moves for k in group):
            out[section] = {moves.get(k, k): v for k, v in group.items()}
    if "mi_ema" in values:
        out.setdefault("td", {}).setdefault("ema", values["mi_ema"])
    return out


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Merge ``key=value`` strings (values parsed as YAML scalars/lists) into ``values``."""
    return cfgtools.apply_overrides(values, overrides, TrainConfig, what=_WHAT)


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    values: dict = {}
    if path:  # UTF-8, no YAML aliases (cfgtools.read_yaml): one ConfigError line otherwise
        loaded = cfgtools.read_yaml(path, _WHAT) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"bad training config: {path} must hold a mapping of keys")
        values = loaded
    values = apply_overrides(values, list(overrides or []))
    return config_from_dict(values)


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (tuples as lists) that :func:`config_from_dict` reads back."""
    return cfgtools.to_dict(cfg)


def save_config(cfg: TrainConfig, path: str) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename: never a torn file)."""
    from ctrlaug.utils.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def help_text() -> str:
    """Every key with its type, default and help (what ``--help`` prints)."""
    return cfgtools.help_text(TrainConfig())
