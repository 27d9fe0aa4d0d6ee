"""The paper's Section 2 in the report: a checkpoint suite's generalist accuracy against pre-training
tokens, before and after instruction tuning, with intervals and the calibrated verdict.

Rows: ``overtrain lm-eval`` rows (kind "lm_eval") of models that came from a suite (``suite_model``
set, by ``overtrain sft`` outputs' ``overtrain_suite.json`` or by the grid for a member itself). A
curve is one (suite model, tuning data or "base", task) across members, x = ``pretrain_tokens``,
y = the task's accuracy ``METRIC`` (lm-eval's ``acc``):

    a_m = (1 / n) sum_j c_mj        c_mj in {0, 1}: member m answered document j correctly

Intervals: the paired bootstrap of ``report_stats`` (``curve_replicates``, mean statistic) over the
n documents, from the per-example scores (``lm_eval.TASK.METRIC`` in the row's ``scores`` file);
every member evaluates the same documents in the same order (``limit`` keeps the first n), so one
draw serves the whole curve and differences between members are paired. The generalist average
(the paper's Figure 1) is the mean of the task curves; its replicates are the mean of the tasks'
(tasks are independent samples: each is drawn on its own).

Decision: on the error e = 1 - a (lower is better), ``report_stats.turn_test`` tests for every
earlier member i "the member with the most tokens is worse than member i" (one-sided), and Holm's
procedure at ``ALPHA`` runs over every test of one (suite, tuning data) family: all its tasks. The
average curve is drawn, not tested (it is a function of the tested curves). Per family:

    "catastrophic overtraining"      some task's curve turns: named with its best member and the drop
    "no catastrophic overtraining"   every curve's one-sided 95% upper bound of the drop from its
                                     best member to the last is <= ``tolerance`` (absolute accuracy)
    "cannot tell"                    otherwise (intervals too wide), or rows without per-example
                                     scores (no intervals), or fewer than two members

The tests and their calibration are the controlled study's (``report_stats``' docstring: family-wise
false-positive rate 5.3% on flat truth, 90.9% detection of a 3% turn at RTE's test size). Note the
paper's confound: suite checkpoints before the last did not finish their learning-rate decay, so a
turn here does not separate overtraining from the schedule; the controlled study does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.rows import Row, read_scores
from .report_format import fmt_tokens
from .report_stats import ALPHA, REPLICATES, curve_replicates, holm, interval, stack, turn_test

METRIC = "acc"  # every generalist task defines it (acc_norm only some); the paper reports accuracy
BASE = "base"  # the tuning-data label of a member evaluated before instruction tuning


@dataclass
class SuiteCurve:
    suite: str
    tuning: str  # chat dataset name, or BASE
    task: str
    tokens: list[float]
    acc: list[float]
    lo: list[float] | None = None  # interval bounds; None without per-example scores
    hi: list[float] | None = None
    reps: np.ndarray | None = None  # (B, k) bootstrap replicates of the accuracy
    n: int = 0  # documents per point
    turn: bool = False
    best: int | None = None
    drop: float | None = None  # acc[best] - acc[-1]
    upper: float | None = None  # one-sided 95% upper bound of the drop


@dataclass
class SuiteFamily:
    suite: str
    tuning: str
    curves: list[SuiteCurve] = field(default_factory=list)
    verdict: str = ""
    reason: str = ""


def _scores(row: Row, task: str) -> np.ndarray | None:
    """The row's per-document ``METRIC`` of ``task`` (``core.rows.read_scores``), or None."""
    scores = read_scores(row) or {}
    name = f"lm_eval.{task}.{METRIC}"
    return np.asarray(scores[name], dtype=np.float64) if name in scores else None


def tuning_label(row: dict) -> str:
    """What a model was instruction-tuned on: the SFT run's ``data_name`` (a grid's dataset key), else
    its ``sft_data``; ``BASE`` for a member itself."""
    sft = row.get("sft") if isinstance(row.get("sft"), dict) else {}
    return str(sft.get("data_name") or row.get("sft_data") or BASE)


