"""The paper's Section 2 in the report: a checkpoint suite's generalist accuracy against pre-training
tokens, before and after instruction tuning, with intervals and the calibrated verdict.

Rows: ``overtrain lm-eval`` rows (kind "lm_eval") of models that came from a suite (``suite_model``
set, by ``overtrain sft`` outputs' ``overtrain_suite.json`` or by the grid for a member itself), and
``overtrain multimodal`` rows (kind "multimodal": a LLaVA-tuned member's visual QA accuracy, its
family the tuning's ``data_name``, per-question scores ``multimodal.TASK.acc``), and ``overtrain
alpaca-eval`` rows (kind "alpaca_eval", ``evaluate.alpaca``: y = ``win_rate`` against the reference,
per-instruction preferences p_j in [0, 1] for c_mrj below, ``alpaca_eval.TASK.win_rate``; tested with
its family's tasks, left out of the average; the length-controlled rate is a GLM's prediction, not
data to resample, so it is tabulated in the rows, not tested). A
curve is one (family, task) across members, x = ``pretrain_tokens``, y = the task's accuracy
``metric_of(task)``: ``acc_norm`` for PIQA, HellaSwag and ARC-Challenge (lm-eval's and OLMo's
convention for them), ``acc`` for the others (a row without ``acc_norm`` falls back to ``acc``; the
report names the metric of every curve):

    a_m = mean over runs r of (1 / n) sum_j c_mrj     c_mrj in {0, 1}: run r of member m answered j

A *family* is (suite, tuning data, SFT settings): the row's ``sft`` config without its run keys
(``RUN_KEYS``: seed, paths, device, ...), so rows tuned with different learning rates at one
checkpoint are never pooled as if they were seeds. Its runs at a member are its SFT seeds (one
row per seed: the last written); "base" (members before instruction tuning) is a family of its own.

Intervals and tests: ``report.stats`` with the paired bootstrap over the n documents (every member
evaluates the same documents in the same order; ``limit`` keeps the first n) and the run variance
of the SFT runs pooled over every member with 2+ seeds of the (family, task), with its degrees of
freedom (``pool_runs``; Satterthwaite t reference, module doc of ``report.stats``). The base family
uses the documents alone (its points are the members as given: no instruction-tuning run to
repeat). A tuned family with one SFT run per member and none repeated cannot separate a turn from
run-to-run variation: "cannot tell: one run per point". The generalist average (the paper's Figure
1) is the mean of the task curves; its example replicates are the mean of the tasks' (tasks are
independent samples of documents) and its run sd the mean of the tasks' run sds (an upper bound:
one run's shifts on different tasks may be correlated), with the smallest df.

Decision: on the error e = 1 - a (lower is better), ``report.stats.turn_test`` tests for every
earlier member i "the member with the most tokens is worse than member i" (one-sided), and Holm's
procedure at ``ALPHA`` runs over every test of one family: all its tasks. The average curve is
drawn, not tested (it is a function of the tested curves). Per family:

    "catastrophic overtraining"      some task's curve turns: named with its best member and the drop
    "no catastrophic overtraining"   every curve's one-sided 95% upper bound of the drop from *every*
                                     earlier member to the last is <= ``tolerance`` (absolute accuracy)
    "cannot tell"                    otherwise (intervals too wide), rows without per-example scores
                                     (no intervals), fewer than two members, or one run per point

and it states the smallest drop it finds at 80% power (``report.stats.detectable``). Calibration:
``report.stats``' docstring (Section 2 suites simulated with SFT run-to-run shifts). Note the
paper's confound: suite checkpoints before the last did not finish their learning-rate decay, so a
turn here does not separate overtraining from the schedule; the controlled study does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.atomic import atomic_savefig
from ...core.rows import Row, read_scores
from .format import fmt_tokens
from .stats import (
    ALPHA,
    REPLICATES,
    RunVariance,
    curve_replicates,
    detectable,
    holm,
    interval,
    point,
    pool_runs,
    stack,
    turn_test,
)

METRIC = "acc"  # every generalist task defines it
NORMALIZED = ("piqa", "hellaswag", "arc_challenge")  # tasks scored with acc_norm (lm-eval's, OLMo's convention)
BASE = "base"  # the tuning-data label of a member evaluated before instruction tuning
# keys of a row's ``sft`` config that differ between runs of one setting (not the family's settings)
RUN_KEYS = (
    "model",  # the member (the curve's x), not a setting
    "seed",
    "out",
    "data",
    "results",
    "overwrite",
    "log_every",
    "device",
    "tokens",
    "revision",
    "micro_batch_size",
    "gradient_checkpointing",
    "precision",
)


def metric_of(task: str) -> str:
    """The accuracy a task is scored with: ``acc_norm`` for PIQA, HellaSwag, ARC-Challenge, else ``acc``."""
    return "acc_norm" if any(t in task for t in NORMALIZED) else METRIC


@dataclass
class SuiteCurve:
    suite: str
    tuning: str  # chat dataset name, or BASE
    task: str
    tokens: list[float]
    acc: list[float]
    metric: str = METRIC  # acc or acc_norm (``metric_of``)
    runs: list[int] = field(default_factory=list)  # SFT runs (rows) per member
    run_var: RunVariance | None = None  # pooled over the (family, task)'s members with 2+ runs
    detectable: float | None = None  # smallest drop found at 80% power (accuracy)
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
    settings: str = ""  # the SFT settings in which it differs from others of its (suite, tuning), "k=v, ..."
    curves: list[SuiteCurve] = field(default_factory=list)
    verdict: str = ""
    reason: str = ""

    @property
    def label(self) -> str:
        return self.tuning + (f" ({self.settings})" if self.settings else "")


SUITE_KINDS = ("lm_eval", "multimodal", "alpaca_eval")  # row kinds drawn against pre-training tokens (scores' prefix)
# kinds whose curve is not an accuracy: AlpacaEval's win rate against the reference (a fraction, higher is
# better; per-instruction preferences in [0, 1]). Tested with the family's tasks; left out of the average.
KIND_METRIC = {"alpaca_eval": "win_rate"}


def _scores(row: Row, task: str, metric: str) -> np.ndarray | None:
    """The row's per-document ``metric`` of ``task`` (``core.rows.read_scores``), or None."""
    scores = read_scores(row) or {}
    name = f"{row.get('kind')}.{task}.{metric}"
    return np.asarray(scores[name], dtype=np.float64) if name in scores else None


