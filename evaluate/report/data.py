"""The report's numbers: typed results rows -> cells per (checkpoint, task, LR or tuned) -> curves over
pre-training tokens -> intervals and turns. What each number is: ``overtrain.evaluate.report``'s
docstring; which row key it reads: the row types' properties (``overtrain.core.rows``); the
statistics: ``report.stats``; how the numbers are written: ``report.format``.

A cell's per-example scores (``core.rows.read_scores``; test split, else validation, as its ID
perplexity) become ``report.stats.Samples`` per metric: "id" (classification: per-example NLL,
a mean; LM: summed NLL over tokens, a ratio), "c4" (per-window NLL over tokens) and "acc"
(correctness), one row per seed. A curve has intervals only when every point has samples.
``find_turn`` is the point estimates' description (where the minimum is, how much worse the
largest budget is); whether a curve *turns* is ``decide``'s paired test (``report.stats``).

Over 400 lines, and one concern: rows -> cells -> curves -> decision is one pipeline filling one
``Report``, each stage reading what the stage before it left there."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import ConfigError, DataError
from ...core.rows import BaseRow, FinetuneRow, PerturbRow, Row, number, read_scores
from . import stats as st
from .format import fmt_lr, fmt_tokens

SEED_TAGS = ("pretrain_seed", "seed")  # grid tags of the seed axes (launch.spec.seed_axes): aggregated over
# tags that mark a row as one more run of its cell, not another setup: the seed axes and the grid's noise
# probe (launch.spec: extra fine-tuning seeds at a few cells, tagged noise_probe)
REPLICATE_TAGS = (*SEED_TAGS, "noise_probe")


def seed_key(r: FinetuneRow) -> tuple:
    """A row's seeds (pre-training, fine-tuning): rows of a cell are its seeds, paired across budgets by this key."""
    tags = r.tags or {}
    return (str(tags.get("pretrain_seed", "")), str(r.seed if r.seed is not None else tags.get("seed", "")))


# rows of one (checkpoint, task, LR) cell that differ in these come from different fine-tuning setups
# (seeds aside: a cell's rows of several seeds are averaged, with intervals over them)
MIX_KEYS = {
    "config_hash": lambda r: r.config_hash,
    "template": lambda r: r.template,
    "tags": lambda r: {k: v for k, v in (r.tags or {}).items() if k not in REPLICATE_TAGS},
    "checkpoint_sha256": lambda r: (seed_key(r)[0], r.ckpt.checkpoint_sha256),
}
REPORTED = (BaseRow, FinetuneRow, PerturbRow)  # other kinds ("eval", unknown) are counted and ignored


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
    samples: dict = field(default_factory=dict)  # "id" / "c4" / "acc" -> report.stats.Samples (absent: no scores)
    majority: float | None = None  # majority-class accuracy of the evaluated split (classification)
    chance: float | None = None  # 1 / number of classes
    grid: tuple[float, ...] = ()  # the LR grid the tuned LR was selected from (as run: with the sweep's added LRs)
    extend_stop: str | None = None  # tuned LR at an end of its grid: why the sweep added no LR past it (rows)


