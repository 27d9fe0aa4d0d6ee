"""Resume identity: which inputs identify a result row, so a rerun reuses exactly the rows it would recompute.

The one way to say "this setting changes no result": a config field declared with
``no_result(...)``. A fine-tuning row's hash leaves it out (below), SFT's recorded config leaves
it out (``finetune.instruct.sft.NOT_RESULT``) and pre-training's resume accepts a new value for it
(``train.pretrain_plan.RESUMABLE_CHANGES``); ``no_result_keys`` lists a config class's such fields as
dotted keys, nested dataclasses included.

A run's identity is its config's fields that change a result (``identity_dict``, hashed by
``finetune.config_hash``) plus the row keys that identify the inputs a path names: a config field
is part of the hash unless marked ``no_result`` (a path, a device, a label) or ``in_row(KEY)``
(identified by the row key KEY instead, e.g. the checkpoint path by ``checkpoint_sha256``, the
checkpoint's content). So a new field changes the identity until it is declared otherwise.

C4 identity (``c4_tokens_sha256``): the sha256 of the C4 validation tokens an evaluation reads,
as little-endian uint32, ``tokens[: predicted + 1]`` (``predicted_tokens`` mirrors the windows of
``core.likelihood.windows``). The tokens rather than the directory's path (moving a directory
changes no result) or its meta.json (which holds a creation time, so a re-preparation of the same
data would differ, and no checksum, so an edited val.npy would not): it is exactly the C4 input
that changes a result, and costs one pass over a few MB. Rows written before it existed have none:
``same_identity`` accepts such a row for a run that evaluates C4 when everything else matches (its
C4 content is unknown; callers warn), and one without C4 metrics only for a run without C4.
"""

from __future__ import annotations

import hashlib
import typing
import warnings
from collections.abc import Iterable
from dataclasses import MISSING, field, fields, is_dataclass

import numpy as np

from .config import to_dict
from .keys import dataclass_of
from .rows import Row


def no_result(default=MISSING, *, factory=MISSING):
    """A config field that changes no result (a path, a device, a label): not part of the identity."""
    return field(default=default, default_factory=factory, metadata={"identity": False})


def in_row(key: str, default=MISSING, *, factory=MISSING):
    """A config field that changes a result and is identified by the row key ``key``, not by the hash
    (e.g. the checkpoint path by ``checkpoint_sha256``, the checkpoint's content)."""
    return field(default=default, default_factory=factory, metadata={"identity": key})


def identity_dict(cfg) -> dict:
    """A config's fields that change a result and have no row key of their own (nested dataclasses
    recursively): every field unless marked ``no_result`` or ``in_row``, so a new field is part
    of the identity until declared otherwise."""
    return {
        f.name: identity_dict(v) if is_dataclass(v := getattr(cfg, f.name)) else to_dict(v)
        for f in fields(cfg)
        if f.metadata.get("identity", True) is True
    }


def no_result_keys(cls, prefix: str = "") -> tuple[str, ...]:
    """The dotted keys of a config class's ``no_result`` fields, nested dataclasses searched (a
    ``no_result`` dataclass field is one key: all of it changes no result)."""
    hints, out = typing.get_type_hints(cls), []
    for f in fields(cls):
        if f.metadata.get("identity", True) is False:
            out.append(prefix + f.name)
        elif (nested := dataclass_of(hints[f.name])) is not None:
            out += no_result_keys(nested, f"{prefix}{f.name}.")
    return tuple(out)


def identity_row_keys(cls) -> tuple[str, ...]:
    """The row keys that carry a config class's ``in_row`` fields, in field order."""
    return tuple(f.metadata["identity"] for f in fields(cls) if isinstance(f.metadata.get("identity"), str))


C4_KEY = "c4_tokens_sha256"


def same_identity(row: Row, ref: dict, keys: Iterable[str]) -> bool:
    """Does ``row`` have the identity ``ref`` (a row dict of the run now) on ``keys``?

    A row without ``c4_tokens_sha256`` but with C4 metrics predates the C4 identity: it matches a
    run that evaluates C4 (``predates_c4_identity``; callers warn); one without C4 metrics matches
    only a run without C4.
    """
    flat = row.to_dict()
    for k in keys:
        if k == C4_KEY and predates_c4_identity(row):
            if ref.get(k) is None:
                return False
        elif flat.get(k) != ref.get(k):
            return False
    return True


def predates_c4_identity(row: Row) -> bool:
    return row.c4_evaluated and getattr(row, C4_KEY, None) is None


def warn_predating(results, rows: Iterable[Row], stacklevel: int = 2) -> None:
    """One warning naming the ``rows`` of ``results`` reused although they predate the C4 identity (no
    ``c4_tokens_sha256``): assumed to be from the same C4 data. ``stacklevel`` as the caller would
    pass it to ``warnings.warn``."""
    legacy = [r.where for r in rows if predates_c4_identity(r)]
    if legacy:
        warnings.warn(
            f"{results}: reusing {len(legacy)} row(s) written before rows recorded their C4 tokens "
            f"(no c4_tokens_sha256), assumed to be from the same C4 data: {', '.join(legacy)}",
            stacklevel=stacklevel + 1,
        )


def predicted_tokens(n_tokens: int, seq_len: int, max_tokens: int | None = None) -> int:
    """C4 tokens a perplexity evaluation predicts: its windows' (``core.likelihood.windows``) count x seq_len."""
    n = (n_tokens - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    return n * seq_len


def c4_identity(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None) -> str:
    """sha256 of the C4 tokens a perplexity evaluation reads (module doc): path- and dtype-independent."""
    n = predicted_tokens(len(tokens), seq_len, max_tokens)
    return hashlib.sha256(np.ascontiguousarray(tokens[: n + 1], dtype="<u4").tobytes()).hexdigest()
