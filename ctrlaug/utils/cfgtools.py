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
* :func:`read_yaml` reads a config file: UTF-8 only, at most :data:`MAX_YAML_BYTES`, no YAML
  aliases (``*name``: an alias bomb of a few hundred bytes expands to gigabytes);
  :func:`check_expanded_size` bounds a mapping that arrived some other way (a checkpoint's saved
  config, whose pickle can share references the same way). Every message that echoes a user's
  value cuts it (:func:`short_repr`) and the whole message (:func:`cap_line`).
* :data:`SEED_MAX`: the largest seed a config accepts.

Only the standard library and PyYAML: importable from every layer of the package.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import json
import math
import reprlib
import types
import typing
from typing import Any

import yaml

from ctrlaug.errors import SEED_MAX, ConfigError, cap_line  # defined there, named here too

__all__ = [
    "ConfigError",
    "SEED_MAX",
    "MAX_YAML_BYTES",
    "read_yaml",
    "yaml_load",
    "check_expanded_size",
    "short_repr",
    "cap_line",
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


#: A config file larger than this is refused (the package's own are a few KB).
MAX_YAML_BYTES = 4 << 20
#: A config mapping with more values than this (counting every key, value and list item as it
#: would be expanded) is refused: TrainConfig has a few hundred.
MAX_CONFIG_VALUES = 20_000
_MAX_DEPTH = 32
_VALUE_CHARS = 200
_MAX_PROBLEMS = 50


def short_repr(v: Any, limit: int = _VALUE_CHARS) -> str:
    """``repr(v)`` cut to about ``limit`` characters, saying how much was cut; bounded work even
    for a huge or self-sharing container (:mod:`reprlib`)."""
    if isinstance(v, str | bytes):
        r = repr(v[: limit + 1])
        if len(v) > limit:
            return f"{r[:limit]}... ({len(v) - limit} more characters cut)"
        return r
    if isinstance(v, int | float | bool | type(None)):
        r = repr(v)
    else:
        rp = reprlib.Repr()
        rp.maxlevel, rp.maxlist, rp.maxtuple, rp.maxdict, rp.maxset = 3, 8, 8, 8, 8
        rp.maxstring, rp.maxother, rp.maxlong = limit, limit, limit
        r = rp.repr(v)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r) - limit} more characters cut)"


def check_expanded_size(values: Any, what: str = "config", limit: int = MAX_CONFIG_VALUES) -> None:
    """:class:`ConfigError` when ``values`` (nested dicts and lists) holds more than ``limit``
    values once every shared reference is expanded, or nests deeper than 32 levels: what a YAML
    alias bomb or a pickle with shared references is. Stops counting at the limit."""
    count = 0

    def walk(v: Any, depth: int) -> None:
        nonlocal count
        if depth > _MAX_DEPTH:
            raise ConfigError(f"bad {what}: nested deeper than {_MAX_DEPTH} levels; not a config")
        if isinstance(v, dict):
            items = [x for kv in v.items() for x in kv]
        elif isinstance(v, list | tuple):
            items = list(v)
        else:
            return
        for x in items:
            count += 1
            if count > limit:
                raise ConfigError(
                    f"bad {what}: more than {limit} values once its shared references (YAML aliases) "
                    "are expanded; not a config this package writes"
                )
            walk(x, depth + 1)

    walk(values, 0)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` is an error (anchors alone are harmless)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not allowed in a config: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load(text)`` refusing aliases (:class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str, what: str = "config") -> Any:
    """The YAML file at ``path`` parsed (``None`` for an empty file): one-line
    :class:`ConfigError` naming the file when it cannot be read, is larger than
    :data:`MAX_YAML_BYTES`, is not UTF-8 (the byte offset), is not YAML (line and column) or uses
    an alias."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__
        raise ConfigError(f"bad {what}: cannot read {path}: {e.strerror or e} [{code}]") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"bad {what}: {path} is larger than {MAX_YAML_BYTES >> 20} MiB; not a config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"bad {what}: {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"bad {what}: {path} is not valid YAML ({problem}{where})") from None


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
        return [f"{key}: expected a finite number, got {short_repr(val)}"]
    if meta.get("choices") and val not in meta["choices"]:
        out.append(
            f"{key}: invalid value {short_repr(val)}; valid choices: {', '.join(map(str, meta['choices']))}"
        )
    if isinstance(val, int | float) and not isinstance(val, bool):
        if meta.get("min") is not None and val < meta["min"]:
            out.append(f"{key}: {short_repr(val)} is below the minimum {meta['min']}")
        if meta.get("max") is not None and val > meta["max"]:
            out.append(f"{key}: {short_repr(val)} is above the maximum {meta['max']}")
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
    """``bad <what>: ...`` listing the problems: at most 50, each cut to 4000 characters."""
    if len(errors) == 1:
        return f"bad {what}: {cap_line(errors[0])}"
    shown = [cap_line(e) for e in errors[:_MAX_PROBLEMS]]
    if len(errors) > _MAX_PROBLEMS:
        shown.append(f"... and {len(errors) - _MAX_PROBLEMS} more problems")
    return f"bad {what}:\n  - " + "\n  - ".join(shown)


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
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {short_repr(value)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            s = value.strip()
            if s in ("", "[]", "()"):
                value = []
            else:
                try:
                    parsed = yaml_load(s if s.startswith(("[", "(")) else f"[{s}]")
                except yaml.YAMLError:
                    raise ConfigError(f"{key}: expected a list, got {short_repr(value)}") from None
                value = parsed if isinstance(parsed, list) else [parsed]
        if origin is list and isinstance(value, int | float | str) and not isinstance(value, bool):
            value = [value]  # a single scalar for a list field: stride1_stages=4
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {short_repr(value)}")
        if origin is list:
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {short_repr(list(value))}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {short_repr(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            if abs(value) >= 2**53:  # 1.0e+20 is no exact integer: refuse it rather than guess
                raise ConfigError(
                    f"{key}: expected an integer, got the float {value!r}, which is not exact at this "
                    "size; write the integer's digits out"
                )
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {short_repr(value)}")
        out = None
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)  # PyYAML reads '1e-3' as a string
            except ValueError:
                pass
        if out is None:
            raise ConfigError(f"{key}: expected a number, got {short_repr(value)}")
        if not math.isfinite(out):  # nan / inf / .inf pass float() but no bound or formula wants them
            raise ConfigError(f"{key}: expected a finite number, got {short_repr(value)}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {short_repr(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {short_repr(value)}")
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
    return f"unknown key {short_repr(key)}{hint}; valid keys: {', '.join(valid)}"


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
                errs.append(f"{short_repr(full)} was renamed to {prefix}{renamed[k]}")
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
            errors.append(f"override {short_repr(item)} is not key=value")
            continue
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            parsed = yaml_load(v) if v.strip() else ""
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
