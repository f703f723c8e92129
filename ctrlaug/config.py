"""Typed training configuration: one dataclass, YAML files and ``key=value`` overrides.

Every field has a default, a one-line help (shown by ``python -m ctrlaug.train --help``) and,
where it matters, its valid choices or bounds. The dataclass defaults *are* the embedded demo
(a small-width R3D on the factorised shapes benchmark, a few CPU minutes); ``configs/*.yaml`` hold
the paper settings for UCF-101 and Kinetics-400.

Loading order: defaults < YAML file < ``key=value`` overrides. Nested dataclasses (``augment``,
the :class:`ctrlaug.augment.AugmentConfig`) take dotted keys (``augment.num_clips=3``) or a
nested mapping in YAML. Unknown keys and bad values raise one :class:`ConfigError` that lists
every problem with the valid keys or choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ctrlaug.augment.config import AugmentConfig
from ctrlaug.data.dataset import DataConfig
from ctrlaug.data.formats import config_names, get_format
from ctrlaug.data.shapes import ShapesConfig
from ctrlaug.data.synthetic import SyntheticConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "help_text",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A bad training configuration: unknown keys or invalid values (all listed at once)."""


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None, factory=None):
    """A config field: default, help line, optional choices / lower bound (inclusive)."""
    meta = {"help": help, "choices": choices, "min": min}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


DATASETS = config_names()  # ctrlaug.data.formats: shapes, synthetic, ucf101, hmdb51, k400, ...
ESTIMATORS = ("dv", "jsd", "infonce")