def collect_suite(rows: list[Row]) -> list[SuiteFamily]:
    """The suite curves of kind "lm_eval" rows with ``suite_model``, grouped into families."""
    points: dict[tuple[str, str, str], dict[float, list[tuple[float, np.ndarray | None]]]] = {}
    for r in rows:
        d = r.to_dict()
        if d.get("kind") != "lm_eval" or not d.get("suite_model") or d.get("pretrain_tokens") is None:
            continue
        value = d.get(METRIC)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        key = (str(d["suite_model"]), tuning_label(d), str(d.get("task")))
        points.setdefault(key, {}).setdefault(float(d["pretrain_tokens"]), []).append(
            (float(value), _scores(r, str(d.get("task"))))
        )
    families: dict[tuple[str, str], SuiteFamily] = {}
    rng = np.random.default_rng(0)  # fixed: the report is a function of the rows
    for (suite, tuning, task), by_tokens in sorted(points.items()):
        tokens = sorted(by_tokens)
        acc = [float(np.mean([v for v, _ in by_tokens[t]])) for t in tokens]
        c = SuiteCurve(suite, tuning, task, tokens, acc)
        samples = [
            stack([s for _, s in by_tokens[t]], log=False) if all(s is not None for _, s in by_tokens[t]) else None
            for t in tokens
        ]
        if all(s is not None for s in samples) and len({s.n for s in samples}) == 1:
            c.reps = curve_replicates(samples, rng, REPLICATES)
            lo, hi = interval(c.reps, log=False)
            c.lo, c.hi, c.n = list(lo), list(hi), samples[0].n
        families.setdefault((suite, tuning), SuiteFamily(suite, tuning)).curves.append(c)
    return sorted(families.values(), key=lambda f: (f.suite, f.tuning != BASE, f.tuning))


def decide_suite(families: list[SuiteFamily], tolerance: float) -> None:
    """Turn tests per curve, Holm per family, and each family's verdict (module doc)."""
    for fam in families:
        tested = [c for c in fam.curves if c.reps is not None and len(c.tokens) >= 2]
        if not fam.curves or max(len(c.tokens) for c in fam.curves) < 2:
            fam.verdict, fam.reason = "cannot tell", "fewer than two suite members"
            continue
        if len(tested) < len(fam.curves):
            fam.verdict, fam.reason = "cannot tell", "rows without per-example scores: no intervals"
            continue
        tests = [turn_test(1.0 - np.asarray(c.acc), 1.0 - c.reps) for c in tested]
        rejected = holm([t.p for t in tests])
        for c, t, rej in zip(tested, tests, rejected):
            c.turn, c.best = bool(rej.any()), int(t.best)
            c.drop, c.upper = float(t.worse), float(t.upper)
        turned = [c for c in tested if c.turn]
        if turned:
            fam.verdict = "catastrophic overtraining"
            fam.reason = "; ".join(
                f"{c.task}: best at {fmt_tokens(c.tokens[c.best])} tokens, {100 * c.drop:.1f} points lower at "
                f"{fmt_tokens(c.tokens[-1])} (95% upper bound {100 * c.upper:.1f})"
                for c in turned
            )
        elif all(c.upper <= tolerance for c in tested):
            fam.verdict = "no catastrophic overtraining"
            fam.reason = (
                f"every task's 95% upper bound of the drop from its best member is <= {100 * tolerance:g} points"
            )
        else:
            wide = [c.task for c in tested if c.upper > tolerance]
            fam.verdict = "cannot tell"
            fam.reason = (
                f"intervals too wide: {', '.join(wide)}: 95% upper bound of the drop > {100 * tolerance:g} points"
            )