def sft_settings(row: dict) -> tuple:
    """The family key of a row's SFT run: its ``sft`` config without ``RUN_KEYS`` (sorted items)."""
    sft = row.get("sft") if isinstance(row.get("sft"), dict) else {}
    return tuple(sorted((k, repr(v)) for k, v in sft.items() if k not in RUN_KEYS))


def run_seed(row: dict) -> str:
    """Which SFT run a row evaluates: its ``sft`` seed (else a ``seed`` grid tag; "" for none)."""
    sft = row.get("sft") if isinstance(row.get("sft"), dict) else {}
    tags = row.get("tags") if isinstance(row.get("tags"), dict) else {}
    return str(sft.get("seed", tags.get("seed", "")))


def tuning_label(row: dict) -> str:
    """What a model was instruction-tuned on: the SFT run's ``data_name`` (a grid's dataset key), else
    its ``sft_data``; ``BASE`` for a member itself."""
    sft = row.get("sft") if isinstance(row.get("sft"), dict) else {}
    return str(sft.get("data_name") or row.get("sft_data") or BASE)


def collect_suite(rows: list[Row]) -> list[SuiteFamily]:
    """The suite curves of ``SUITE_KINDS`` rows with ``suite_model``, grouped into families (module doc)."""
    points: dict[tuple, dict[float, dict[str, tuple[float, np.ndarray | None]]]] = {}
    for r in rows:
        d = r.to_dict()
        if d.get("kind") not in SUITE_KINDS or not d.get("suite_model") or d.get("pretrain_tokens") is None:
            continue
        task = str(d.get("task"))
        metric = metric_of(task) if isinstance(d.get(metric_of(task)), (int, float)) else METRIC
        metric = KIND_METRIC.get(d["kind"], metric)
        value = d.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        key = (str(d["suite_model"]), tuning_label(d), sft_settings(d), task, metric)
        # one row per SFT run (seed) and member: a re-evaluation replaces the earlier row
        points.setdefault(key, {}).setdefault(float(d["pretrain_tokens"]), {})[run_seed(d)] = (
            float(value),
            _scores(r, task, metric),
        )
    settings_of = {}  # (suite, tuning) -> the distinct settings: named only where there are several
    for suite, tuning, settings, _, _ in points:
        settings_of.setdefault((suite, tuning), set()).add(settings)
    families: dict[tuple, SuiteFamily] = {}
    rng = np.random.default_rng(0)  # fixed: the report is a function of the rows
    for (suite, tuning, settings, task, metric), by_tokens in sorted(points.items()):
        tokens = sorted(by_tokens)
        runs = [list(by_tokens[t].values()) for t in tokens]
        acc = [float(np.mean([v for v, _ in rs])) for rs in runs]
        c = SuiteCurve(suite, tuning, task, tokens, acc, metric, [len(rs) for rs in runs])
        samples = [stack([s for _, s in rs], log=False) if all(s is not None for _, s in rs) else None for rs in runs]
        if all(s is not None for s in samples) and len({s.n for s in samples}) == 1:
            c.reps = curve_replicates(samples, rng, REPLICATES)
            c.acc, c.n = [float(point(s)) for s in samples], samples[0].n
            c.run_var = pool_runs(samples)
            lo, hi = interval(c.reps, log=False, y=np.array(c.acc), runs=c.runs, rv=c.run_var)
            c.lo, c.hi = list(lo), list(hi)
        others = settings_of[suite, tuning]  # name the settings in which this family differs from the others
        differ = {k for k, v in settings if any(dict(o).get(k) != v for o in others)}
        differ |= {k for o in others for k, _ in o if k not in dict(settings)}
        named = ", ".join(f"{k}={dict(settings).get(k, '-').strip(chr(39))}" for k in sorted(differ))
        families.setdefault((suite, tuning, settings), SuiteFamily(suite, tuning, named)).curves.append(c)
    return sorted(families.values(), key=lambda f: (f.suite, f.tuning != BASE, f.tuning, f.settings))


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
        if fam.tuning != BASE and any(c.run_var is None for c in tested):
            fam.verdict = "cannot tell"
            fam.reason = (
                "one run per point: one SFT run per member, run-to-run variation not measured (documents alone "
                "never make a turn: repeat the SFT with seeds, `instruct.seeds`)"
            )
            continue
        tests = [turn_test(1.0 - np.asarray(c.acc), 1.0 - c.reps, c.runs, c.run_var) for c in tested]
        rejected = holm([t.p for t in tests])
        m = sum(t.p.size for t in tests)
        for c, t, rej in zip(tested, tests, rejected):
            c.turn, c.best = bool(rej.any()), int(t.best)
            c.drop, c.upper = float(t.worse), float(t.upper)
            c.detectable = detectable(t, m)
        turned = [c for c in tested if c.turn]
        variance = _variance(tested)
        power = f"; the smallest drop found at 80% power: {100 * max(c.detectable for c in tested):.1f} points"
        if turned:
            fam.verdict = "catastrophic overtraining"
            fam.reason = "; ".join(
                f"{c.task} ({c.metric}): best at {fmt_tokens(c.tokens[c.best])} tokens, {100 * c.drop:.1f} points "
                f"lower at {fmt_tokens(c.tokens[-1])} (95% upper bound {100 * c.upper:.1f})"
                for c in turned
            )
        elif all(c.upper <= tolerance for c in tested):
            fam.verdict = "no catastrophic overtraining"
            fam.reason = (
                f"every task's 95% upper bound of the drop from any earlier member is <= {100 * tolerance:g} points"
            )
        else:
            wide = [c.task for c in tested if c.upper > tolerance]
            fam.verdict = "cannot tell"
            fam.reason = (
                f"intervals too wide: {', '.join(wide)}: 95% upper bound of the drop > {100 * tolerance:g} points"
            )
        fam.reason += power + "; " + variance


