"""The ``key=value`` codec: dotted settings with YAML values, parsed, and formatted back.

One codec serves the command line (``cli``), a config's overrides (``core.config.load_config``)
and the grid's job lines (``launch.plan``), so a value the grid writes reads back as itself:

    parse_value(format_value(v)) == v      (v: None, bool, int, float, str, list, dict of those)

Parsing: the key is everything before the first ``=`` (dotted: ``optim.lr``), the value YAML
(PyYAML's rules: ``lrs=[1e-3,0.1]``, ``c4=null``, ``tags={a: 1}``); for a ``str`` field of the
config (``field_type``) the value is its text as written (``prompt=Question: why?`` stays a
string, ``name=1.50`` is not 1.5), ``null`` still None where the field allows it, and a quoted
text (``'null'``, ``"a, b"``: what ``format_value`` writes for a string YAML would misread) is
unquoted.

Formatting: YAML flow style (a list without blanks, ``[0.001,0.01]``, as the grid's job lines
have always written it); a string as written when YAML reads it back unchanged (in a flow
collection too: ``a,b`` inside a list is quoted), else double-quoted (JSON's escapes, which YAML
reads); a float so that PyYAML reads a float (``1e-05`` would be the string '1e-05' to it, so
``1.0e-05``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

import yaml

from .errors import ConfigError

SETTING = re.compile(r"[A-Za-z_][\w.-]*=")  # `key=value`; a path such as RUN@tokens=N is positional
NULLS = ("null", "Null", "NULL", "~")


def is_setting(token: str) -> bool:
    """Whether a command-line token is a ``key=value`` setting (else a positional)."""
    return SETTING.match(token) is not None


def setting_key(pair: str) -> str:
    """The dotted key of ``key=value``."""
    return pair.split("=", 1)[0].strip().lstrip("-")


def top_key(pair: str) -> str:
    """The top-level key of ``key=value`` (``optim`` of ``optim.lr=1e-3``)."""
    return setting_key(pair).split(".", 1)[0]


def parse_value(raw: str) -> Any:
    """A value's text as YAML (text that is not valid YAML, and the empty text, stay text)."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_settings(pairs: Iterable[str], cls: type | None = None) -> list[tuple[str, Any]]:
    """``["optim.lr=1e-3", "tags=[a,b]"]`` -> [("optim.lr", 0.001), ...]; with dataclass ``cls``,
    a ``str`` field's value is its text (see the module doc). A malformed pair is a ConfigError."""
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"command line: override '{pair}' is not of the form key=value")
        key, raw = setting_key(pair), pair.split("=", 1)[1]
        if not key:
            raise ConfigError(f"command line: override '{pair}' has an empty key")
        out.append((key, _text_value(raw, field_type(cls, key)) if cls is not None else parse_value(raw)))
    return out


def _text_value(raw: str, tp: Any) -> Any:
    """``raw`` for a field of annotation ``tp``: its text when ``tp`` is ``str`` (or ``str | None``)."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if not (tp is str or (optional and set(typing.get_args(tp)) == {str, type(None)})):
        return parse_value(raw)
    if optional and raw in NULLS:
        return None
    if raw[:1] in ("'", '"') and isinstance(unquoted := parse_value(raw), str):
        return unquoted
    return raw


def format_value(value: Any) -> str:
    """``value`` as a setting's text that ``parse_value`` reads back as ``value`` (YAML flow style)."""
    return _format(value, flow=False)


def format_setting(key: str, value: Any) -> str:
    """``key=VALUE`` with ``format_value``."""
    return f"{key}={format_value(value)}"


def _format(value: Any, flow: bool) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        plain = parse_value(f"[{value}]") == [value] if flow else value != "" and parse_value(value) == value
        return value if plain else json.dumps(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        text = repr(value)
        if "e" in text and "." not in text:  # PyYAML's float needs a dot (and a signed exponent)
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{'' if exp[0] in '+-' else '+'}{exp}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v, True) for v in value) + "]"  # no blank: one shell word
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_format(k, True)}: {_format(v, True)}" for k, v in value.items()) + "}"
    return repr(value)


def merge_settings(*lists: Iterable[str]) -> list[str]:
    """key=value settings of several lists as one, a later value of a key replacing an earlier one
    (in the place of the key's first setting)."""
    out: dict[str, str] = {}
    for setting in (s for lst in lists for s in lst):
        out[setting_key(setting)] = setting
    return list(out.values())


def field_type(cls: type | None, dotted: str) -> Any:
    """The annotation of dotted key ``dotted`` in dataclass ``cls`` (through nested and optional
    dataclasses), or None where the key is unknown or lies inside a mapping."""
    tp: Any = cls
    for name in dotted.strip().lstrip("-").split("."):
        tp = dataclass_of(tp)
        if tp is None:
            return None
        fields = {f.name for f in dataclasses.fields(tp)}
        if name not in fields:
            return None
        tp = typing.get_type_hints(tp)[name]
    return tp


def dataclass_of(tp: Any) -> type | None:
    """``tp`` itself, or X of ``X | None``, when that is a dataclass; else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None
