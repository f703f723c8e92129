"""Generic machinery of dataclass configurations; the schema lives in :mod:`ctrlaug.config`.

* :func:`opt` declares a field: default, one help line, and optionally the valid ``choices`` and
  inclusive bounds ``min`` / ``max``. A dataclass may add cross-field rules in a ``_problems()``
  method returning ``"field: message"`` strings, and old key names in a ``RENAMED`` class
  attribute (``{"old": "new.dotted.key"}``, optionally followed by ``"; a note"``).
* :func:`config` is ``@dataclass`` plus :func:`validate` after construction: it checks both and
  raises one :class:`ConfigError` listing every problem.
* :func:`build` makes a dataclass from a nested mapping of YAML-parsed values, coercing each
  value to its field's type; :func:`apply_overrides` merges ``key=value`` strings; unknown keys
  come with did-you-mean suggestions. Every problem of a config is reported at once.
* A nested dataclass with an ``enabled`` field takes a bare boolean as shorthand:
  ``rc=false`` means ``rc.enabled=false``.
* :func:`help_text` lists every key with its type, default, choices and help line.

Only the standard library and PyYAML: importable from every layer of the package.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from typing import Any

import yaml

from ctrlaug.errors import ConfigError

__all__ = [
    "ConfigError",
    "config",
    "opt",
    "validate",
    "build",
    "apply_overrides",
    "expand_shorthand",
    "to_dict",
    "help_text",
    "format_problems",
]


def opt(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    factory=None,
):
    """A config field: default (or ``factory``), help line, optional choices and inclusive bounds."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field_problems(f: dataclasses.Field, val: Any, key: str) -> list[str]:
    """Problems of one value against its field's ``choices`` / ``min`` / ``max``."""
    meta, out = f.metadata, []
    if isinstance(val, float) and not math.isfinite(val):
        return [f"{key}: expected a finite number, got {val!r}"]
    if meta.get("choices") and val not in meta["choices"]:
        out.append(f"{key}: invalid value {val!r}; valid choices: {', '.join(map(str, meta['choices']))}")
    if isinstance(val, int | float) and not isinstance(val, bool):
        if meta.get("min") is not None and val < meta["min"]:
            out.append(f"{key}: {val!r} is below the minimum {meta['min']}")
        if meta.get("max") is not None and val > meta["max"]:
            out.append(f"{key}: {val!r} is above the maximum {meta['max']}")
    return out


def _problems(obj) -> list[str]:
    """Every field-level problem of dataclass ``obj``, then its own cross-field ``_problems()``."""
    out: list[str] = []
    for f in dataclasses.fields(obj):
        out += _field_problems(f, getattr(obj, f.name), f.name)
    hook = getattr(obj, "_problems", None)
    if hook is not None:
        try:
            out += hook()
        except (TypeError, ValueError, IndexError):
            if not out:  # a broken field already reported can trip the cross-field rules
                raise
    return out


def validate(obj) -> None:
    """Raise one :class:`ConfigError` naming every problem of dataclass ``obj`` (from ``__post_init__``)."""
    errs = _problems(obj)
    if errs:
        name = type(obj).__name__
        raise ConfigError("; ".join(f"{name}.{e}" for e in errs), errs)


def config(cls: type) -> type:
    """``@dataclass`` that validates every instance on construction (:func:`validate`), after the
    class's own ``__post_init__`` if it has one (e.g. to normalise YAML lists into tuples)."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        if own is not None:
            own(self)
        validate(self)

    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(cls)


def format_problems(errors: list[str], what: str = "config") -> str:
    if len(errors) == 1:
        return f"bad {what}: {errors[0]}"
    return f"bad {what}:\n  - " + "\n  - ".join(errors)


# ----------------------------------------------------------------------------------------------
# Coercion
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
        out = None
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)  # PyYAML reads '1e-3' as a string
            except ValueError:
                pass
        if out is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(out):  # nan / inf / .inf pass float() but no bound or formula wants them
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return out
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
        return build(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _switchable(tp: Any) -> bool:
    """A nested dataclass that a bare boolean switches on or off (it has an ``enabled`` field)."""
    return dataclasses.is_dataclass(tp) and any(f.name == "enabled" for f in dataclasses.fields(tp))


def _shorthand(tp: Any, value: Any) -> Any:
    if _switchable(tp) and not isinstance(value, dict | tp):
        return {"enabled": value}
    return value


def expand_shorthand(cls: type, values: dict) -> dict:
    """``values`` with every bare boolean of a switchable nested dataclass turned into
    ``{"enabled": value}`` (recursively), so that merging keeps the other fields."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for k, v in values.items():
        tp = hints.get(k) if k in names else None
        if tp is not None and dataclasses.is_dataclass(tp):
            v = _shorthand(tp, v)
            if isinstance(v, dict):
                v = expand_shorthand(tp, v)
        out[k] = v
    return out


