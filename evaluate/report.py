"""``overtrain report RESULTS... out=DIR``: the study's tables, figures and verdict, from results rows.

    overtrain report runs/demo out=runs/demo/report [group_by=parametrization] [tolerance=0.01]

Writes ``report.md`` (also printed), ``summary.csv`` (size x budget x task), ``perturb.csv`` and
PNGs: base C4 perplexity vs tokens, per task ID and C4 perplexity after fine-tuning vs tokens (one
line per fixed LR, one for the tuned LR), noise sensitivity vs tokens (one line per gamma).

What the numbers are (rows of several seeds or repeated evaluations are averaged):
- a *checkpoint* is (group, model, lr_decayed, pretrain_tokens); intermediate checkpoints
  (``lr_decayed: false``) form their own curves per pre-training run (``budget_tokens``), drawn
  dotted with hollow markers and never mixed into the fully decayed curves or the verdict;
- base C4 perplexity: ``c4_ppl`` of kind "base" rows, else ``c4_ppl_before`` of fine-tuning rows,
  else ``c4_ppl_base`` of perturbation rows;
- after fine-tuning: ID perplexity ``test_id_ppl`` (else ``val_id_ppl``), C4 ``c4_ppl_after``,
  accuracy ``test_acc`` (else ``val_acc``);
- tuned LR: the rows flagged ``selected``; where no row of a (checkpoint, task) is flagged, the LR
  with the lowest mean ``val_id_ppl`` (said so in the report);
- a curve *turns* at the budget that minimizes it when the curve at the largest budget is worse
  than that minimum by more than ``tolerance`` (relative). The turn is an inflection (marked on
  the figures) when it is interior; a curve worse from the smallest budget on turns "at or before"
  it. A task shows catastrophic overtraining when its tuned-LR ID or C4 curve turns.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, DataError, atomic_savefig, atomic_write_text
from ..core.results import iter_rows, results_files

FT_KINDS = ("finetune",)
ID_KEYS = ("test_id_ppl", "val_id_ppl")
ACC_KEYS = ("test_acc", "val_acc")
# rows of one (checkpoint, task, LR) cell that differ in these come from different fine-tuning setups
MIX_KEYS = ("config_hash", "template", "tags", "checkpoint_sha256")


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


def _pct(x: float) -> str:
    return f"{x:.3g}" if x < 0.01 else f"{x * 100:.3g}%"


def _num(x) -> float | None:
    """A metric value as float; None for missing, NaN, bools and strings."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def _first(row: dict, keys) -> float | None:
    for k in keys:
        v = _num(row.get(k))
        if v is not None:
            return v
    return None


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def lookup(row: dict, key: str):
    """A row value by key, dotted path into nested dicts, or grid tag (``tags.KEY``, dots as ``_``)."""
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


def load_rows(sources: list[str]) -> tuple[list[tuple[str, dict]], list[Path], list[str]]:
    """(("file:line", row), ...), files read, torn lines skipped."""
    files: list[Path] = []
    for s in sources:
        files += [f for f in results_files(s) if f not in files]
    rows, torn = [], []
    for f in files:
        rows += [(f"{f}:{i}", r) for i, r in iter_rows(f, torn)]
    return rows, files, torn


def _series_of(where: str, row: dict, group_by: list[str], params_of: dict) -> tuple[Series, float]:
    tokens = _num(row.get("pretrain_tokens"))
    if tokens is None:
        raise DataError(f"{where}: {row.get('kind')} row without a numeric 'pretrain_tokens'")
    model = _model_name(row)
    if model is None:
        raise DataError(f"{where}: {row.get('kind')} row names no 'model' (nor 'non_embedding_params')")
    intermediate = row.get("lr_decayed") is False
    budget = int(_num(row.get("budget_tokens")) or 0) if intermediate else 0
    group = tuple("-" if lookup(row, k) is None else str(lookup(row, k)) for k in group_by)
    return Series(group, params_of.get(model, 0), model, intermediate, budget), tokens


