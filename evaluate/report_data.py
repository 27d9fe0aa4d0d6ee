"""The report's numbers: typed results rows -> cells per (checkpoint, task, LR or tuned) -> curves over
pre-training tokens -> turns (``find_turn``). What each number is: ``overtrain.evaluate.report``'s
docstring; which row key it reads: the row types' properties (``overtrain.core.rows``). Also the
formatting shared by the text and the figures (``fmt_*``)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, DataError
from ..core.rows import BaseRow, FinetuneRow, PerturbRow, Row, number

# rows of one (checkpoint, task, LR) cell that differ in these come from different fine-tuning setups
MIX_KEYS = {
    "config_hash": lambda r: r.config_hash,
    "template": lambda r: r.template,
    "tags": lambda r: r.tags,
    "checkpoint_sha256": lambda r: r.ckpt.checkpoint_sha256,
}
REPORTED = (BaseRow, FinetuneRow, PerturbRow)  # other kinds ("eval", unknown) are counted and ignored
METRIC_WORDS = {"id": "ID perplexity", "c4": "C4 perplexity"}


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_tokens(n: float) -> str:
    """4e9 -> '4B', 96000 -> '96K', 1.5e9 -> '1.5B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def fmt_lr(lr: float) -> str:
    return np.format_float_scientific(lr, trim="-", exp_digits=1)


def fmt_num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return ""
    if math.isinf(x):
        return "inf"
    if abs(x) >= 10**digits:  # large perplexities (an untrained model): whole numbers, not 5.097e+04
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def fmt_pct(x: float) -> str:
    return f"{x:.3g}" if x < 0.01 else f"{x * 100:.3g}%"


