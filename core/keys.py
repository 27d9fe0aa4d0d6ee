"""The keys of a config dataclass: dotted names, types, defaults and one-line docs (``--help``).

A field's doc is its ``# comment`` in the source: the comment on the field's own line(s), else the
first sentence of the comment block right above it (read with ``ast`` and ``tokenize``, so a
field spread over several lines by the formatter keeps its doc). Nested dataclasses are expanded
into dotted keys (``optim.lr``), as ``load_config`` overrides address them. Defaults are shown as
they would be written on the command line (``core.keyvalue.format_value``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from typing import Any

from .keyvalue import dataclass_of, format_value


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> one-line doc of dataclass ``cls``: the ``# comment`` on the field's own line(s),
    else the first sentence of the comment lines right above it; inherited fields keep their base
    class's doc. Fields without a comment, or a class whose source is not available, have no entry."""
    inherited: dict[str, str] = {}  # a subclass's fields after its bases' (dataclass order), docs too
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            inherited.update(field_docs(base))
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return inherited
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), tok.start[0] not in code_lines)
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    (node,) = ast.parse(src).body
    docs = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        own = [comments[n][0] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        above, n = [], stmt.lineno - 1
        while n in comments and comments[n][1]:
            above.insert(0, comments[n][0])
            n -= 1
        text = " ".join(own) or re.split(r"(?<=\.)\s+(?=[A-Z])", " ".join(above))[0]  # a block: its first sentence
        if text:
            docs[stmt.target.id] = text
    return {**inherited, **docs}


def type_name(tp: Any) -> str:
    """A short, readable annotation: ``int | None``, ``list[str]``, ``'mup' | 'sp'``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    return getattr(tp, "__name__", str(tp))


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) of every setting of dataclass ``cls``.

    Nested dataclasses are expanded into their dotted keys; an optional one (``X | None``) is also
    listed itself, since ``key=null`` switches it off.
    """
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints[f.name], prefix + f.name
        if f.default is not dataclasses.MISSING:
            default = format_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = "" if dataclasses.is_dataclass(tp) else format_value(f.default_factory())
        else:
            default = "(required)"
        nested = dataclass_of(tp)
        if nested is None or nested is not tp:
            out.append((key, type_name(tp), default, docs.get(f.name, "")))
        if nested is not None:
            out += config_keys(nested, key + ".")
    return out


def describe_keys(cls: type, width: int = 100, indent: str = "  ") -> str:
    """``config_keys`` as aligned lines ``key  type = default  doc``, docs wrapped at ``width``
    (after a long ``type = default``, the doc starts on the next line)."""
    rows = [(k, f"{t} = {d}" if d else t, doc) for k, t, d, doc in config_keys(cls)]
    if not rows:
        return f"{indent}(none)"
    wk, wt = max(len(r[0]) for r in rows), min(max(len(r[1]) for r in rows), 30)
    pad = " " * (len(indent) + wk + wt + 4)
    wrap = max(width, len(pad) + 40)
    lines = []
    for key, typ, doc in rows:
        head = f"{indent}{key:<{wk}}  {typ:<{wt}}  "
        if len(head) > len(pad) and doc:
            lines.append(head.rstrip())
            head = pad
        lines += textwrap.wrap(doc, wrap, initial_indent=head, subsequent_indent=pad) or [head.rstrip()]
    return "\n".join(lines)