def _model_name(row: dict) -> str | None:
    params = _num(row.get("non_embedding_params"))
    if row.get("model") is not None:
        return str(row["model"])
    return None if params is None else f"{fmt_tokens(params)} params"


def aggregate(
    rows: list[tuple[str, dict]], group_by: list[str], tolerance: float, files: list[Path] | None = None
) -> Report:
    rep = Report(group_by, tolerance, files or [])
    if group_by:
        missing = [k for k in group_by if all(lookup(r, k) is None for _, r in rows)]
        if missing:
            keys = sorted(
                {k for _, r in rows for k in r} | {f"tags.{k}" for _, r in rows for k in (r.get("tags") or {})}
            )
            raise ConfigError(
                f"command line: --group-by {', '.join(missing)}: no results row has this key (keys: {', '.join(keys)})"
            )
    params_of: dict[str, int] = {}  # model -> non-embedding parameters (any row that says), to sort by size
    for _, row in rows:
        n, name = _num(row.get("non_embedding_params")), _model_name(row)
        if n is not None and name is not None:
            params_of[name] = max(params_of.get(name, 0), int(n))
    base_rows, ft_rows, noise_rows = defaultdict(list), defaultdict(list), defaultdict(list)
    kinds: dict[str, int] = defaultdict(int)
    no_decay_flag = 0
    for where, row in rows:
        kind = row.get("kind")
        kinds[str(kind)] += 1
        if kind not in ("base", "perturb", *FT_KINDS):
            continue
        series, tokens = _series_of(where, row, group_by, params_of)
        no_decay_flag += row.get("lr_decayed") is None
        if kind == "base":
            base_rows[series, tokens].append(("base", _num(row.get("c4_ppl"))))
        elif kind == "perturb":
            gamma, ppl, ref = _num(row.get("gamma")), _num(row.get("c4_ppl")), _num(row.get("c4_ppl_base"))
            if gamma is None or ppl is None or ref is None:
                raise DataError(f"{where}: perturb row needs numeric 'gamma', 'c4_ppl' and 'c4_ppl_base'")
            noise_rows[series, gamma, tokens].append(ppl - ref)
            base_rows[series, tokens].append(("perturb", ref))
        else:
            task, lr = row.get("task"), _num(row.get("lr"))
            if not task or lr is None:
                raise DataError(f"{where}: {kind} row needs a 'task' and a numeric 'lr'")
            ft_rows[series, str(task), tokens].append(row)
            base_rows[series, tokens].append(("finetune", _num(row.get("c4_ppl_before"))))
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
            by_lr[float(r["lr"])].append(r)
        for lr, group in by_lr.items():
            plain = [r for r in group if r.get("selected") is not True]
            by_lr[lr] = plain or group
            mixed |= {k for k in MIX_KEYS if len({repr(r.get(k)) for r in by_lr[lr]}) > 1}
        rep.fixed.setdefault((series, task), {})[tokens] = {lr: _cell(g, (lr,)) for lr, g in sorted(by_lr.items())}
        chosen = [r for r in rs if r.get("selected") is True]
        if not chosen:  # no flagged row: select by validation ID perplexity here
            scored = [
                (c.val_id_ppl, lr) for lr, c in rep.fixed[series, task][tokens].items() if c.val_id_ppl is not None
            ]
            if not scored:
                continue
            chosen = by_lr[min(scored)[1]]
            computed += 1
        rep.tuned.setdefault((series, task), {})[tokens] = _cell(
            chosen, tuple(sorted({float(r["lr"]) for r in chosen}))
        )
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
    _judge(rep)
    return rep