def _num(x) -> float | None:
    """A value of a row of any kind (unchecked) as float; None for missing, NaN, bools and strings."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def lookup(row: Row | dict, key: str):
    """A row value by key, dotted path into nested dicts, or grid tag (``tags.KEY``, dots as ``_``)."""
    row = row.to_dict() if isinstance(row, Row) else row
    if key in row:
        return row[key]
    cur = row
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            break
        cur = cur[part]
    else:
        return cur
    tags = row.get("tags")
    if isinstance(tags, dict):
        for k in (key, key.replace(".", "_"), key.removeprefix("tags.")):
            if k in tags:
                return tags[k]
    return None


# ---------------------------------------------------------------------------------------------
# Aggregation


@dataclass(frozen=True, order=True)
class Series:
    """Checkpoints that form one curve over pre-training tokens."""

    group: tuple[str, ...]
    params: int  # non-embedding parameters: sorts models by size
    model: str
    intermediate: bool  # not LR-decayed (an Amuro & Char checkpoint)
    run_budget: int  # intermediate: the token budget of the run they come from; 0 otherwise

    def label(self, group_by: list[str], with_model: bool = True) -> str:
        parts = [self.model] if with_model else []
        parts += [f"{k}={v}" for k, v in zip(group_by, self.group)]
        if self.intermediate:
            parts.append("intermediate" + (f" of {fmt_tokens(self.run_budget)} run" if self.run_budget else ""))
        return ", ".join(parts)


@dataclass
class Cell:
    """Fine-tuning metrics of one (checkpoint, task, LR or tuned), averaged over its rows."""

    id_ppl: float | None
    c4_ppl: float | None
    acc: float | None
    val_id_ppl: float | None
    n: int
    lrs: tuple[float, ...] = ()


@dataclass
class Curve:
    series: Series
    metric: str  # "base_c4" | "id" | "c4" | "noise"
    task: str | None
    setting: str  # "base", "tuned", "lr=1e-4", "gamma=0.5"
    value: float | None  # the fixed LR or gamma; None for base and tuned
    x: list[float]
    y: list[float]
    turn: int | None = None  # index of the minimum when the curve is worse after it
    worse_by: float = 0.0  # relative change from the minimum to the largest budget

    @property
    def turn_tokens(self) -> float | None:
        return None if self.turn is None else self.x[self.turn]

    @property
    def interior(self) -> bool:
        return self.turn is not None and self.turn > 0


def find_turn(x: list[float], y: list[float], tolerance: float) -> tuple[int | None, float]:
    """(index of the minimum, relative degradation at the largest budget); index None unless that
    degradation exceeds ``tolerance``. Lower is better; x is ascending; inf counts as worst."""
    if len(y) < 2:
        return None, 0.0
    i = int(np.argmin(y))
    if i == len(y) - 1:
        return None, 0.0
    worse = math.inf if math.isinf(y[-1]) else (y[-1] / y[i] - 1 if y[i] > 0 else y[-1] - y[i])
    return (i if worse > tolerance else None), worse


@dataclass
class Report:
    group_by: list[str]
    tolerance: float
    files: list[Path]
    base: dict = field(default_factory=dict)  # (series, tokens) -> base C4 ppl
    fixed: dict = field(default_factory=dict)  # (series, task) -> {tokens: {lr: Cell}}
    tuned: dict = field(default_factory=dict)  # (series, task) -> {tokens: Cell}
    noise: dict = field(default_factory=dict)  # series -> {gamma: {tokens: (mean, std, n)}}
    curves: list[Curve] = field(default_factory=list)
    verdicts: dict = field(default_factory=dict)  # task -> {"shows": bool, "curves": [Curve], "text": str}
    notes: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return sorted({t for _, t in self.fixed})

    @property
    def series(self) -> list[Series]:
        keys = {s for s, _ in self.base} | {s for s, _ in self.fixed} | set(self.noise)
        return sorted(keys)

    def find(
        self, metric: str, task: str | None = None, setting: str | None = None, series: Series | None = None
    ) -> list[Curve]:
        return [
            c
            for c in self.curves
            if c.metric == metric
            and (task is None or c.task == task)
            and (setting is None or c.setting == setting)
            and (series is None or c.series == series)
        ]


def _series_of(row: BaseRow | FinetuneRow | PerturbRow, flat: dict, group_by: list[str], params_of: dict):
    """(the row's series, its pre-training tokens); ``flat``: ``row.to_dict()``."""
    ck = row.ckpt
    tokens = number(ck.pretrain_tokens)
    if tokens is None:
        raise DataError(f"{row.where}: {row.kind} row without a numeric 'pretrain_tokens'")
    model = _model_name(ck.model, ck.non_embedding_params)
    if model is None:
        raise DataError(f"{row.where}: {row.kind} row names no 'model' (nor 'non_embedding_params')")
    intermediate = ck.lr_decayed is False
    budget = int(number(ck.budget_tokens) or 0) if intermediate else 0
    group = tuple("-" if lookup(flat, k) is None else str(lookup(flat, k)) for k in group_by)
    return Series(group, params_of.get(model, 0), model, intermediate, budget), tokens


def _model_name(model, params) -> str | None:
    params = _num(params)
    if model is not None:
        return str(model)
    return None if params is None else f"{fmt_tokens(params)} params"


def collect(rows: list[Row], group_by: list[str], tolerance: float, files: list[Path] | None = None) -> Report:
    """Cells, curves and their turns from typed rows (``core.rows.load_rows``); verdicts: ``report_text.judge``."""
    rep = Report(group_by, tolerance, files or [])
    flats = [r.to_dict() for r in rows]
    if group_by:
        missing = [k for k in group_by if all(lookup(r, k) is None for r in flats)]
        if missing:
            keys = sorted({k for r in flats for k in r} | {f"tags.{k}" for r in flats for k in (r.get("tags") or {})})
            raise ConfigError(
                f"command line: --group-by {', '.join(missing)}: no results row has this key (keys: {', '.join(keys)})"
            )
    params_of: dict[str, int] = {}  # model -> non-embedding parameters (any row that says), to sort by size
    for row in flats:
        n, name = _num(row.get("non_embedding_params")), _model_name(row.get("model"), row.get("non_embedding_params"))
        if n is not None and name is not None:
            params_of[name] = max(params_of.get(name, 0), int(n))
    base_rows, ft_rows, noise_rows = defaultdict(list), defaultdict(list), defaultdict(list)
    kinds: dict[str, int] = defaultdict(int)
    no_decay_flag = 0
    for row, flat in zip(rows, flats):
        kinds[str(row.kind)] += 1
        if type(row) not in REPORTED:
            continue
        series, tokens = _series_of(row, flat, group_by, params_of)
        no_decay_flag += row.ckpt.lr_decayed is None
        if isinstance(row, BaseRow):
            base_rows[series, tokens].append(("base", row.base_c4_ppl))
        elif isinstance(row, PerturbRow):
            gamma, ppl, ref = number(row.gamma), number(row.c4_ppl), row.base_c4_ppl
            if gamma is None or ppl is None or ref is None:
                raise DataError(f"{row.where}: perturb row needs numeric 'gamma', 'c4_ppl' and 'c4_ppl_base'")
            noise_rows[series, gamma, tokens].append(ppl - ref)
            base_rows[series, tokens].append(("perturb", ref))
        else:
            task, lr = row.task, number(row.lr)
            if not task or lr is None:
                raise DataError(f"{row.where}: {row.kind} row needs a 'task' and a numeric 'lr'")
            ft_rows[series, str(task), tokens].append(row)
            base_rows[series, tokens].append(("finetune", row.base_c4_ppl))
    rep.notes.append("rows read: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if no_decay_flag:
        rep.notes.append(f"{no_decay_flag} rows have no 'lr_decayed': treated as fully decayed")

    for key, vals in base_rows.items():  # base C4: base rows, else fine-tuning rows, else perturb rows
        for source in ("base", "finetune", "perturb"):
            v = _mean(x for s, x in vals if s == source)
            if v is not None:
                rep.base[key] = v
                break

    computed, mixed = 0, set()
    for (series, task, tokens), rs in ft_rows.items():
        by_lr = defaultdict(list)
        # a sweep records the tuned LR as a *copy* of its row (selected: true): fixed-LR cells
        # use the plain rows, and the flagged ones only where an LR has no plain row
        for r in rs:
            by_lr[float(r.lr)].append(r)
        for lr, group in by_lr.items():
            plain = [r for r in group if r.selected is not True]
            by_lr[lr] = plain or group
            mixed |= {k for k, get in MIX_KEYS.items() if len({repr(get(r)) for r in by_lr[lr]}) > 1}
        rep.fixed.setdefault((series, task), {})[tokens] = {lr: _cell(g, (lr,)) for lr, g in sorted(by_lr.items())}
        chosen = [r for r in rs if r.selected is True]
        if not chosen:  # no flagged row: select by validation ID perplexity here
            scored = [
                (c.val_id_ppl, lr) for lr, c in rep.fixed[series, task][tokens].items() if c.val_id_ppl is not None
            ]
            if not scored:
                continue
            chosen = by_lr[min(scored)[1]]
            computed += 1
        rep.tuned.setdefault((series, task), {})[tokens] = _cell(chosen, tuple(sorted({float(r.lr) for r in chosen})))
    if mixed:
        rep.notes.append(
            f"some cells average rows that differ in {', '.join(sorted(mixed))} (different fine-tuning "
            "configs?): pass --group-by to compare them apart"
        )
    if computed:
        rep.notes.append(
            f"{computed} (checkpoint, task) cells had no row flagged 'selected': tuned LR = lowest val_id_ppl"
        )

    for (series, gamma, tokens), deltas in noise_rows.items():
        rep.noise.setdefault(series, {}).setdefault(gamma, {})[tokens] = (
            float(np.mean(deltas)),
            float(np.std(deltas)),
            len(deltas),
        )

    _build_curves(rep)
    return rep


def _cell(rows: list[FinetuneRow], lrs: tuple[float, ...]) -> Cell:
    return Cell(
        id_ppl=_mean(r.id_ppl for r in rows),
        c4_ppl=_mean(r.c4_ppl_after for r in rows),
        acc=_mean(r.acc for r in rows),
        val_id_ppl=_mean(r.val_id_ppl for r in rows),
        n=len(rows),
        lrs=lrs,
    )


def _curve(
    rep: Report, series: Series, metric: str, task: str | None, setting: str, value: float | None, points: dict
) -> None:
    pts = sorted((x, y) for x, y in points.items() if y is not None)
    if not pts:
        return
    c = Curve(series, metric, task, setting, value, [p[0] for p in pts], [p[1] for p in pts])
    if metric != "noise":  # perplexities: lower is better; noise sensitivity is not judged that way
        c.turn, c.worse_by = find_turn(c.x, c.y, rep.tolerance)
    rep.curves.append(c)


def _build_curves(rep: Report) -> None:
    by_series = defaultdict(dict)
    for (s, t), v in rep.base.items():
        by_series[s][t] = v
    for s, pts in sorted(by_series.items()):
        _curve(rep, s, "base_c4", None, "base", None, pts)
    for (s, task), per_tokens in sorted(rep.fixed.items()):
        lrs = sorted({lr for cells in per_tokens.values() for lr in cells})
        for metric, attr in (("id", "id_ppl"), ("c4", "c4_ppl")):
            for lr in lrs:
                pts = {t: getattr(cells[lr], attr) for t, cells in per_tokens.items() if lr in cells}
                _curve(rep, s, metric, task, f"lr={fmt_lr(lr)}", lr, pts)
            tuned = rep.tuned.get((s, task), {})
            _curve(rep, s, metric, task, "tuned", None, {t: getattr(c, attr) for t, c in tuned.items()})
    for s, per_gamma in sorted(rep.noise.items()):
        for gamma, pts in sorted(per_gamma.items()):
            _curve(rep, s, "noise", None, f"gamma={gamma:g}", gamma, {t: v[0] for t, v in pts.items()})
