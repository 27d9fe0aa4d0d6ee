"""Results rows: one schema per row kind, filled by every writer and read by the report and resume.

A row on disk is one flat JSON object in ``results.jsonl``; DESIGN.md, "Results rows", lists its keys.
This module is the schema and the typed reader: ``load_rows`` is how results are read. ``core.jsonl`` is
the file store under it (locked appends, torn tails): writers append ``row.to_dict()`` with
``core.jsonl.append_record``, and its ``read_records`` returns the untyped dicts, for the few readers
that must keep them as written. The kinds and who writes them:

    FinetuneRow  "finetune"  one fine-tuning run (``overtrain finetune``/``sweep``); the sweep's tuned
                             LR is a copy of one with ``selected: true``, ``selected_from``, ``selected_by``
                             (and the grid extension's ``lr_extended``, ``lr_extensions``, ``lr_extend_stop``)
    BaseRow      "base"      a pre-trained checkpoint evaluated (the sweep's base evaluation, or
                             ``overtrain evaluate --results``)
    EvalRow      "eval"      ``overtrain evaluate --results`` on any other checkpoint (the report ignores it)
    PerturbRow   "perturb"   C4 perplexity under weight noise (``overtrain perturb``)
    TheoryRow    "theory"    one point of the linear-network study (``overtrain theory``, ``finetune.theory``)
    AlpacaEvalRow "alpaca_eval" AlpacaEval win rates of a suite member (``overtrain alpaca-eval``,
                             ``evaluate.alpaca``), drawn by ``evaluate.report.suite_part`` like the suite kinds below
    OtherRow     any other   kept as read; the report counts and ignores it, except the suite kinds
                             "lm_eval" (``overtrain lm-eval``) and "multimodal" (``overtrain multimodal``,
                             ``finetune.instruct.multimodal``: a LLaVA-tuned suite member on a visual QA set; keys
                             ``out``, ``task``, ``acc``, ``n``, ``chance`` (mean 1/choices), ``p_value``
                             (one-sided exact test against chance), ``scores`` (``multimodal.TASK.acc``
                             per question) and the member's provenance, ``core.suite.PROVENANCE_KEYS``),
                             which ``evaluate.report.suite_part`` draws against pre-training tokens

Shared parts are flattened into the row (their fields are row keys): ``Checkpoint`` (which
checkpoint: ``checkpoint``, ``checkpoint_sha256``, ``model``, ``pretrain_tokens``, ...) and
``Metrics`` (one evaluation: ``c4_ppl``, ``c4_loss`` and, per evaluated task split s of val/test/
train, ``s_id_ppl``, ``s_acc``, ``s_label_token_acc``). A fine-tuning row holds two Metrics, named
by suffix: after (``val_id_ppl``, ..., ``c4_ppl_after``) and before (``val_id_ppl_before``, ...,
``c4_ppl_before``). Metric values may be NaN/inf (a diverged run is a result).

Reading (``parse_row``, ``load_rows``): a missing key is None (rows written before a key existed
still load); a key of the wrong type is a ``DataError`` naming file:line and key; unknown keys are
kept in ``extra``. Writing (``to_dict``): a new row writes the schema's keys in schema order, less
the ``optional`` ones that are None and the metrics not evaluated; a row read from disk writes back
the keys it was read with, in their order, plus any new key set since (the sweep's selected copy),
so ``parse_row(d).to_dict() == d``.

Per-example scores (for the report's intervals) live beside the results file, not in the row: a
compressed ``scores/ID.npz`` (``write_scores``, written whole before its row is appended) named by
the row's optional ``scores`` key (a path relative to the results file's folder; ``read_scores``).
Its arrays are named ``after.SPLIT.NAME`` in a fine-tuning row's file (after fine-tuning) and
``SPLIT.NAME`` in a base/eval row's; SPLIT "c4" (NAME nll, tokens: per C4 window) or "val"/"test" (``evaluate.task_metrics``'
``examples``: nll, correct, label, n_classes for classification; nll, tokens for LM tasks). Rows
without the key (older ones) report without intervals.

The rows' resume identity (which config fields and row keys identify a result, and the C4
tokens' ``c4_tokens_sha256``) is ``core.identity``.

This module is long because it declares every row key once, field by field, with its meaning (a
fine-tuning row has ~50); the kinds share one reading and writing machinery (``Row``), so they stay
together.
"""