@dataclass
class Curve:
    series: Series
    metric: str  # "base_c4" | "id" | "c4" | "noise"
    task: str | None
    setting: str  # "base", "tuned", "lr=1e-4", "gamma=0.5"
    value: float | None  # the fixed LR or gamma; None for base and tuned
    x: list[float]
    y: list[float]
    turn: int | None = None  # index of the best budget when the curve turns (``decide``'s test)
    worse_by: float = 0.0  # point estimates: relative change from the minimum to the largest budget
    samples: list = field(default_factory=list, repr=False)  # per point report.stats.Samples (or None)
    lo: list | None = None  # interval per point (None: no per-example scores)
    hi: list | None = None
    test: st.TurnTest | None = field(default=None, repr=False)  # the paired tests (perplexity curves with scores)
    significant: bool | None = None  # turns by the test; None: not tested
    reps: np.ndarray | None = field(
        default=None, repr=False, compare=False
    )  # (B, k) bootstrap replicates over examples
    runs: list[int] = field(default_factory=list)  # runs (rows) per point
    run_var: st.RunVariance | None = field(default=None, repr=False)  # the family's pooled run variance
    detectable: float | None = None  # smallest worsening found at 80% power (relative; None: not tested)

    @property
    def variance(self) -> str:
        """Which variance the curve's intervals and test used (tables, curves.csv)."""
        if self.run_var is not None:
            return "examples and runs (" + self.run_var.describe() + ")"
        return "examples only (one run per point: run-to-run variation not measured)"

    @property
    def has_intervals(self) -> bool:
        return self.lo is not None

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
    noise: dict = field(default_factory=dict)  # series -> {gamma: {tokens: (mean, sd, n, ci_low, ci_high)}}
    curves: list[Curve] = field(default_factory=list)
    verdicts: dict = field(default_factory=dict)  # task -> {"shows": bool | None, "curves", "text", "models"}
    notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # sanity checks that failed (``report.text.sanity``)
    base_samples: dict = field(default_factory=dict)  # (series, tokens) -> Samples of base C4 (base rows)
    transfer: dict = field(default_factory=dict)  # muP transfer panels (``report.transfer.transfer_curves``)

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
    """Cells, curves and their turns from typed rows (``core.rows.load_rows``); verdicts: ``report.text.judge``."""
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
    base_scores, cache = defaultdict(list), {}
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
            sc = _scores(row, cache)
            if sc is not None and "c4.nll" in sc and row.base_c4_ppl is not None:
                base_scores[series, tokens].append((sc["c4.nll"], sc["c4.tokens"]))
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
    if kinds:
        rep.notes.append("rows read: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if no_decay_flag:
        rep.notes.append(f"{no_decay_flag} rows have no 'lr_decayed': treated as fully decayed")

    for key, vals in base_rows.items():  # base C4: base rows, else fine-tuning rows, else perturb rows
        for source in ("base", "finetune", "perturb"):
            v = _mean(x for s, x in vals if s == source)
            if v is not None:
                rep.base[key] = v
                break
    for key, sc in base_scores.items():  # several base rows of one checkpoint (one per task): one evaluation
        distinct = {(a.tobytes(), b.tobytes()): (a, b) for a, b in sc}
        rep.base_samples[key] = st.stack([a for a, _ in distinct.values()], [b for _, b in distinct.values()])

    computed, mixed, superseded, added = 0, set(), 0, 0
    for (series, task, tokens), rs in ft_rows.items():
        by_lr = defaultdict(list)
        # a sweep records the tuned LR as a *copy* of its row (selected: true): fixed-LR cells
        # use the plain rows, and the flagged ones only where an LR has no plain row
        for r in rs:
            by_lr[float(r.lr)].append(r)
        for lr, group in by_lr.items():
            plain = [r for r in group if r.selected is not True]
            by_lr[lr] = plain or group
            mixed |= {k for k in MIX_KEYS if _differ(by_lr[lr], k)}
        cells = {lr: _cell(g, (lr,), cache) for lr, g in sorted(by_lr.items())}
        # LRs a sweep added past its grid's end (``extended_lr``) exist only where the tuned LR
        # was at that end: they count for the tuned LR, not as fixed-LR curves
        extended = {lr for lr, g in by_lr.items() if all(r.extended_lr for r in g)}
        added += len(extended)
        rep.fixed.setdefault((series, task), {})[tokens] = {lr: c for lr, c in cells.items() if lr not in extended}
        chosen = _latest_selections(rs)
        superseded += sum(r.selected is True for r in rs) - len(chosen)
        if not chosen:  # no flagged row: select by validation ID perplexity here
            scored = [(c.val_id_ppl, lr) for lr, c in cells.items() if c.val_id_ppl is not None]
            if not scored:
                continue
            chosen = by_lr[min(scored)[1]]
            computed += 1
        cell = _cell(chosen, tuple(sorted({float(r.lr) for r in chosen})), cache)
        grids = {tuple(sorted(r.selected_from)) for r in chosen if r.selected_from}
        cell.grid = grids.pop() if len(grids) == 1 else tuple(sorted(by_lr))
        stops = sorted({r.lr_extend_stop for r in chosen if r.lr_extend_stop})
        cell.extend_stop = "; ".join(stops) or None
        rep.tuned.setdefault((series, task), {})[tokens] = cell
    if added:
        rep.notes.append(
            f"{added} (checkpoint, task, LR) cells are LRs a sweep added past its grid's end (extended_lr): "
            "they count for the tuned LR only, not as fixed-LR curves"
        )
    if superseded:
        rep.notes.append(
            f"{superseded} selected rows superseded by a later selection of the same sweep (over another LR grid): ignored"
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
            float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0,
            len(deltas),
            *st.mean_interval(deltas),
        )

    _build_curves(rep)
    decide(rep)
    return rep


def _latest_selections(rows: list[FinetuneRow]) -> list[FinetuneRow]:
    """The selected rows (``selected: true``) that count: per sweep (results file, seeds, MIX_KEYS)
    the last one written, as a rerun over another grid (wider, extended, extension off)
    appends a new selection after the old."""
    latest = {}
    for r in rows:
        if r.selected is True:
            latest[(r.where.rsplit(":", 1)[0], seed_key(r), *(repr(f(r)) for f in MIX_KEYS.values()))] = r
    return list(latest.values())


def _differ(rows: list[FinetuneRow], key: str) -> bool:
    """Do a cell's rows differ in MIX_KEYS[key] (checkpoints: beyond one per pre-training seed)?"""
    values = {repr(MIX_KEYS[key](r)) for r in rows}
    if key == "checkpoint_sha256":
        return len(values) > len({seed_key(r)[0] for r in rows})
    return len(values) > 1


def _scores(row: Row, cache: dict) -> dict | None:
    """A row's per-example scores, read once per file (the sweep's selected copy shares its row's)."""
    key = (row.where.rsplit(":", 1)[0], getattr(row, "scores", None))
    if key not in cache:
        cache[key] = read_scores(row)
    return cache[key]


def _cell(rows: list[FinetuneRow], lrs: tuple[float, ...], cache: dict) -> Cell:
    rows = sorted(rows, key=seed_key)  # the same seed order at every budget: paired in the bootstrap
    cell = Cell(
        id_ppl=_mean(r.id_ppl for r in rows),
        c4_ppl=_mean(r.c4_ppl_after for r in rows),
        acc=_mean(r.acc for r in rows),
        val_id_ppl=_mean(r.val_id_ppl for r in rows),
        n=len(rows),
        lrs=lrs,
    )
    scores = [_scores(r, cache) for r in rows]
    if any(s is None for s in scores):
        return cell  # some row without per-example scores: no intervals for this cell
    split = "test" if all("after.test.nll" in s for s in scores) else "val"
    pre = f"after.{split}."
    if all(pre + "nll" in s for s in scores):
        if all(pre + "tokens" in s for s in scores):  # an LM task: summed NLL over tokens
            cell.samples["id"] = st.stack([s[pre + "nll"] for s in scores], [s[pre + "tokens"] for s in scores])
        else:
            cell.samples["id"] = st.stack([s[pre + "nll"] for s in scores])
    if all(pre + "correct" in s for s in scores):
        cell.samples["acc"] = st.stack([s[pre + "correct"] for s in scores], log=False)
        labels, n_classes = scores[0][pre + "label"], int(scores[0][pre + "n_classes"])
        cell.majority = float(np.bincount(labels, minlength=n_classes).max() / len(labels))
        cell.chance = 1.0 / n_classes
    if all("after.c4.nll" in s for s in scores):
        cell.samples["c4"] = st.stack([s["after.c4.nll"] for s in scores], [s["after.c4.tokens"] for s in scores])
    cell.samples = {k: v for k, v in cell.samples.items() if v is not None}
    return cell


def _curve(
    rep: Report,
    series: Series,
    metric: str,
    task: str | None,
    setting: str,
    value: float | None,
    points: dict,
    samples: dict | None = None,
) -> None:
    pts = sorted((x, y) for x, y in points.items() if y is not None)
    if not pts:
        return
    c = Curve(series, metric, task, setting, value, [p[0] for p in pts], [p[1] for p in pts])
    if metric != "noise":  # perplexities: lower is better; noise sensitivity is not judged that way
        _, c.worse_by = find_turn(c.x, c.y, rep.tolerance)
        c.samples = [(samples or {}).get(x) for x in c.x]
        if all(s is not None for s in c.samples):
            rng = np.random.default_rng(len(rep.curves))  # deterministic: the same report twice
            c.reps = st.curve_replicates(c.samples, rng)
            c.runs = [s.seeds for s in c.samples]
            lo, hi = st.interval(c.reps)  # examples only; ``decide`` adds the family's run variance
            c.lo, c.hi = [float(v) for v in lo], [float(v) for v in hi]
    rep.curves.append(c)


def _build_curves(rep: Report) -> None:
    by_series = defaultdict(dict)
    for (s, t), v in rep.base.items():
        by_series[s][t] = v
    for s, pts in sorted(by_series.items()):
        _curve(rep, s, "base_c4", None, "base", None, pts, {t: rep.base_samples.get((s, t)) for t in pts})
    for (s, task), per_tokens in sorted(rep.fixed.items()):
        lrs = sorted({lr for cells in per_tokens.values() for lr in cells})
        for metric, attr in (("id", "id_ppl"), ("c4", "c4_ppl")):
            for lr in lrs:
                cells = {t: cells[lr] for t, cells in per_tokens.items() if lr in cells}
                pts = {t: getattr(c, attr) for t, c in cells.items()}
                smp = {t: c.samples.get(metric) for t, c in cells.items()}
                _curve(rep, s, metric, task, f"lr={fmt_lr(lr)}", lr, pts, smp)
            tuned = rep.tuned.get((s, task), {})
            pts, smp = (
                {t: getattr(c, attr) for t, c in tuned.items()},
                {t: c.samples.get(metric) for t, c in tuned.items()},
            )
            _curve(rep, s, metric, task, "tuned", None, pts, smp)
    for s, per_gamma in sorted(rep.noise.items()):
        for gamma, pts in sorted(per_gamma.items()):
            _curve(rep, s, "noise", None, f"gamma={gamma:g}", gamma, {t: v[0] for t, v in pts.items()})


# ---------------------------------------------------------------------------------------------
# The decision (report.stats' docstring): which curves turn, and what makes a curve meaningless

MIN_BUDGETS = 3  # a turn needs a best budget with a budget on each side


def learned(rep: Report, series: Series, task: str) -> bool | None:
    """Did the fine-tuned model (tuned LR) learn the task: is its accuracy above the majority-class
    accuracy at some budget, by more than z_0.95 binomial standard errors? None: not a classification
    task, or no per-example scores."""
    out = None
    for cell in rep.tuned.get((series, task), {}).values():
        acc = cell.samples.get("acc")
        if acc is None or cell.majority is None:
            continue
        p, n = float(acc.values.mean()), acc.values.size
        out = bool(out) or p - cell.majority > st.Z_UPPER * math.sqrt(max(p * (1 - p), 1e-12) / n)
    return out


def pool_families(rep: Report) -> None:
    """The pooled run variance of each (task, metric) family (``report.stats.pool_runs``: every
    distinct cell of the task with 2+ runs, all models, budgets, LRs; base C4 is the family (None,
    "base_c4")), set on each of its curves with per-example scores, whose intervals then count it."""
    families = defaultdict(list)
    for c in rep.curves:
        if c.reps is not None:
            families[c.task, c.metric].append(c)
    for curves in families.values():
        cells = {}
        for c in curves:  # the tuned LR's cells repeat fixed-LR cells: count each once
            for x, s in zip(c.x, c.samples):
                if c.setting == "tuned" and len(rep.tuned[c.series, c.task][x].lrs) > 1:
                    continue  # its runs were tuned to different LRs: their spread is not run-to-run variation
                cells.setdefault(hash((s.values.tobytes(), None if s.weights is None else s.weights.tobytes())), s)
        rv = st.pool_runs(list(cells.values()))
        for c in curves:
            c.run_var = rv
            if rv is not None:
                y = np.array([float(st.point(s)) for s in c.samples])
                lo, hi = st.interval(c.reps, y=y, runs=c.runs, rv=rv)
                c.lo, c.hi = [float(v) for v in lo], [float(v) for v in hi]


def decide(rep: Report) -> None:
    """Set each fully decayed perplexity curve's ``test``, ``significant``, ``turn`` and
    ``detectable``: Holm over each task's tuned-LR curves (every model, ID and C4) and, apart, over
    its fixed-LR curves, each test with its (task, metric) family's pooled run variance
    (``pool_families``). Curves with fewer than ``MIN_BUDGETS`` budgets, without per-example scores,
    of a model that learned nothing, or whose family has one run per point everywhere (run-to-run
    variation not measured: examples alone never make a turn) are not decided (``turn`` None,
    ``significant`` None)."""
    pool_families(rep)
    for c in rep.curves:
        if c.reps is not None and c.metric in ("id", "c4") and len(c.x) >= 2:
            y = np.array([float(st.point(s)) for s in c.samples])
            c.test = st.turn_test(y, c.reps, c.runs, c.run_var)

    for task in rep.tasks:
        for tuned in (True, False):
            family = [
                c
                for c in rep.curves
                if c.task == task
                and c.metric in ("id", "c4")
                and (c.setting == "tuned") == tuned
                and not c.series.intermediate
                and c.test is not None
                and len(c.x) >= MIN_BUDGETS
                and learned(rep, c.series, task) is not False
                and c.test.runs_measured
            ]
            tests = sum(c.test.p.size for c in family)
            for c, rejected in zip(family, st.holm([c.test.p for c in family])):
                c.significant = bool(rejected.any())
                c.turn = int(c.test.best) if c.significant else None
                c.detectable = math.expm1(st.detectable(c.test, tests))