def _variance(curves: list[SuiteCurve]) -> str:
    """Which variance a family's decision used (its text says so)."""
    measured = sorted({c.run_var.describe() for c in curves if c.run_var is not None})
    if not measured:
        return "variance: documents only (the members as given)"
    return "variance: documents and SFT runs (" + "; ".join(measured) + ")"


def average_curve(fam: SuiteFamily) -> SuiteCurve | None:
    """The mean over tasks of the family's accuracy curves (not ``KIND_METRIC``'s) at the token counts they all share."""
    curves = [c for c in fam.curves if c.metric not in KIND_METRIC.values()]
    shared = sorted(set.intersection(*(set(c.tokens) for c in curves))) if curves else []
    if len(curves) < 2 or not shared:
        return None
    idx = [[c.tokens.index(t) for t in shared] for c in curves]
    acc = [float(np.mean([c.acc[i[k]] for c, i in zip(curves, idx)])) for k in range(len(shared))]
    avg = SuiteCurve(fam.suite, fam.tuning, "average", shared, acc, "mean")
    if all(c.reps is not None for c in curves):
        avg.reps = np.mean([c.reps[:, i] for c, i in zip(curves, idx)], axis=0)
        avg.runs = [min(c.runs[i[k]] for c, i in zip(curves, idx)) for k in range(len(shared))]
        rvs = [c.run_var for c in curves]
        if all(rv is not None for rv in rvs):  # module doc: the mean of the run sds, the smallest df
            sd = float(np.mean([math.sqrt(float(rv.var)) for rv in rvs]))
            within = float(np.sum([float(rv.within) for rv in rvs])) / len(rvs) ** 2
            avg.run_var = RunVariance(sd**2, within, min(rv.df for rv in rvs), max(rv.cells for rv in rvs))
        lo, hi = interval(avg.reps, log=False, y=np.array(acc), runs=avg.runs, rv=avg.run_var)
        avg.lo, avg.hi = list(lo), list(hi)
    return avg