def average_curve(fam: SuiteFamily) -> SuiteCurve | None:
    """The mean over tasks of the family's curves at the token counts they all share."""
    shared = sorted(set.intersection(*(set(c.tokens) for c in fam.curves))) if fam.curves else []
    if len(fam.curves) < 2 or not shared:
        return None
    idx = [[c.tokens.index(t) for t in shared] for c in fam.curves]
    acc = [float(np.mean([c.acc[i[k]] for c, i in zip(fam.curves, idx)])) for k in range(len(shared))]
    avg = SuiteCurve(fam.suite, fam.tuning, "average", shared, acc)
    if all(c.reps is not None for c in fam.curves):
        avg.reps = np.mean([c.reps[:, i] for c, i in zip(fam.curves, idx)], axis=0)
        lo, hi = interval(avg.reps, log=False)
        avg.lo, avg.hi = list(lo), list(hi)
    return avg


def suite_figures(families: list[SuiteFamily], out: Path) -> list[Path]:
    """One PNG per suite: a panel per task and the average, accuracy against pre-training tokens, a
    line per tuning data (dashed: before tuning), 95% intervals as bands, turns marked."""
    if not families:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.config import atomic_savefig

    paths = []
    for suite in sorted({f.suite for f in families}):
        fams = [f for f in families if f.suite == suite]
        tasks = sorted({c.task for f in fams for c in f.curves})
        panels = (["average"] if len(tasks) > 1 else []) + tasks
        cols = min(3, len(panels))
        rows_n = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.3 * rows_n), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            for k, fam in enumerate(fams):
                c = average_curve(fam) if panel == "average" else next((x for x in fam.curves if x.task == panel), None)
                if c is None:
                    continue
                color = f"C{k}"
                style = "--" if fam.tuning == BASE else "-"
                ax.plot(c.tokens, c.acc, style, marker="o", color=color, label=fam.tuning)
                if c.lo is not None:
                    ax.fill_between(c.tokens, c.lo, c.hi, color=color, alpha=0.15, linewidth=0)
                if c.turn and c.best is not None:
                    ax.plot([c.tokens[c.best]], [c.acc[c.best]], marker="*", ms=14, color=color, mec="k")
            ax.set_xscale("log")
            ax.set_title(panel, fontsize=10)
            ax.set_xlabel("pre-training tokens")
            ax.set_ylabel(f"{METRIC} (95% interval)")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=8, title="tuned on", title_fontsize=8)
        fig.suptitle(f"{suite}: generalist {METRIC} after instruction tuning (star: a turn, Holm at {ALPHA:g})")
        fig.tight_layout()
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in suite.strip("/").split("/")[-1])
        paths.append(atomic_savefig(fig, out / f"suite_{slug}.png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
    return paths


def suite_markdown(families: list[SuiteFamily], tolerance: float) -> str:
    """The report's Section 2 part: a verdict per (suite, tuning data) and a table of every point."""
    if not families:
        return ""
    lines = ["## Checkpoint suites (the paper's Section 2)", ""]
    lines += [
        f"Generalist {METRIC} after instruction tuning against pre-training tokens; 95% paired bootstrap "
        f"intervals over documents; a turn is decided by one-sided tests, Holm at {ALPHA:g} over a family's "
        f'tasks; "no" needs every task\'s 95% upper bound of the drop <= {100 * tolerance:g} points. Suite '
        "checkpoints before the last did not finish their learning-rate decay: a turn here does not separate "
        "overtraining from the schedule (the controlled study does).",
        "",
    ]
    for fam in families:
        what = "before instruction tuning" if fam.tuning == BASE else f"tuned on **{fam.tuning}**"
        lines.append(f"- **{fam.suite}**, {what}: {fam.verdict} ({fam.reason})")
    lines += [
        "",
        "| suite | tuned on | task | tokens | " + METRIC + " | 95% interval | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam in families:
        for c in fam.curves + ([a] if (a := average_curve(fam)) else []):
            for i, t in enumerate(c.tokens):
                ci = f"[{c.lo[i]:.3f}, {c.hi[i]:.3f}]" if c.lo is not None else "-"
                star = " *" if c.turn and c.best == i else ""
                n = str(c.n) if c.n else "-"
                lines.append(
                    f"| {fam.suite} | {fam.tuning} | {c.task} | {fmt_tokens(t)} | {c.acc[i]:.3f}{star} | {ci} | {n} |"
                )
    return "\n".join(lines) + "\n"