from __future__ import annotations

import io
import math
import os
import types
import typing
import uuid
import warnings
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .atomic import atomic_write_bytes
from .errors import DataError
from .jsonl import Records, read_records

OPTIONAL = {"optional": True}  # a new row leaves the key out when its value is None
_INTERNAL = {"internal": True}  # not a row key

# Task splits as row-key prefixes (val_id_ppl, test_acc, ...), and each split's metrics.
SHORT = {"validation": "val", "test": "test", "train": "train"}
SPLIT_METRICS = ("id_ppl", "acc", "label_token_acc")


def number(x) -> float | None:
    """A metric value as float; None for missing and NaN (inf stays: a diverged run is worst)."""
    return None if x is None or math.isnan(x) else float(x)


def first_number(*values) -> float | None:
    return next((v for v in map(number, values) if v is not None), None)


# ---------------------------------------------------------------------------------------------
# Values: checked against the field types


_TYPES = {float: "a number", int: "a number", bool: "true/false", str: "a string", dict: "an object", list: "a list"}


def _check(value, typ, where: str, key: str):
    """``value`` if it fits ``typ`` (None always does), else a DataError naming where and key."""
    if value is None or typ not in _TYPES:
        return value
    if typ in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise DataError(f"{where or 'results row'}: key '{key}': expected {_TYPES[typ]}, got {value!r:.80}")
    return value