def suite_figures(families: list[SuiteFamily], out: Path) -> list[Path]:
    """One PNG per suite: a panel per task and the average, accuracy against pre-training tokens, a
    line per tuning data (dashed: before tuning), 95% intervals as bands, turns marked."""
    if not families:
        return []
    import matplotlib  # heavy: matplotlib, only when there are figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for suite in sorted({f.suite for f in families}):
        fams = [f for f in families if f.suite == suite]
        tasks = sorted({c.task for f in fams for c in f.curves})
        averaged = {c.task for f in fams for c in f.curves if c.metric not in KIND_METRIC.values()}
        panels = (["average"] if len(averaged) > 1 else []) + tasks
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
                ax.plot(c.tokens, c.acc, style, marker="o", color=color, label=fam.label)
                if c.lo is not None:
                    ax.fill_between(c.tokens, c.lo, c.hi, color=color, alpha=0.15, linewidth=0)
                if c.turn and c.best is not None:
                    ax.plot([c.tokens[c.best]], [c.acc[c.best]], marker="*", ms=14, color=color, mec="k")
            ax.set_xscale("log")
            metrics = sorted({c.metric for f in fams for c in f.curves if c.task == panel})
            ax.set_title(f"{panel} ({', '.join(metrics) or 'mean of the tasks'})", fontsize=10)
            ax.set_xlabel("pre-training tokens")
            ax.set_ylabel(f"{'win rate' if metrics == ['win_rate'] else 'accuracy'} (95% interval)")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=8, title="tuned on", title_fontsize=8)
        fig.suptitle(f"{suite}: generalist accuracy after instruction tuning (star: a turn, Holm at {ALPHA:g})")
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
        "Generalist accuracy after instruction tuning against pre-training tokens (acc_norm for PIQA, HellaSwag "
        "and ARC-Challenge, acc for the others: the table names each); 95% intervals over documents (paired "
        "across members) and, after instruction tuning, the run-to-run variance of the SFT runs pooled over "
        f"members with several seeds (t with its degrees of freedom); a turn is decided by one-sided tests, Holm at "
        f"{ALPHA:g} over a family's tasks; \"no\" needs every task's 95% upper bound of the drop from every earlier "
        f'member <= {100 * tolerance:g} points; one SFT run per member with none repeated is "cannot tell". Suite '
        "checkpoints before the last did not finish their learning-rate decay: a turn here does not separate "
        "overtraining from the schedule (the controlled study does).",
        "",
    ]
    for fam in families:
        what = "before instruction tuning" if fam.tuning == BASE else f"tuned on **{fam.label}**"
        lines.append(f"- **{fam.suite}**, {what}: {fam.verdict} ({fam.reason})")
    lines += [
        "",
        "| suite | tuned on | task | metric | tokens | accuracy | 95% interval | n | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fam in families:
        for c in fam.curves + ([a] if (a := average_curve(fam)) else []):
            for i, t in enumerate(c.tokens):
                ci = f"[{c.lo[i]:.3f}, {c.hi[i]:.3f}]" if c.lo is not None else "-"
                star = " *" if c.turn and c.best == i else ""
                n = str(c.n) if c.n else "-"
                runs = str(c.runs[i]) if c.runs else "-"
                lines.append(
                    f"| {fam.suite} | {fam.label} | {c.task} | {c.metric} | {fmt_tokens(t)} | {c.acc[i]:.3f}{star} | "
                    f"{ci} | {n} | {runs} |"
                )
    return "\n".join(lines) + "\n"