def _cell(rows: list[dict], lrs: tuple[float, ...]) -> Cell:
    return Cell(
        id_ppl=_mean(_first(r, ID_KEYS) for r in rows),
        c4_ppl=_mean(_num(r.get("c4_ppl_after")) for r in rows),
        acc=_mean(_first(r, ACC_KEYS) for r in rows),
        val_id_ppl=_mean(_num(r.get("val_id_ppl")) for r in rows),
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


METRIC_WORDS = {"id": "ID perplexity", "c4": "C4 perplexity"}


def _describe_turn(c: Curve, group_by: list[str]) -> str:
    where = (
        f"turns at {fmt_tokens(c.turn_tokens)} tokens"
        if c.interior
        else f"is worse from the smallest budget ({fmt_tokens(c.x[0])}) on"
    )
    return (
        f"{where} for {c.series.label(group_by)} ({fmt_num(c.y[c.turn])} at {fmt_tokens(c.turn_tokens)} → "
        f"{fmt_num(c.y[-1])} at {fmt_tokens(c.x[-1])}, {c.worse_by:+.1%})"
    )


def _judge(rep: Report) -> None:
    """Per task: does the tuned-LR ID or C4 perplexity after fine-tuning turn (decayed curves only)?"""
    tol = _pct(rep.tolerance)
    for task in rep.tasks:
        tuned = [c for c in rep.find("id", task, "tuned") + rep.find("c4", task, "tuned") if not c.series.intermediate]
        turned = [c for c in tuned if c.turn is not None]
        budgets = sorted({x for c in tuned for x in c.x})
        if len(budgets) < 2:
            why = (
                f"fully decayed checkpoints at {len(budgets)} budget only"
                if budgets
                else "no tuned-LR result for fully decayed checkpoints (no 'selected' rows, no val_id_ppl)"
            )
            text = f"**{task}**: cannot tell: {why}."
            rep.verdicts[task] = {"shows": None, "curves": [], "text": text}
            continue
        if turned:
            parts = [f"{METRIC_WORDS[c.metric]} after fine-tuning {_describe_turn(c, rep.group_by)}" for c in turned]
            calm = [
                METRIC_WORDS[m]
                for m in ("id", "c4")
                if not any(c.metric == m for c in turned) and any(c.metric == m for c in tuned)
            ]
            tail = f" {' and '.join(calm)} keeps improving (or stays within {tol})." if calm else ""
            text = f"**{task}**: catastrophic overtraining. " + "; ".join(parts) + "." + tail
        else:
            text = (
                f"**{task}**: no catastrophic overtraining up to {fmt_tokens(budgets[-1])} tokens: with the tuned LR, "
                f"ID and C4 perplexity after fine-tuning keep improving (or stay within {tol})."
            )
        fixed = []
        several = len({c.series for c in tuned}) > 1
        for c in sorted(rep.find("c4", task), key=lambda c: (c.series, c.value or 0)):
            if c.value is not None and not c.series.intermediate:
                turn = (
                    f"turns at {fmt_tokens(c.turn_tokens)}"
                    if c.interior
                    else ("worse from the start" if c.turn is not None else "no turn")
                )
                fixed.append(f"{c.setting} {turn}" + (f" ({c.series.label(rep.group_by)})" if several else ""))
        if fixed:
            text += " Fixed LRs, C4 perplexity: " + "; ".join(fixed) + "."
        rep.verdicts[task] = {"shows": bool(turned), "curves": turned, "text": text}


# ---------------------------------------------------------------------------------------------
# Tables


def summary_table(rep: Report) -> tuple[list[str], list[list]]:
    """CSV header and rows: one per (series, tokens, task); checkpoints without fine-tuning get task ''."""
    lrs = sorted({lr for per in rep.fixed.values() for cells in per.values() for lr in cells})
    header = [
        *rep.group_by,
        "model",
        "non_embedding_params",
        "pretrain_tokens",
        "lr_decayed",
        "run_budget_tokens",
        "task",
        "base_c4_ppl",
        "tuned_lr",
        "tuned_id_ppl",
        "tuned_c4_ppl",
        "tuned_acc",
    ]
    for lr in lrs:
        header += [f"id_ppl@lr={fmt_lr(lr)}", f"c4_ppl@lr={fmt_lr(lr)}", f"acc@lr={fmt_lr(lr)}"]
    out = []
    keys = {(s, t, task) for (s, task), per in rep.fixed.items() for t in per}
    with_ft = {(s, t) for s, t, _ in keys}
    keys |= {(s, t, "") for s, t in rep.base if (s, t) not in with_ft}
    for s, t, task in sorted(keys):
        tuned = rep.tuned.get((s, task), {}).get(t)
        cells = rep.fixed.get((s, task), {}).get(t, {})
        row = [
            *s.group,
            s.model,
            s.params or "",
            int(t),
            not s.intermediate,
            s.run_budget or "",
            task,
            rep.base.get((s, t)),
        ]
        row += (
            [";".join(fmt_lr(x) for x in tuned.lrs), tuned.id_ppl, tuned.c4_ppl, tuned.acc]
            if tuned
            else ["", None, None, None]
        )
        for lr in lrs:
            c = cells.get(lr)
            row += [c.id_ppl, c.c4_ppl, c.acc] if c else [None, None, None]
        out.append(row)
    return header, out


def perturb_table(rep: Report) -> tuple[list[str], list[list]]:
    header = [
        *rep.group_by,
        "model",
        "pretrain_tokens",
        "lr_decayed",
        "gamma",
        "base_c4_ppl",
        "c4_ppl_change_mean",
        "c4_ppl_change_std",
        "n_seeds",
    ]
    out = []
    for s, per_gamma in sorted(rep.noise.items()):
        for gamma, pts in sorted(per_gamma.items()):
            for t, (mean, std, n) in sorted(pts.items()):
                out.append([*s.group, s.model, int(t), not s.intermediate, gamma, rep.base.get((s, t)), mean, std, n])
    return header, out


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _tokens_cell(s: Series, t: float) -> str:
    return fmt_tokens(t) + (" (int.)" if s.intermediate else "")


def markdown(rep: Report, figures: list[Path]) -> str:
    gb = rep.group_by
    tol = _pct(rep.tolerance)
    md = ["# Catastrophic overtraining report", ""]
    md += [f"Inputs: {', '.join(str(f) for f in rep.files)}." if rep.files else "", *[f"- {n}" for n in rep.notes], ""]
    md += [
        "## Verdict",
        "",
        f"With the fine-tuning LR tuned per checkpoint, a curve *turns* at the budget minimizing it when the largest "
        f'budget is worse by more than {tol}. Fully decayed checkpoints only; "(int.)" marks intermediate ones.',
        "",
    ]
    md += [f"- {v['text']}" for v in rep.verdicts.values()] or ["- no fine-tuning rows."]
    shows = [t for t, v in rep.verdicts.items() if v["shows"]]
    not_shows = [t for t, v in rep.verdicts.items() if v["shows"] is False]
    if shows or not_shows:
        md += [
            "",
            f"Catastrophic overtraining: {', '.join(shows) or 'none'}. Not observed: {', '.join(not_shows) or 'none'}.",
        ]
    noise = [c for c in rep.find("noise") if not c.series.intermediate and len(c.x) > 1]
    if noise:
        grows = sum(c.y[-1] > c.y[0] for c in noise)
        md += [
            "",
            f"Noise sensitivity (C4 perplexity increase under weight noise) is larger at the largest budget than at the "
            f"smallest for {grows} of {len(noise)} (model, gamma) curves.",
        ]
    turns = [c for c in rep.curves if c.interior and c.metric != "noise"]
    if turns:
        md += ["", "Inflections (marked on the figures):", ""]
        md += [
            f"- {c.task or 'base'} {METRIC_WORDS.get(c.metric, 'base C4 perplexity')}, {c.setting}: {_describe_turn(c, gb)}"
            for c in turns
        ]

    base_series = sorted({s for s, _ in rep.base})
    if base_series:
        md += ["", "## Base models: C4 perplexity", ""]
        rows = [
            [*s.group, s.model, _tokens_cell(s, t), fmt_num(rep.base[s, t])]
            for s in base_series
            for t in sorted(t for ss, t in rep.base if ss == s)
        ]
        md.append(_md_table([*gb, "model", "tokens", "C4 ppl"], rows))

    for task in rep.tasks:
        md += ["", f"## {task}: after fine-tuning", ""]
        lrs = sorted({lr for (s, tk), per in rep.fixed.items() if tk == task for cells in per.values() for lr in cells})
        header = [*gb, "model", "tokens", "base C4", "tuned LR", "ID ppl (tuned)", "C4 ppl (tuned)", "acc (tuned)"]
        header += [h for lr in lrs for h in (f"ID @{fmt_lr(lr)}", f"C4 @{fmt_lr(lr)}")]
        rows = []
        for (s, tk), per in sorted(rep.fixed.items()):
            if tk != task:
                continue
            for t in sorted(per):
                tuned = rep.tuned.get((s, task), {}).get(t)
                r = [*s.group, s.model, _tokens_cell(s, t), fmt_num(rep.base.get((s, t)))]
                r += (
                    [
                        ",".join(fmt_lr(x) for x in tuned.lrs),
                        fmt_num(tuned.id_ppl),
                        fmt_num(tuned.c4_ppl),
                        fmt_num(tuned.acc, 3),
                    ]
                    if tuned
                    else ["", "", "", ""]
                )
                for lr in lrs:
                    c = per[t].get(lr)
                    r += [fmt_num(c.id_ppl), fmt_num(c.c4_ppl)] if c else ["", ""]
                rows.append(r)
        md.append(_md_table(header, rows))

    if rep.noise:
        gammas = sorted({g for per in rep.noise.values() for g in per})
        md += ["", "## Noise sensitivity: C4 perplexity change under weight noise (mean over seeds)", ""]
        rows = []
        for s, per in sorted(rep.noise.items()):
            for t in sorted({t for pts in per.values() for t in pts}):
                rows.append(
                    [*s.group, s.model, _tokens_cell(s, t), fmt_num(rep.base.get((s, t)))]
                    + [fmt_num(per[g][t][0]) if t in per.get(g, {}) else "" for g in gammas]
                )
        md.append(_md_table([*gb, "model", "tokens", "base C4", *[f"γ={g:g}" for g in gammas]], rows))

    if figures:
        md += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(md).strip() + "\n"


# ---------------------------------------------------------------------------------------------
# Figures


def _style(s: Series) -> dict:
    """Intermediate checkpoints: dotted line, hollow markers (kept apart from decayed curves)."""
    return {"linestyle": ":", "markerfacecolor": "white"} if s.intermediate else {"linestyle": "-"}


def _token_axis(ax, xs) -> None:
    ax.set_xscale("log")
    ticks = sorted({x for x in xs if x > 0})
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([fmt_tokens(x) for x in ticks])
        ax.minorticks_off()
    ax.set_xlabel("pre-training tokens (log scale)")
    ax.grid(True, alpha=0.3)


def _mark_turn(ax, c: Curve, color) -> None:
    if c.interior:
        ax.plot(
            [c.turn_tokens],
            [c.y[c.turn]],
            marker="o",
            markersize=15,
            markerfacecolor="none",
            markeredgecolor="red",
            markeredgewidth=2,
            linestyle="none",
            zorder=5,
        )
        ax.annotate(
            f"turn {fmt_tokens(c.turn_tokens)}",
            (c.turn_tokens, c.y[c.turn]),
            textcoords="offset points",
            xytext=(0, -18),
            ha="center",
            fontsize=8,
            color="red",
        )


def _turn_legend_handle():
    from matplotlib.lines import Line2D

    return Line2D(
        [],
        [],
        marker="o",
        markersize=10,
        markerfacecolor="none",
        markeredgecolor="red",
        markeredgewidth=2,
        linestyle="none",
        label="turn (inflection)",
    )


def _finish(ax, curves: list[Curve], legend: bool = True, turn_entry: bool | None = None) -> None:
    """Log y when the values span more than 20x; legend outside the axes, right (never over data)."""
    ys = [y for c in curves for y in c.y if y is not None and math.isfinite(y) and y > 0]
    if ys and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    if not legend:
        return
    handles, _ = ax.get_legend_handles_labels()
    if turn_entry if turn_entry is not None else any(c.interior for c in curves):
        handles.append(_turn_legend_handle())
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _save(fig, path: Path) -> Path:
    return atomic_savefig(fig, path, dpi=110, bbox_inches="tight")


def figures(rep: Report, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    gb = rep.group_by
    base = rep.find("base_c4")
    if base:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        keys = sorted({(c.series.group, c.series.params, c.series.model) for c in base})
        colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(keys)}
        for c in base:
            color = colors[c.series.group, c.series.params, c.series.model]
            ax.plot(c.x, c.y, marker="o", color=color, label=c.series.label(gb), **_style(c.series))
            _mark_turn(ax, c, color)
        _token_axis(ax, [x for c in base for x in c.x])
        ax.set_ylabel("C4 perplexity (base model)")
        ax.set_title("Base model C4 perplexity vs pre-training tokens")
        _finish(ax, base)
        paths.append(_save(fig, out / "base_c4_ppl.png"))
        plt.close(fig)

    for task in rep.tasks:
        # one row of panels per decayed series (model x group); a model with intermediate
        # checkpoints only gets a row of its own
        ft_series = {c.series for c in rep.find("id", task) + rep.find("c4", task)}
        rows_of = sorted(s for s in ft_series if not s.intermediate)
        for s in sorted(ft_series):
            if s.intermediate and not any(_same_model(s, d) for d in rows_of):
                rows_of.append(s)
        lrs = sorted({lr for (s, tk), per in rep.fixed.items() if tk == task for cells in per.values() for lr in cells})
        cmap = plt.cm.viridis
        lr_color = {f"lr={fmt_lr(lr)}": cmap(i / max(1, len(lrs) - 1) * 0.85) for i, lr in enumerate(lrs)}
        fig, axes = plt.subplots(len(rows_of), 2, figsize=(12, 3.9 * len(rows_of)), squeeze=False)
        for r, series in enumerate(rows_of):
            # the decayed panel also shows this model's intermediate checkpoints (dotted, hollow)
            related = [s for s in ft_series if _same_model(s, series)]
            for col, metric in enumerate(("id", "c4")):
                ax = axes[r][col]
                curves = [c for c in rep.find(metric, task) if c.series in related]
                curves.sort(key=lambda c: (c.series.intermediate, c.value is None, c.value or 0))
                for c in curves:
                    tuned = c.value is None
                    color = "black" if tuned else lr_color[c.setting]
                    label = ("tuned LR" if tuned else f"LR {fmt_lr(c.value)}") + (
                        " (intermediate)" if c.series.intermediate else ""
                    )
                    style = _style(c.series)
                    if tuned and not c.series.intermediate:
                        style["linestyle"] = "--"  # dashed: the fixed-LR line it coincides with stays visible
                    ax.plot(
                        c.x,
                        c.y,
                        marker="s" if tuned else "o",
                        color=color,
                        linewidth=2.0 if tuned else 1.3,
                        label=label,
                        zorder=4 if tuned else 3,
                        **style,
                    )
                    if not c.series.intermediate:
                        _mark_turn(ax, c, color)
                _token_axis(ax, [x for c in curves for x in c.x])
                ax.set_ylabel(f"{METRIC_WORDS[metric]} after fine-tuning")
                ax.set_title(f"{task}: {METRIC_WORDS[metric]} ({series.label(gb)})", fontsize=10)
                if curves:  # one legend per row, right of the C4 panel
                    row_turns = any(
                        c.interior and not c.series.intermediate
                        for c in rep.curves
                        if c.task == task and c.series in related and c.metric in ("id", "c4")
                    )
                    _finish(ax, curves, legend=col == 1, turn_entry=row_turns)
        fig.tight_layout()
        paths.append(_save(fig, out / f"finetune_{_slug(task)}.png"))
        plt.close(fig)

    noise = rep.find("noise")
    if noise:
        panels = sorted({(c.series.group, c.series.params, c.series.model) for c in noise})
        gammas = sorted({c.value for c in noise})
        g_color = {g: plt.cm.plasma(i / max(1, len(gammas) - 1) * 0.85) for i, g in enumerate(gammas)}
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
        for ax, key in zip(axes[0], panels):
            curves = [c for c in noise if (c.series.group, c.series.params, c.series.model) == key]
            for c in sorted(curves, key=lambda c: (c.series.intermediate, c.value)):
                g = c.value
                ax.plot(
                    c.x,
                    c.y,
                    marker="o",
                    color=g_color[g],
                    label=f"γ = {g:g}" + (" (intermediate)" if c.series.intermediate else ""),
                    **_style(c.series),
                )
            _token_axis(ax, [x for c in curves for x in c.x])
            ax.set_ylabel("C4 perplexity increase under noise")
            ax.set_title(
                "Noise sensitivity: " + ", ".join([key[2], *[f"{k}={v}" for k, v in zip(gb, key[0])]]), fontsize=10
            )
            _finish(ax, curves)
        fig.tight_layout()
        paths.append(_save(fig, out / "noise_sensitivity.png"))
        plt.close(fig)
    return paths


def _same_model(a: Series, b: Series) -> bool:
    return (a.group, a.params, a.model) == (b.group, b.params, b.model)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


# ---------------------------------------------------------------------------------------------
# Entry points


def make_report(
    sources: list[str], out: str | Path, group_by: list[str] = (), tolerance: float = 0.01
) -> tuple[Report, str, list[Path]]:
    """Read results, write report.md / summary.csv / perturb.csv / PNGs into ``out``; (report, markdown, figure paths)."""
    if tolerance < 0:
        raise ConfigError(f"command line: --tolerance must be >= 0, got {tolerance}")
    rows, files, torn = load_rows(list(sources))
    if not rows:
        raise DataError(f"{', '.join(str(f) for f in files)}: no results rows")
    rep = aggregate(rows, list(group_by), tolerance, files)
    if torn:
        rep.notes.append(f"ignored {len(torn)} torn final line(s) (interrupted writes): {', '.join(torn)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = figures(rep, out)
    atomic_write_text(out / "summary.csv", _csv(*summary_table(rep)))
    if rep.noise:
        atomic_write_text(out / "perturb.csv", _csv(*perturb_table(rep)))
    text = markdown(rep, paths)
    atomic_write_text(out / "report.md", text)
    return rep, text, paths


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class ReportConfig:
    out: str = ""  # output directory (report.md, summary.csv, perturb.csv, *.png)
    group_by: list[str] = field(default_factory=list)  # compare by these row keys, e.g. parametrization,tags.optim_lr
    tolerance: float = 0.01  # relative worsening beyond which a curve counts as turned (0.01 = 1%)

    def validate(self) -> None:
        if not self.out:
            raise ValueError("out is not set (the output directory: out=DIR)")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


CONFIG = ReportConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="results.jsonl files, directories holding them, or glob patterns")


def run(args: argparse.Namespace) -> int:
    group_by = args.group_by
    _, text, paths = make_report(args.results, args.out, group_by, args.tolerance)
    print(text)
    print(f"report: {Path(args.out) / 'report.md'}  table: {Path(args.out) / 'summary.csv'}")
    for p in paths:
        print(f"figure: {p}")
    return 0