@dataclass
class TrainConfig:
    """Self-supervised pretraining of the paper (§3, §4.2). Defaults = the CPU demo."""

    # ---- run ------------------------------------------------------------------------------------
    out_dir: str = opt(
        "runs/demo", "run folder: checkpoints, config.yaml, metrics.csv, TensorBoard, loss curve"
    )
    seed: int = opt(0, "seed of weights, data order, augmentations and loss sampling")
    device: str = opt("auto", "'auto' (cuda if available), 'cpu' or 'cuda'", choices=("auto", "cpu", "cuda"))
    resume: str = opt(
        "auto", "'auto': newest good checkpoint in out_dir if any; 'none': start fresh; or a path"
    )
    threads: int = opt(0, "torch CPU threads per process (0 = torch's default)", min=0)

    # ---- data -----------------------------------------------------------------------------------
    dataset: str = opt("shapes", "pretraining dataset format", choices=DATASETS)
    data_root: str = opt(
        "", "dataset root (videos + split files, or a CSV for 'csv'); unused for synthetic and shapes"
    )
    split: str = opt("train", "split to pretrain on")
    fold: int = opt(1, "official split number for ucf101 / hmdb51 (paper: split 1)", min=1)
    probe_split: str = opt("test", "split the linear probe tests on (trains on `split`)")
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

    # ---- model ----------------------------------------------------------------------------------
    arch: str = opt("r3d18", "encoder: R3D-18 or R3D-34 (Hara layout)", choices=("r3d18", "r3d34"))
    width: float = opt(0.125, "channel multiplier of the encoder (1.0 = 64..512 channels)", min=1e-3)
    global_stride1_stages: list[int] = opt(
        None,
        "stages (2,3,4) run with temporal stride 1 on the global path: [3,4] -> T_v=8",
        factory=lambda: [3, 4],
    )
    proj_hidden: int = opt(128, "hidden width of the per-cell projection head (paper: 512)", min=1)
    proj_dim: int = opt(64, "output width of the per-cell projection head (paper: 128)", min=1)
    sync_bn: bool = opt(False, "synchronise BatchNorm statistics over DDP ranks")
    channels_last: bool = opt(True, "channels-last-3d memory format for the encoder (CUDA only)")
    compile: bool = opt(False, "torch.compile the encoder")
    amp: str = opt(
        "auto", "mixed precision: 'auto' = bf16 on CUDA, off on CPU", choices=("auto", "bf16", "fp16", "off")
    )

    # ---- L_rc: spatio-temporal region contrast (eq. 3-4) ----------------------------------------
    rc: bool = opt(True, "enable L_rc")
    rc_weight: float = opt(1.0, "weight of L_rc", min=0.0)
    tau: float = opt(0.07, "temperature of L_rc (paper: 0.07)", min=1e-6)
    queue_size: int = opt(
        0, "memory queue of past global cells used as extra L_rc negatives (0 = off)", min=0
    )
    rc_backend: str = opt(
        "auto", "backend of the fused ops", choices=("auto", "reference", "cpp", "triton", "cuda")
    )

    # ---- L_mi: low-level shortcut elimination (eq. 5-6) -----------------------------------------
    mi: bool = opt(True, "enable L_mi")
    mi_weight: float = opt(
        0.1, "weight of the level term (theta maximises, encoder minimises via GRL)", min=0.0
    )
    mi_lg_weight: float = opt(
        1.0,
        "relative weight, inside L_mi, of G_theta on local-global pairs (minimised by the encoder only)",
        min=0.0,
    )
    mi_estimator: str = opt(
        "dv", "MI estimator: MINE/Donsker-Varadhan, Jensen-Shannon or InfoNCE", choices=ESTIMATORS
    )
    mi_hidden: int = opt(128, "hidden width of the statistics network G_theta (paper: unspecified)", min=1)
    mi_ema: float = opt(0.01, "moving-average rate of MINE's bias-corrected denominator", min=1e-6)
    mi_grl: float = opt(1.0, "gradient-reversal scale from G_theta to the encoder", min=0.0)
    mi_max_pairs: int = opt(1024, "cap on joint pairs per step (InfoNCE scores pairs x pairs)", min=1)
    mi_lr: float = opt(1e-3, "Adam learning rate of G_theta (its own optimizer)", min=0.0)

    # ---- L_td: local-global temporal dependency (eq. 7) -----------------------------------------
    td: bool = opt(True, "enable L_td")
    td_weight: float = opt(
        0.01,
        "weight of L_td (paper: unspecified; 0.01 chosen on the shapes val split, docs/benchmark.md)",
        min=0.0,
    )
    td_head: str = opt("gru", "order head (Table 6)", choices=("gru", "mlp", "gru_mlp", "vcop"))
    td_hidden: int = opt(128, "hidden width of the order head (GRU state / MLP)", min=1)
    td_tau: float = opt(0.1, "temperature of the GRU head's cosine score", min=1e-6)
    td_estimator: str = opt("dv", "MI estimator of L_td", choices=ESTIMATORS)
    td_shuffles: int = opt(1, "shuffled orders per video (the marginal samples)", min=1)

    # ---- L_nce: clip-level InfoNCE baseline (eq. 2, Table 7) ------------------------------------
    nce: bool = opt(False, "enable L_nce")
    nce_weight: float = opt(1.0, "weight of L_nce", min=0.0)
    nce_tau: float = opt(0.07, "temperature of L_nce", min=1e-6)
    nce_mode: str = opt(
        "clip_global",
        "positives: the clip's own global view, or the other clips of its video",
        choices=("clip_global", "clip_clip"),
    )

    # ---- optimisation ---------------------------------------------------------------------------
    epochs: int = opt(12, "training epochs (paper: 200 UCF-101, 100 K400)", min=1)
    lr: float = opt(1e-3, "Adam learning rate (paper: 1e-3)", min=0.0)
    weight_decay: float = opt(1e-5, "Adam weight decay (paper: 1e-5)", min=0.0)
    lr_milestones: list[int] | None = opt(
        None, "epochs where lr is divided by lr_gamma; null = paper rule (75% of epochs, 70% for k400)"
    )
    lr_gamma: float = opt(0.1, "step-decay factor", min=0.0)
    grad_clip: float = opt(0.0, "clip the global gradient norm (0 = off)", min=0.0)
    max_steps_per_epoch: int = opt(0, "stop each epoch after this many steps (0 = full epoch)", min=0)

    # ---- logging and checkpoints ----------------------------------------------------------------
    log_every: int = opt(5, "steps between metric rows (CSV, TensorBoard)", min=1)
    ckpt_every_steps: int = opt(0, "extra checkpoint every N steps (0 = per epoch only)", min=0)
    keep_checkpoints: int = opt(2, "checkpoints kept in out_dir (oldest deleted)", min=1)
    tensorboard: bool = opt(True, "write TensorBoard scalars when tensorboard is installed")
    progress: bool = opt(True, "progress bar with clips/s and ETA on stderr")
    plot: bool = opt(True, "loss-curve PNG at the end (needs matplotlib)")
    max_bad_steps: int = opt(5, "abort after this many consecutive non-finite losses", min=1)

    # ---- linear probe after pretraining (the demo) -----------------------------------------------
    probe: bool = opt(True, "linear probe on the test split after training, beside a random-init encoder")
    probe_clips: int = opt(2, "uniformly spaced clips averaged per video for probe features", min=1)
    probe_epochs: int = opt(200, "full-batch Adam epochs of the linear classifier", min=1)

    # ---- kNN monitor during pretraining ---------------------------------------------------------
    knn_every: int = opt(
        4,
        "weighted kNN top-1 every N epochs and after the last (bank: `split`, queries: `probe_split`, "
        "probe_clips clips per video); 0 = off",
        min=0,
    )
    knn_k: int = opt(20, "kNN monitor: neighbours that vote", min=1)
    knn_t: float = opt(0.07, "kNN monitor: vote weight exp(cos / knn_t)", min=1e-4)


