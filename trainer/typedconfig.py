"""Typed YAML configs: dataclasses filled from YAML plus `a.b=value` overrides, validated at load.

One mechanism for every job kind (ingest, training, ...). It lives in `trainer/` because the
trainer must run on a cluster with nothing but `trainer/` installed, and the pipeline may import
from the trainer but never the other way round.
"""

from __future__ import annotations

import dataclasses
import math
import types
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, ill-typed or out of range; the message names the key."""


class MissingKeys(ConfigError):
    """A section lacks keys that have no default."""

    def __init__(self, where: str, missing: list[str]):
        super().__init__(f"{where or 'config'}: missing required key(s) {', '.join(missing)}")
        self.missing = missing


def load_config(cls: type[T], path: str | Path | Traversable | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> T:
    """Build `cls` from defaults <- `base` <- YAML file <- `--set key=value` overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path) if isinstance(path, str) else path
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}{_shipped_copy(path)}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = deep_merge(data, loaded)
    for item in overrides or []:
        key, value = parse_override(item)
        data = deep_merge(data, nest(key, value))
    return from_dict(cls, data)


def _shipped_copy(path: Path | Traversable) -> str:
    """Where recap's own copy of a missing `configs/NAME.yaml` is (the README's `--config
    configs/dit.yaml` run outside the repository), or ""."""
    if isinstance(path, Path) and path.parent.name == "configs" and default_config(path.name).is_file():
        return f" (recap installs its own {path.name} at {default_config(path.name)}: pass that path, or a copy)"
    return ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's complaint and where, on one line."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or " ".join(str(e).split()))


def default_config(name: str) -> Traversable:
    """A file of recap's default configs (`configs/<name>`), wherever recap is installed: package
    data of the `configs` package, which is also the repository's user-facing `configs/` folder."""
    return resources.files("configs").joinpath(name)


def load_with_defaults(cls: type[T], defaults: str, path: str | Path | None = None,
                       overrides: list[str] | None = None) -> T:
    """A job's config: its defaults file (`configs/<defaults>`), then the user's file, then overrides."""
    base = yaml.safe_load(default_config(defaults).read_text()) or {}
    return load_config(cls, path, overrides, base=base)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3); the value is parsed as YAML so numbers, bools and lists work."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _one_level_down(name: str, data: dict[str, Any], hints: dict[str, Any]) -> list[str]:
    """Known sections holding a key `name` (`motion` -> `filters.motion`, `text` -> `signals.text`):
    a key given one level too high, as a filter's reject reason (`motion.min`) reads."""
    found = []
    for section, hint in hints.items():
        value = data.get(section)
        if (isinstance(value, dict) and name in value) or (
                dataclasses.is_dataclass(hint) and name in {f.name for f in dataclasses.fields(hint)}):
            found.append(f"{section}.{name}")
    return found


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        nearby = _one_level_down(unknown[0], data, {name: hints[name] for name in fields})
        hint = f"; did you mean {', '.join(repr(f'{where}.{k}' if where else k) for k in nearby)}?" if nearby else ""
        raise ConfigError(f"unknown config key {key!r} (known here: {', '.join(sorted(fields))}{hint})")
    missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise MissingKeys(where, missing)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        obj = cls(**kwargs)
    except ConfigError as e:     # a range check of the section: say which section, if it does not
        if where and not str(e).startswith(where):
            raise ConfigError(f"{where}: {e}") from None
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """Plain dict/list form of a config (for library.json and run records)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        out = {}
        for k, v in value.items():
            try:
                out[k] = _coerce(vt, v, f"{key}.{k}")
            except MissingKeys as e:   # most likely a typo: `filters.moton.min` makes a new entry
                others = ", ".join(sorted(str(o) for o in value if o != k)) or "none"
                raise ConfigError(f"{key}.{k}: no such entry (known: {others}); a new entry needs "
                                  f"{', '.join(e.missing)}") from None
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        given = value
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string: a number field means a number
            value = _float_or_none(value)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {given!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {given!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            hint = (f" (YAML reads {value!r} as a number: quote it, e.g. --set '{key}=\"{value}\"')"
                    if isinstance(value, (int, float)) and not isinstance(value, bool) else "")
            raise ConfigError(f"{key}: expected a string, got {value!r}{hint}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None  # no nan / inf


__all__ = ["ConfigError", "load_config", "load_with_defaults", "from_dict", "to_dict", "parse_override", "deep_merge"]