@cache
def _types(cls) -> dict[str, type]:
    """Field name -> its type without ``| None`` (``dict[str, X]`` -> dict; a union of several -> Any)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        args = [a for a in args if a is not type(None)]
        t = args[0] if len(args) == 1 else Any
        out[name] = typing.get_origin(t) or t
    return out


# ---------------------------------------------------------------------------------------------
# Parts


@dataclass
class Checkpoint:
    """Which checkpoint a row is about (``core.checkpoint.checkpoint_provenance``'s keys)."""

    checkpoint: str | None = None  # the resolved step directory
    checkpoint_sha256: str | None = None  # of model.pt: the checkpoint's identity
    checkpoint_step: int | None = None
    checkpoint_kind: str | None = None  # "pretrain", "finetune", ...
    model: str | None = None  # model config name
    non_embedding_params: int | None = None
    pretrain_tokens: int | None = None
    budget_tokens: int | None = None  # the pre-training run's budget (groups its intermediate checkpoints)
    lr_decayed: bool | None = None  # False: an intermediate checkpoint
    final: bool | None = None
    pretrain_run: str | None = None


@dataclass
class SplitMetrics:
    """One task split's ID metrics (``evaluate.task_metrics``)."""

    id_ppl: float | None = None
    acc: float | None = None
    label_token_acc: float | None = None


@dataclass
class Metrics:
    """One evaluation (``evaluate.evaluator.evaluate_encoded``) as row keys; C4 keys only when C4 was evaluated."""

    c4_ppl: float | None = None
    c4_loss: float | None = None
    splits: dict[str, SplitMetrics] = field(default_factory=dict)  # "val"/"test"/"train" -> metrics, as evaluated

    @classmethod
    def of(cls, evaluation: dict | None) -> Metrics:
        """From ``{"c4": {ppl, loss, ..} | None, split: {id_ppl, acc, ..}}`` (None: nothing evaluated)."""
        if not evaluation:
            return cls()
        c4 = evaluation.get("c4")
        splits = {
            SHORT.get(s, s): SplitMetrics(*(m.get(k) for k in SPLIT_METRICS))
            for s, m in evaluation.items()
            if s != "c4"
        }
        return cls(c4["ppl"] if c4 else None, c4["loss"] if c4 else None, splits)

    def __bool__(self) -> bool:
        return self.has_c4 or bool(self.splits)

    @property
    def has_c4(self) -> bool:
        return self.c4_ppl is not None or self.c4_loss is not None

    def split(self, name: str) -> SplitMetrics:
        """A split's metrics ("val", "test", "train"); all None when it was not evaluated."""
        return self.splits.get(name) or SplitMetrics()

    def keys(self, c4_suffix: str, split_suffix: str, c4_first: bool, everything: bool = False) -> dict:
        """Row keys and values (``everything``: the C4 keys also when not evaluated)."""
        c4 = {f"c4_ppl{c4_suffix}": self.c4_ppl, f"c4_loss{c4_suffix}": self.c4_loss}
        c4 = c4 if everything or self.has_c4 else {}
        splits = {f"{s}_{k}{split_suffix}": getattr(m, k) for s, m in self.splits.items() for k in SPLIT_METRICS}
        return {**c4, **splits} if c4_first else {**splits, **c4}

    @classmethod
    def from_keys(cls, row: dict, c4_suffix: str, split_suffix: str, where: str) -> tuple[Metrics, set[str]]:
        """The Metrics named by these suffixes in ``row``, and the keys it used."""
        used = set()
        out = cls()
        for attr in ("c4_ppl", "c4_loss"):
            key = attr + c4_suffix
            if key in row:
                setattr(out, attr, _check(row[key], float, where, key))
                used.add(key)
        names = _split_keys(split_suffix)
        for key in row:  # in the row's order, so splits keep theirs
            if key in names:
                s, k = names[key]
                setattr(out.splits.setdefault(s, SplitMetrics()), k, _check(row[key], float, where, key))
                used.add(key)
        return out, used


@cache
def _split_keys(suffix: str) -> dict[str, tuple[str, str]]:
    return {f"{s}_{k}{suffix}": (s, k) for s in SHORT.values() for k in SPLIT_METRICS}


def part(cls):
    """A nested dataclass whose fields are row keys."""
    return field(default_factory=cls, metadata={"part": True})


def metrics(c4_suffix: str, split_suffix: str, c4_first: bool = True):
    """A ``Metrics`` whose keys carry these suffixes."""
    return field(default_factory=Metrics, metadata={"metrics": (c4_suffix, split_suffix, c4_first)})


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    """A results row; subclasses declare its keys as fields in the order they are written (``KIND``
    first as ``kind``; ``part`` and ``metrics`` fields flattened in place; ``extra`` last)."""

    KIND: ClassVar[str | None] = None

    extra: dict = field(default_factory=dict, metadata=_INTERNAL)  # keys this schema does not know, kept
    where: str = field(default="", compare=False, repr=False, metadata=_INTERNAL)  # "file:line" when read
    # the keys of the dict it was read from, in order: written back as they were (``to_dict``)
    keys_read: tuple | None = field(default=None, compare=False, repr=False, metadata=_INTERNAL)

    @property
    def kind(self) -> str | None:
        return self.KIND

    @property
    def c4_evaluated(self) -> bool:
        return False

    def _items(self, everything: bool) -> dict:
        """Row keys in schema order: what a new row writes, or (``everything``) every key it can hold."""
        out = {"kind": self.KIND} if self.KIND else {}
        for f in fields(self):
            m, v = f.metadata, getattr(self, f.name)
            if m.get("internal"):
                continue
            if "metrics" in m:
                out.update(v.keys(*m["metrics"], everything=everything))
            elif m.get("part"):
                out.update((g.name, getattr(v, g.name)) for g in fields(v))
            elif everything or v is not None or not m.get("optional"):
                out[f.name] = v
        out.update(self.extra)
        return out

    def to_dict(self) -> dict:
        """The JSON object to write (see the module doc)."""
        new = self._items(everything=False)
        if self.keys_read is None:
            return new
        every = self._items(everything=True)
        out = {k: every[k] for k in self.keys_read if k in every}
        out.update((k, v) for k, v in new.items() if k not in out and v is not None)
        return out

    def schema_keys(self) -> list[str]:
        """Every key of this row's schema (its metrics: the C4 keys and the splits it has)."""
        return [k for k in self._items(everything=True) if k not in self.extra]

    def get(self, key: str, default=None):
        """A value by its row key (``to_dict()``'s)."""
        return self.to_dict().get(key, default)

    @classmethod
    def from_dict(cls, row: dict, where: str = "") -> Row:
        """Parse one row dict: missing keys None, wrong types a DataError, unknown keys kept."""
        if cls.KIND and row.get("kind", cls.KIND) != cls.KIND:
            raise DataError(f"{where or 'results row'}: a {row['kind']!r} row read as a {cls.KIND!r} row")
        hints, kw, used = _types(cls), {}, {"kind"} if cls.KIND else set()
        for f in fields(cls):
            m = f.metadata
            if m.get("internal"):
                continue
            if "metrics" in m:
                kw[f.name], keys = Metrics.from_keys(row, *m["metrics"][:2], where)
                used |= keys
            elif m.get("part"):
                sub, ptypes = hints[f.name], _types(hints[f.name])
                kw[f.name] = sub(
                    **{g.name: _check(row[g.name], ptypes[g.name], where, g.name) for g in fields(sub) if g.name in row}
                )
                used |= {g.name for g in fields(sub)}
            elif f.name in row:
                kw[f.name] = _check(row[f.name], hints[f.name], where, f.name)
                used.add(f.name)
        extra = {k: v for k, v in row.items() if k not in used}
        return cls(**kw, extra=extra, where=where, keys_read=tuple(row))


@dataclass
class FinetuneRow(Row):
    """One fine-tuning run: its checkpoint, task, setup, training statistics, and metrics after and before."""

    KIND: ClassVar[str] = "finetune"

    run_id: str | None = None  # the run directory's name
    run_dir: str | None = None
    ckpt: Checkpoint = part(Checkpoint)
    checkpoint_ref: str | None = None  # as given, e.g. RUN@tokens=N
    task: str | None = None
    task_type: str | None = None
    template: str | None = None
    lr: float | None = None
    seed: int | None = None
    selected: bool | None = None  # the sweep's tuned-LR copy
    config_hash: str | None = None  # the resume identity's hashed part (finetune.config_hash)
    epochs: float | None = None
    batch_size: int | None = None
    mup_optimizer: bool | None = None
    optimizer: str | None = field(default=None, metadata=OPTIONAL)  # "mup_adamw" | "adamw" (finetune config)
    lr_groups: dict | None = field(
        default=None, metadata=OPTIONAL
    )  # peak LR per parameter group (core.optim.group_lrs)
    l2_to_pretrained: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None  # the decay shape
    train_examples: int | None = None
    total_steps: int | None = None
    steps: int | None = None  # taken: fewer than total_steps when diverged
    train_tokens: int | None = None  # completion tokens trained on
    train_input_tokens: int | None = None  # context + completion tokens
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    train_loss_last_epoch: float | None = None
    diverged: bool | None = None
    train_seconds: float | None = None
    train_tokens_per_s: float | None = None
    finetune_lr_decayed: bool | None = None
    after: Metrics = metrics("_after", "", c4_first=False)  # val_id_ppl, ..., c4_ppl_after, c4_loss_after
    before: Metrics = metrics("_before", "_before")  # the base model's; empty without eval_before
    id_ppl_before: float | None = field(default=None, metadata=OPTIONAL)  # = test_id_ppl_before
    c4_tokens: int | None = None  # predicted C4 tokens evaluated
    c4_tokens_sha256: str | None = field(default=None, metadata=OPTIONAL)  # C4 identity (core.identity)
    n_examples: dict | None = None  # per split
    truncated: dict | None = None  # prompts cut from the left, per split
    completion_truncated: dict | None = None
    skipped_empty: dict | None = None
    split_info: Any = None  # the task's
    task_source: str | None = field(default=None, metadata=OPTIONAL)  # which data was read and why (Task.source)
    loss_span: str | None = field(default=None, metadata=OPTIONAL)  # lm tasks: "answer" | "sequence"
    tags: dict | None = None  # grid-axis labels
    wall_s: float | None = None
    time: float | None = None
    stacked: bool | None = field(default=None, metadata=OPTIONAL)  # trained in a stacked sweep
    stack_size: int | None = field(default=None, metadata=OPTIONAL)
    selected_from: list | None = field(default=None, metadata=OPTIONAL)  # the LR grid of the selection
    selected_by: str | None = field(default=None, metadata=OPTIONAL)
    extended_lr: bool | None = field(default=None, metadata=OPTIONAL)  # an LR the sweep added past its grid's end
    lr_extended: bool | None = field(default=None, metadata=OPTIONAL)  # selected row: the grid was extended
    lr_extensions: list | None = field(default=None, metadata=OPTIONAL)  # selected row: the LRs added, in order
    lr_extend_stop: str | None = field(default=None, metadata=OPTIONAL)  # selected row at a grid end: why no further LR
    scores: str | None = field(default=None, metadata=OPTIONAL)  # per-example scores file (``write_scores``)

    @property
    def c4_evaluated(self) -> bool:
        return self.after.has_c4

    @property
    def id_ppl(self) -> float | None:
        """ID perplexity after fine-tuning: test, else validation (None: neither, or NaN)."""
        return first_number(self.after.split("test").id_ppl, self.after.split("val").id_ppl)

    @property
    def acc(self) -> float | None:
        """Accuracy after fine-tuning: test, else validation."""
        return first_number(self.after.split("test").acc, self.after.split("val").acc)

    @property
    def val_id_ppl(self) -> float | None:
        """Validation ID perplexity after fine-tuning: what selects the tuned LR."""
        return number(self.after.split("val").id_ppl)

    @property
    def c4_ppl_after(self) -> float | None:
        return number(self.after.c4_ppl)

    @property
    def base_c4_ppl(self) -> float | None:
        """The base model's C4 perplexity (before fine-tuning)."""
        return number(self.before.c4_ppl)


@dataclass
class BaseRow(Row):
    """A checkpoint evaluated as it is: the sweep's base evaluation, or ``overtrain evaluate --results``."""

    KIND: ClassVar[str] = "base"

    ckpt: Checkpoint = part(Checkpoint)
    checkpoint_ref: str | None = field(default=None, metadata=OPTIONAL)  # sweep
    c4_tokens: int | None = field(default=None, metadata=OPTIONAL)  # evaluate
    c4_tokens_sha256: str | None = field(default=None, metadata=OPTIONAL)
    task: str | None = None  # None: C4 only
    task_type: str | None = field(default=None, metadata=OPTIONAL)
    template: str | None = field(default=None, metadata=OPTIONAL)
    seed: int | None = field(default=None, metadata=OPTIONAL)  # sweep
    config_hash: str | None = field(default=None, metadata=OPTIONAL)  # sweep
    evaluation: Metrics = metrics("", "")  # c4_ppl, c4_loss, val_id_ppl, ...
    n_examples: dict | None = field(default=None, metadata=OPTIONAL)  # evaluate
    truncated: dict | None = field(default=None, metadata=OPTIONAL)
    completion_truncated: dict | None = field(default=None, metadata=OPTIONAL)
    skipped_empty: dict | None = field(default=None, metadata=OPTIONAL)
    task_source: str | None = field(default=None, metadata=OPTIONAL)  # which data was read and why (Task.source)
    loss_span: str | None = field(default=None, metadata=OPTIONAL)  # lm tasks: "answer" | "sequence"
    metrics: dict | None = field(default=None, metadata=OPTIONAL)  # sweep: the evaluation, reused on resume
    tags: dict | None = field(default=None, metadata=OPTIONAL)  # sweep
    wall_s: float | None = field(default=None, metadata=OPTIONAL)  # sweep
    scores: str | None = field(default=None, metadata=OPTIONAL)  # per-example scores file (``write_scores``)
    time: float | None = None

    @property
    def c4_evaluated(self) -> bool:
        return self.evaluation.has_c4

    @property
    def base_c4_ppl(self) -> float | None:
        return number(self.evaluation.c4_ppl)


@dataclass
class EvalRow(BaseRow):
    """``overtrain evaluate --results`` on a checkpoint that is not a pre-trained one (e.g. fine-tuned weights)."""

    KIND: ClassVar[str] = "eval"


@dataclass
class PerturbRow(Row):
    """C4 perplexity of a checkpoint under weight noise of scale gamma (one noise seed)."""

    KIND: ClassVar[str] = "perturb"

    run_id: str | None = None
    ckpt: Checkpoint = part(Checkpoint)
    c4_ppl_base: float | None = None  # without noise
    c4_tokens: int | None = None  # predicted C4 tokens evaluated
    c4_tokens_sha256: str | None = field(default=None, metadata=OPTIONAL)
    seq_len: int | None = None
    tags: dict | None = field(default=None, metadata=OPTIONAL)
    gamma: float | None = None
    noise_seed: int | None = None
    c4_ppl: float | None = None
    c4_ppl_change: float | None = None  # c4_ppl - c4_ppl_base
    wall_s: float | None = None
    time: float | None = None

    @property
    def c4_evaluated(self) -> bool:
        return True

    @property
    def base_c4_ppl(self) -> float | None:
        return number(self.c4_ppl_base)


@dataclass
class TheoryRow(Row):
    """One point of the linear-network study (``finetune.theory``): a pre-trained network ("pretrain"), its
    loss under weight noise ("perturb"), one fine-tuning run ("finetune"; the tuned LR's copy has
    ``selected: true``), or the longest run's singular values over time ("trace"). Losses are
    population losses 1/2 ||W - T||_F^2 (T = A for ``pretrain_*``, the task's B for ``finetune_*``)."""

    KIND: ClassVar[str] = "theory"

    study: str | None = None  # the config's name
    config_hash: str | None = None  # finetune.theory.config_hash: the resume identity
    seed: int | None = None  # initialization seed
    data_seed: int | None = None  # target (and sample) seed
    measure: str | None = None  # "pretrain" | "perturb" | "finetune" | "trace"
    budget_steps: int | None = None  # the pre-training run's length (its LR decays to 0 there)
    pretrain_lr: float | None = None
    schedule: str | None = None  # the pre-training decay shape
    task: str | None = field(default=None, metadata=OPTIONAL)  # fine-tuning task
    theta_deg: float | None = field(default=None, metadata=OPTIONAL)  # its misalignment (0: aligned)
    gamma: float | None = field(default=None, metadata=OPTIONAL)  # perturbation scale (units of the init std)
    noise_draws: int | None = field(default=None, metadata=OPTIONAL)  # 0: exact expectation
    finetune_steps: int | None = field(default=None, metadata=OPTIONAL)
    lr: float | None = field(default=None, metadata=OPTIONAL)  # fine-tuning LR
    l2: float | None = field(default=None, metadata=OPTIONAL)  # strength of L2 towards the pre-trained weights
    selected: bool | None = field(default=None, metadata=OPTIONAL)  # the tuned LR's copy
    selected_from: list | None = field(default=None, metadata=OPTIONAL)
    selected_by: str | None = field(default=None, metadata=OPTIONAL)
    diverged: bool | None = field(default=None, metadata=OPTIONAL)
    pretrain_loss: float | None = field(default=None, metadata=OPTIONAL)  # A's loss of the measured weights
    pretrain_loss_base: float | None = field(default=None, metadata=OPTIONAL)  # ... of the pre-trained weights
    pretrain_loss_increase: float | None = field(default=None, metadata=OPTIONAL)  # perturb: expected increase
    finetune_loss: float | None = field(default=None, metadata=OPTIONAL)  # the task's loss after fine-tuning
    finetune_val_loss: float | None = field(default=None, metadata=OPTIONAL)  # what selected the LR
    finetune_losses: dict | None = field(default=None, metadata=OPTIONAL)  # pretrain: each task's loss before
    singular_values: list | None = field(default=None, metadata=OPTIONAL)  # pretrain: of W2 W1 (top r)
    target_singular_values: list | None = field(default=None, metadata=OPTIONAL)  # trace: A's
    trace_steps: list | None = field(default=None, metadata=OPTIONAL)  # trace: steps of the longest run
    trace_singular_values: list | None = field(default=None, metadata=OPTIONAL)  # trace: one list per step
    tags: dict | None = field(default=None, metadata=OPTIONAL)
    wall_s: float | None = None
    time: float | None = None


@dataclass
class AlpacaEvalRow(Row):
    """AlpacaEval of one suite member (``overtrain alpaca-eval``, ``evaluate.alpaca``): the ``alpaca-eval``
    package's judge against reference outputs; win rates are fractions in [0, 1] with standard errors;
    per-instruction preferences in the scores file (``alpaca_eval.TASK.win_rate``, ``lc_win_rate``, ...)."""

    KIND: ClassVar[str] = "alpaca_eval"

    out: str | None = None  # the folder with outputs.json, annotations.json and the judge config
    checkpoint: str | None = None  # the member's transformers directory
    checkpoint_sha256: str | None = None  # of its weights
    suite_model: str | None = None  # the member's provenance (core.suite.PROVENANCE_KEYS)
    suite_revision: str | None = None
    suite_commit: str | None = None
    pretrain_tokens: int | None = None
    sft_data: str | None = None
    sft: dict | None = None
    sft_stats: dict | None = None
    task: str | None = None  # "alpaca_eval/JUDGE": curves of different judges are never pooled
    instructions: str | None = None  # the instruction set as given (hub name or local file)
    reference: str | None = None  # the hub file of reference outputs (None: a local file)
    n_instructions: int | None = None
    judge: str | None = None  # as given: annotator config name, configs.yaml or local model directory
    judge_sha256: str | None = None  # of the annotator config (and a local judge's weights)
    generation: dict | None = None  # greedy, max_new_tokens, context, prompts_cut, chat_template_sha256, dtype
    settings: dict | None = None  # the command's settings that change the result
    win_rate: float | None = None  # mean preference for the member's output (ties 0.5)
    win_rate_se: float | None = None  # its standard error (the package's)
    lc_win_rate: float | None = None  # length-controlled (the package's GLM); None without it
    lc_win_rate_se: float | None = None
    n_wins: int | None = None
    n_wins_base: int | None = None  # the reference won
    n_draws: int | None = None
    n_total: int | None = None  # annotated instructions
    n_missing: int | None = None  # instructions the judge left unannotated (0.5 in the scores file)
    judge_prompts_cut: int | None = field(default=None, metadata=OPTIONAL)  # local judge: prompts past its context
    avg_length: float | None = None  # mean characters per answer
    alpaca_eval_version: str | None = None
    scores: str | None = field(default=None, metadata=OPTIONAL)  # per-instruction scores file (``write_scores``)
    wall_s: float | None = None
    time: float | None = None


@dataclass
class OtherRow(Row):
    """A row of a kind this version does not know (or without one): kept as read."""

    @property
    def kind(self):
        return self.extra.get("kind")


KINDS = {c.KIND: c for c in (FinetuneRow, BaseRow, EvalRow, PerturbRow, TheoryRow, AlpacaEvalRow)}


def parse_row(row: dict, where: str = "") -> Row:
    """The typed row of a row dict, by its ``kind``."""
    kind = row.get("kind")
    return KINDS.get(kind, OtherRow).from_dict(row, where) if isinstance(kind, str) else OtherRow.from_dict(row, where)


def encoding_counts(encoded: dict) -> dict:
    """Row fields n_examples, truncated, completion_truncated, skipped_empty, task_source, loss_span of
    a task's encoded splits (``data.encode.EncodedSplit`` per split name)."""
    return {
        "n_examples": {s: len(e.examples) for s, e in encoded.items()},
        "truncated": {s: e.truncated for s, e in encoded.items()},
        "completion_truncated": {s: e.completion_truncated for s, e in encoded.items()},
        "skipped_empty": {s: e.skipped_empty for s, e in encoded.items()},
        # optional keys (None: left out): the task's source, and the loss span of an lm task
        "task_source": next((e.source for e in encoded.values() if getattr(e, "source", "")), None),
        "loss_span": next((e.loss_span for e in encoded.values() if e.type == "lm"), None),
    }


class Rows(Records):
    """``core.jsonl.Records`` whose items are typed rows (``Row``): what ``load_rows`` returns."""


def load_rows(source: str | os.PathLike | list, warn: bool = True) -> Rows:
    """``core.jsonl.read_records``, each record parsed (``parse_row``); ``files``/``where``/``torn`` as there."""
    raw = read_records(source, warn=False)
    out = Rows(parse_row(r, w) for r, w in zip(raw, raw.where))
    out.files, out.where, out.torn = raw.files, raw.where, raw.torn
    if out.torn and warn:
        warnings.warn(
            f"ignored {len(out.torn)} torn final line(s) (interrupted writes): {', '.join(out.torn)}", stacklevel=2
        )
    return out


# ---------------------------------------------------------------------------------------------
# Per-example scores beside the results file


def write_scores(results: str | os.PathLike, scores: dict) -> str | None:
    """Write nested ``{part: {split: {name: array}}}`` (or ``{split: {name: array}}``) as one
    compressed ``scores/ID.npz`` beside ``results`` (a new random ID; written whole, then renamed),
    and return its path relative to ``results``' folder: the row's ``scores`` key. None when empty."""
    flat = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            elif v is not None:
                flat[f"{prefix}{k}"] = np.asarray(v)

    walk("", scores)
    if not flat:
        return None
    rel = f"scores/{uuid.uuid4().hex[:16]}.npz"
    buf = io.BytesIO()
    np.savez_compressed(buf, **flat)
    atomic_write_bytes(Path(results).parent / rel, buf.getvalue())
    return rel


def read_scores(row: Row) -> dict[str, np.ndarray] | None:
    """A row's per-example scores (``write_scores``' flat names -> arrays); None when the row has no
    ``scores`` key or the file is gone (the report then has no intervals for it)."""
    rel = row.get("scores")  # a schema key, or kept in ``extra`` (lm_eval rows are OtherRows)
    if not isinstance(rel, str) or not rel:
        return None
    folder = Path(row.where.rsplit(":", 1)[0]).parent if row.where else Path(".")
    try:
        with np.load(folder / rel) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