# ----------------------------------------------------------------------------------------------
# Coercion and validation
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (YAML-parsed) to type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            s = value.strip()
            if s in ("", "[]", "()"):
                value = []
            else:
                parsed = yaml.safe_load(s if s.startswith(("[", "(")) else f"[{s}]")
                value = parsed if isinstance(parsed, list) else [parsed]
        if origin is list and isinstance(value, int | float | str) and not isinstance(value, bool):
            value = [value]  # a single scalar for a list field: stride1_stages=4
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is list:
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads '1e-3' as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _unknown(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}"


def _build(cls: type, values: dict, prefix: str = "", errors: list[str] | None = None):
    """Instantiate dataclass ``cls`` from defaults updated with ``values`` (nested dicts allowed).

    Problems are appended to ``errors`` when given (and None is returned); without it they are
    raised as one ConfigError.
    """
    errs: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        full = f"{prefix}{k}"
        if k not in fields:
            errs.append(_unknown(full, [f"{prefix}{n}" for n in fields]))
            continue
        tp = hints[k]
        try:
            if dataclasses.is_dataclass(tp) and isinstance(v, dict):
                base = (
                    fields[k].default_factory()
                    if fields[k].default_factory is not dataclasses.MISSING
                    else tp()
                )
                kwargs[k] = _build(tp, {**_shallow_dict(base), **v}, prefix=f"{full}.", errors=errs)
            else:
                kwargs[k] = _coerce(v, tp, full)
        except ConfigError as e:
            errs.append(str(e))
            continue
        meta = fields[k].metadata
        val = kwargs[k]
        if meta.get("choices") and val not in meta["choices"]:
            errs.append(
                f"{full}: invalid value {val!r}; valid choices: {', '.join(map(str, meta['choices']))}"
            )
        if meta.get("min") is not None and isinstance(val, int | float) and val < meta["min"]:
            errs.append(f"{full}: {val!r} is below the minimum {meta['min']}")
    obj = None
    if not errs:
        try:
            obj = cls(**kwargs)
        except (ValueError, TypeError) as e:
            errs.append(f"{prefix.rstrip('.') or cls.__name__}: {e}")
    if errors is not None:
        errors.extend(errs)
        return obj
    if errs:
        raise ConfigError(_format(errs))
    return obj