def _unknown(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}"


def _default_of(f: dataclasses.Field, tp: Any):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    return tp()


def build(cls: type, values: dict, prefix: str = "", errors: list[str] | None = None, what: str = "config"):
    """Instantiate dataclass ``cls`` from its defaults updated with ``values`` (nested dicts allowed).

    Problems are appended to ``errors`` when given (and None is returned); without it they are
    raised as one ConfigError (``bad <what>: ...``).
    """
    errs: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    renamed = getattr(cls, "RENAMED", {})
    kwargs = {}
    for k, v in values.items():
        full = f"{prefix}{k}"
        if k not in fields:
            if k in renamed:
                errs.append(f"{full!r} was renamed to {prefix}{renamed[k]}")
            else:
                errs.append(_unknown(full, [f"{prefix}{n}" for n in fields]))
            continue
        tp = hints[k]
        v = _shorthand(tp, v)
        try:
            if dataclasses.is_dataclass(tp) and isinstance(v, dict):
                base = _default_of(fields[k], tp)
                kwargs[k] = build(tp, {**_shallow_dict(base), **v}, prefix=f"{full}.", errors=errs)
                continue
            kwargs[k] = _coerce(v, tp, full)
        except ConfigError as e:
            errs.extend(e.problems)
            continue
        errs += _field_problems(fields[k], kwargs[k], full)
    obj = None
    if not errs:
        try:
            obj = cls(**kwargs)
        except ConfigError as e:
            errs.extend(f"{prefix}{p}" for p in e.problems)
        except (ValueError, TypeError) as e:
            errs.append(f"{prefix.rstrip('.') or cls.__name__}: {e}")
    if errors is not None:
        errors.extend(errs)
        return obj
    if errs:
        raise ConfigError(format_problems(errs, what), errs)
    return obj


def _shallow_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# ----------------------------------------------------------------------------------------------
# key=value overrides
# ----------------------------------------------------------------------------------------------


def _flat_shorthand(cls: type, key: str) -> bool:
    """Whether dotted ``key`` names a switchable nested dataclass of ``cls``."""
    tp: Any = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            return False
        tp = typing.get_type_hints(tp)[part]
    return _switchable(tp)


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


def apply_overrides(
    values: dict, overrides: list[str], cls: type | None = None, what: str = "config"
) -> dict:
    """Merge ``key=value`` strings (values parsed as YAML scalars/lists) into ``values``.

    With the schema ``cls``, ``rc=false`` for a switchable nested dataclass merges as
    ``rc.enabled=false`` (keeping the other ``rc`` fields of ``values``).
    """
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
        if cls is not None and _flat_shorthand(cls, k) and not isinstance(parsed, dict):
            k = f"{k}.enabled"
        flat[k] = v if isinstance(parsed, dict) else parsed
    if errors:
        raise ConfigError(format_problems(errors, what), errors)
    if cls is not None:
        values = expand_shorthand(cls, values)
    return _merge(values, _nest(flat))


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def to_dict(v: Any) -> Any:
    """Plain nested dicts and lists (tuples as lists) that :func:`build` reads back."""
    if dataclasses.is_dataclass(v):
        return {f.name: to_dict(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, list | tuple):
        return [to_dict(x) for x in v]
    return v


def help_text(obj) -> str:
    """Every key of dataclass instance ``obj`` with its type, default value, choices and help."""
    lines: list[str] = []

    def emit(o, prefix):
        hints = typing.get_type_hints(type(o))
        for f in dataclasses.fields(o):
            val = getattr(o, f.name)
            help_ = f.metadata.get("help", "")
            if dataclasses.is_dataclass(val):
                lines.append(f"  {prefix}{f.name}.*  ({help_})")
                emit(val, f"{prefix}{f.name}.")
                continue
            choices = f.metadata.get("choices")
            extra = f" {{{'|'.join(map(str, choices))}}}" if choices else ""
            tp = _type_name(hints[f.name])
            lines.append(f"  {prefix}{f.name}={json.dumps(to_dict(val))}  [{tp}]{extra}\n      {help_}")

    emit(obj, "")
    return "\n".join(lines)
