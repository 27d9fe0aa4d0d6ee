"""YAML files mapped onto dataclasses, with dotted ``key=value`` overrides.

One loader serves every stage: ``load_config(PretrainConfig, "configs/pretrain/demo.yaml",
["run_dir=/tmp/x", "optim.lr=1e-3"])``. Unknown keys and wrongly typed values raise a
``ConfigError`` that names the file (or "command line") and the dotted field, before any
work starts. ``save_config`` writes the resolved config atomically.

Override values are parsed by the one ``key=value`` codec, ``core.keyvalue``: YAML (``lrs=[1e-3, 0.1]``,
``tags={a: 1}``, ``seed=null``), except for a ``str`` field, which takes the text as written
(``prompt=Question: why?`` stays a string; ``null`` still means None where the field allows it).

Every config field carries a one-line doc, its ``# comment`` in the source: ``overtrain.core.keys``
lists every dotted key of a config with its type, default and doc (``overtrain CMD --help``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .atomic import atomic_write_text
from .errors import ConfigError
from .keyvalue import parse_settings
from .paths import CONFIG_ROOT, expand_path

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return parse_count(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str) -> int:
    """'4B' -> 4_000_000_000, '1.5k' -> 1500, '1e6' -> 1_000_000, '2_000' -> 2000.

    Exact (decimal arithmetic): a value that is not a whole number ('0.5', '1.0001k') raises
    ValueError instead of being rounded.
    """
    s = str(text).strip().replace("_", "").lower()
    mult = 1
    if s and s[-1] in _SUFFIXES:
        s, mult = s[:-1], _SUFFIXES[s[-1]]
    try:
        d = Decimal(s) * mult
    except InvalidOperation:
        raise ValueError(f"not a count: {text!r}") from None
    if not d.is_finite() or d != d.to_integral_value():
        raise ValueError(f"not a whole number: {text!r}")
    return int(d)


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            field = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key '{field}'{hint}; known keys here: {', '.join(fields)}", field)
        path = f"{where}.{key}" if where else key
        try:
            kwargs[key] = _coerce(value, hints[key], path)
        except ConfigError as e:
            e.field = e.field or path
            raise
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {e}") from None
    post = getattr(obj, "validate", None)
    if callable(post):
        try:
            post()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{where + ': ' if where else ''}{e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None or not isinstance(nxt, dict) else nxt
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(name_or_path: str, kind: str) -> Path:
    """A config path, or a bare name looked up in ``configs/<kind>/<name>.yaml``."""
    p = Path(expand_path(name_or_path))
    if p.is_file():
        return p
    hub = CONFIG_ROOT / kind / f"{name_or_path}.yaml"
    if hub.is_file():
        return hub
    if p.suffix in (".yaml", ".yml"):
        raise ConfigError(f"{name_or_path}: config file not found")
    known = sorted(x.stem for x in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise ConfigError(
        f"{name_or_path}: no such file and no config named so in configs/{kind}/ (known: {', '.join(known)})"
    )


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: Iterable[str] = (), kind: str = "") -> T:
    """Read YAML ``path`` (or a hub name under configs/<kind>/), apply dotted overrides, validate."""
    data: dict = {}
    where = "command line"
    if path is not None:
        p = resolve_config_path(str(path), kind) if kind else Path(path)
        data = read_yaml(p)
        where = str(p)
    overrides = list(overrides)
    parsed = parse_settings(overrides, cls)
    for key, value in parsed:
        set_dotted(data, key, value)
    try:
        return from_dict(cls, data, where="")
    except ConfigError as e:
        blame = (
            _blame(e.field, overrides, parsed) if path is not None or e.field else ""
        )  # no file: all came from there
        raise ConfigError(f"{where}: {e}{blame}", e.field) from None


def _blame(field: str | None, overrides: list[str], parsed: list[tuple[str, Any]]) -> str:
    """A suffix naming the command-line override that set the bad field (or all, for cross-field errors)."""
    if field is None:
        return f" (with command-line overrides: {' '.join(overrides)})" if overrides else ""
    for raw, (key, _) in zip(reversed(overrides), reversed(parsed)):  # the last setting wins
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return f" (from command-line override '{raw}')"
    return ""


def config_digest(obj: Any, exclude: Iterable[str] = ()) -> str:
    """A short content hash of a config (dataclass or dict) without the ``exclude`` top-level keys."""
    d = to_dict(obj)
    for k in exclude:
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_config(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