def _shallow_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _format(errors: list[str]) -> str:
    if len(errors) == 1:
        return f"bad training config: {errors[0]}"
    return "bad training config:\n  - " + "\n  - ".join(errors)


def _validate(cfg: TrainConfig) -> list[str]:
    """Cross-field checks; returns the problems found."""
    errs = []
    bad = [s for s in cfg.global_stride1_stages if s not in (2, 3, 4)]
    if bad or len(set(cfg.global_stride1_stages)) != len(cfg.global_stride1_stages):
        errs.append(
            f"global_stride1_stages: invalid value {cfg.global_stride1_stages!r}; valid choices: a subset of [2, 3, 4]"
        )
    if not (cfg.rc or cfg.mi or cfg.td or cfg.nce):
        errs.append("rc, mi, td, nce: every objective is off; enable at least one")
    if cfg.td and cfg.augment.num_clips < 2:
        errs.append(f"td: L_td orders clips and needs augment.num_clips >= 2, got {cfg.augment.num_clips}")
    if cfg.lr_milestones is not None and any(m < 1 for m in cfg.lr_milestones):
        errs.append(f"lr_milestones: epochs must be >= 1, got {cfg.lr_milestones!r}")
    if cfg.dataset in DATASETS and not get_format(cfg.dataset).rendered and not cfg.data_root:
        errs.append(f"data_root: required for dataset={cfg.dataset!r}")
    return errs


def config_from_dict(values: dict) -> TrainConfig:
    """Build and validate a TrainConfig from a (possibly nested) mapping."""
    if not isinstance(values, dict):
        raise ConfigError(f"bad training config: expected a mapping of keys, got {type(values).__name__}")
    cfg = _build(TrainConfig, values)
    errs = _validate(cfg)
    if errs:
        raise ConfigError(_format(errs))
    return cfg


def _nest(flat: dict[str, Any]) -> dict:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        parts = k.split(".")
        d = out
        for p in parts[:-1]:
            nxt = d.setdefault(p, {})
            if not isinstance(nxt, dict):
                nxt = d[p] = {}
            d = nxt
        d[parts[-1]] = v
    return out


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Merge ``key=value`` strings (values parsed as YAML scalars/lists) into ``values``."""
    flat = {}
    errors = []
    for item in overrides:
        if "=" not in item:
            errors.append(f"override {item!r} is not key=value")
            continue
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            parsed = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            parsed = v
        flat[k] = v if isinstance(parsed, dict) else parsed
    if errors:
        raise ConfigError(_format(errors))
    return _merge(values, _nest(flat))


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    values: dict = {}
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"bad training config: cannot read {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"bad training config: {path} must hold a mapping of keys")
        values = loaded
    values = apply_overrides(values, list(overrides or []))
    return config_from_dict(values)


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (tuples as lists) that :func:`config_from_dict` reads back."""
    return _plain(cfg)


def save_config(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comment`` of each field in the class source (used for AugmentConfig)."""
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith("#"):
            name = s.split(":", 1)[0].strip()
            if name.isidentifier():
                out[name] = s.split("#", 1)[1].strip()
    return out


def help_text() -> str:
    """Every key with its type, default and help (what ``--help`` prints)."""
    lines = []
    default = TrainConfig()

    def emit(cls, obj, prefix):
        hints = typing.get_type_hints(cls)
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(val):
                lines.append(f"  {prefix}{f.name}.*  ({f.metadata.get('help', '')})")
                emit(type(val), val, f"{prefix}{f.name}.")
                continue
            help_ = f.metadata.get("help") or comments.get(f.name, "")
            choices = f.metadata.get("choices")
            extra = f" {{{'|'.join(map(str, choices))}}}" if choices else ""
            tp = _type_name(hints[f.name])
            lines.append(f"  {prefix}{f.name}={json.dumps(_plain(val))}  [{tp}]{extra}\n      {help_}")

    emit(TrainConfig, default, "")
    return "\n".join(lines)
