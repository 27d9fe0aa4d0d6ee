"""The report's text: the verdicts, the sanity checks, report.md, summary.csv, curves.csv and perturb.csv
(``report.data`` holds the numbers, ``report.stats`` the statistics).

Verdict per (model, task), from its tuned-LR ID and C4 perplexity curves after fine-tuning (fully
decayed checkpoints), in this order:

- "cannot tell" when fewer than 3 budgets; when a point has no per-example scores (rows written
  before they were recorded: no intervals); when the model learned nothing (classification: test
  accuracy not above the majority class at any budget, ``report.data.learned``); when the task's
  cells have one run each and none is repeated ("one run per point, run-to-run variation not
  measured": examples alone never make a turn);
- "catastrophic overtraining" when a curve turns (``report.data.decide``: the largest budget is
  worse than an earlier one beyond the paired example noise and the pooled run-to-run variance,
  Holm-corrected over the task's tests);
- "no catastrophic overtraining" when every curve's 95% upper bound of the worsening from every
  earlier budget to the largest is within the tolerance;
- else "cannot tell: intervals too wide".

A task shows catastrophic overtraining when one of its models does, none when all its models show
none, and otherwise cannot tell. Each task's verdict states the smallest worsening its study finds
at 80% power (``report.stats.detectable``), so "no turn found" reads right, and the run variance
used; curves.csv says per curve which variance its interval and test used.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .data import MIN_BUDGETS, Curve, Report, Series, learned
from .format import METRIC_WORDS, fmt_lr, fmt_num, fmt_pct, fmt_tokens
from .transfer import transfer_markdown


def fmt_ci(c: Curve, i: int, digits: int = 4) -> str:
    """A point with its interval, "52 [50.1, 54]" (just the point without one)."""
    if not c.has_intervals:
        return fmt_num(c.y[i], digits)
    return f"{fmt_num(c.y[i], digits)} [{fmt_num(c.lo[i], 3)}, {fmt_num(c.hi[i], 3)}]"


def _describe_turn(c: Curve, group_by: list[str]) -> str:
    where = (
        f"turns at {fmt_tokens(c.turn_tokens)} tokens"
        if c.interior
        else f"is worse from the smallest budget ({fmt_tokens(c.x[0])}) on"
    )
    p = f", p = {min(c.test.p):.2g} before Holm" if c.test is not None else ""
    return (
        f"{where} for {c.series.label(group_by)} ({fmt_ci(c, c.turn)} at {fmt_tokens(c.turn_tokens)} → "
        f"{fmt_ci(c, -1)} at {fmt_tokens(c.x[-1])}, {c.worse_by:+.1%}{p})"
    )


def model_verdict(rep: Report, series: Series, task: str) -> tuple[bool | None, str, list[Curve]]:
    """(shows, sentence, turned curves) of one (model, task): see the module doc."""
    tuned = [c for c in rep.find("id", task, "tuned", series) + rep.find("c4", task, "tuned", series)]
    budgets = sorted({x for c in tuned for x in c.x})
    label = series.label(rep.group_by)
    if len(budgets) < MIN_BUDGETS:
        return None, f"{label}: cannot tell: fully decayed checkpoints at {len(budgets)} budget(s) only", []
    if not all(c.has_intervals for c in tuned):
        return None, f"{label}: cannot tell: no per-example scores (rows without a 'scores' file: no intervals)", []
    if learned(rep, series, task) is False:
        cells = rep.tuned[series, task]
        acc = ", ".join(fmt_num(cells[t].acc, 3) for t in sorted(cells) if cells[t].acc is not None)
        any_cell = next(iter(cells.values()))
        return (
            None,
            f"{label}: cannot tell: the model learned nothing (tuned-LR test accuracy {acc} is not above the "
            f"majority-class accuracy {fmt_num(any_cell.majority, 3)} at any budget; chance "
            f"{fmt_num(any_cell.chance, 3)})",
            [],
        )
    if any(c.run_var is None for c in tuned):
        return (
            None,
            f"{label}: cannot tell: one run per point, run-to-run variation not measured (examples alone "
            "never make a turn: repeat runs with seeds, `finetune.seeds`, or a noise probe, `finetune.noise_probe`)",
            [],
        )
    turned = [c for c in tuned if c.significant]
    if turned:
        parts = [f"{METRIC_WORDS[c.metric]} after fine-tuning {_describe_turn(c, rep.group_by)}" for c in turned]
        calm = [METRIC_WORDS[c.metric] for c in tuned if not c.significant]
        tail = f" {' and '.join(calm)} does not turn." if calm else ""
        return True, "catastrophic overtraining. " + "; ".join(parts) + "." + tail, turned
    bound = max(c.test.upper for c in tuned)
    if bound <= math.log1p(rep.tolerance):
        how = f"worsen by at most {_pct(bound)} (95% upper bound) from any earlier budget"
        return (
            False,
            f"{label}: no catastrophic overtraining up to {fmt_tokens(budgets[-1])} tokens: with the tuned LR, "
            f"ID and C4 perplexity after fine-tuning {how} (tolerance {fmt_pct(rep.tolerance)})",
            [],
        )
    return (
        None,
        f"{label}: cannot tell: intervals too wide (no turn detected, but a worsening of up to {_pct(bound)} from an "
        f"earlier budget is not excluded; tolerance {fmt_pct(rep.tolerance)})",
        [],
    )


def _pct(log_change: float) -> str:
    return f"{math.expm1(log_change):+.1%}" if math.isfinite(log_change) else "+0%"


def judge(rep: Report) -> None:
    """Per task: its models' verdicts (``model_verdict``) and the task's (module doc)."""
    for task in rep.tasks:
        series = sorted({c.series for c in rep.find("id", task, "tuned") + rep.find("c4", task, "tuned")})
        series = [s for s in series if not s.intermediate]
        if not series:
            text = f"**{task}**: cannot tell: no tuned-LR result for fully decayed checkpoints (no 'selected' rows, no val_id_ppl)."
            rep.verdicts[task] = {"shows": None, "curves": [], "text": text, "models": {}}
            continue
        models = {s: model_verdict(rep, s, task) for s in series}
        shows = [v for v, _, _ in models.values()]
        task_shows = True if True in shows else (False if all(v is False for v in shows) else None)
        turned = [c for _, _, cs in models.values() for c in cs]
        if task_shows:
            head = f"**{task}**: catastrophic overtraining. "
            rest = [t.removeprefix("catastrophic overtraining. ") for v, t, _ in models.values() if v]
            rest += [t + "." for v, t, _ in models.values() if not v]
            text = head + " ".join(rest)
        elif len(models) == 1:
            (t,) = [t for _, t, _ in models.values()]
            text = f"**{task}**: {t.split(': ', 1)[1]}."
        else:
            word = "no catastrophic overtraining" if task_shows is False else "cannot tell"
            text = f"**{task}**: {word}. " + " ".join(t + "." for _, t, _ in models.values())
        text += _power_sentence(rep, task)
        fixed = []
        several = len(series) > 1
        for c in sorted(rep.find("c4", task), key=lambda c: (c.series, c.value or 0)):
            if c.value is not None and not c.series.intermediate:
                if c.significant is None:
                    turn = "not tested"
                elif c.turn is None:
                    turn = "no turn"
                else:
                    turn = f"turns at {fmt_tokens(c.turn_tokens)}" if c.interior else "worse from the start"
                fixed.append(f"{c.setting} {turn}" + (f" ({c.series.label(rep.group_by)})" if several else ""))
        if fixed:
            text += " Fixed LRs, C4 perplexity: " + "; ".join(fixed) + "."
        rep.verdicts[task] = {"shows": task_shows, "curves": turned, "text": text, "models": models}


def _power_sentence(rep: Report, task: str) -> str:
    """What the task's study could have seen: per metric, the largest over its tuned curves of the
    smallest worsening found at 80% power (``report.stats.detectable``), and the run variance used."""
    parts, used = [], set()
    for metric in ("id", "c4"):
        curves = [c for c in rep.find(metric, task, "tuned") if c.detectable is not None]
        if curves:
            parts.append(f"{METRIC_WORDS[metric]} {max(c.detectable for c in curves):+.1%}")
            used |= {c.run_var.describe() for c in curves}
    if not parts:
        return ""
    return (
        f" Smallest worsening from an earlier budget to the largest this study finds at 80% power: "
        f"{', '.join(parts)} ({'; '.join(sorted(used))})."
    )


def sanity(rep: Report) -> None:
    """Flags (``rep.flags``) for what makes a point meaningless: a base model whose C4 perplexity does
    not fall with tokens, a fine-tuned model at or below majority-class accuracy, a tuned LR at an
    end of its grid."""
    for c in rep.find("base_c4"):
        if c.series.intermediate:
            continue
        ups = [i for i in range(1, len(c.y)) if c.y[i] >= c.y[i - 1]]
        if ups:
            where = ", ".join(f"{fmt_tokens(c.x[i - 1])} → {fmt_tokens(c.x[i])}" for i in ups)
            rep.flags.append(
                f"base C4 perplexity of {c.series.label(rep.group_by)} does not fall with tokens ({where}): "
                "pre-training is not improving the model there"
            )
    for (s, task), cells in sorted(rep.tuned.items()):
        if s.intermediate:
            continue
        low = [
            t for t, c in sorted(cells.items()) if c.majority is not None and c.acc is not None and c.acc <= c.majority
        ]
        if low:
            c0 = cells[low[0]]
            rep.flags.append(
                f"{task}, {s.label(rep.group_by)}: tuned-LR test accuracy at or below the majority class "
                f"({fmt_num(c0.majority, 3)}; chance {fmt_num(c0.chance, 3)}) at "
                f"{', '.join(fmt_tokens(t) for t in low)} tokens"
                + (": learned nothing" if learned(rep, s, task) is False else "")
            )
        for end, pick in (("lowest", min), ("highest", max)):
            at = [
                t
                for t, c in sorted(cells.items())
                if len(c.grid) > 1 and c.lrs and pick(c.lrs) == pick(c.grid) and len(c.lrs) == 1
            ]
            if at:  # the sweep extends such a grid (finetune.sweep): the flag stays when it was off or hit its cap
                why = sorted({cells[t].extend_stop for t in at if cells[t].extend_stop})
                rep.flags.append(
                    f"{task}, {s.label(rep.group_by)}: the tuned LR is the {end} of its grid at "
                    f"{', '.join(fmt_tokens(t) for t in at)} tokens: the best LR may lie beyond the grid"
                    + (f" (grid extension: {'; '.join(why)})" if why else "")
                )


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
        "ci_low",
        "ci_high",
    ]
    out = []
    for s, per_gamma in sorted(rep.noise.items()):
        for gamma, pts in sorted(per_gamma.items()):
            for t, (mean, std, n, lo, hi) in sorted(pts.items()):
                lo, hi = (None, None) if n < 2 else (lo, hi)
                out.append(
                    [*s.group, s.model, int(t), not s.intermediate, gamma, rep.base.get((s, t)), mean, std, n, lo, hi]
                )
    return header, out


def csv_text(header: list[str], rows: list[list]) -> str:
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


def markdown(rep: Report, figures: list[Path], suites: str = "") -> str:
    """The report in Markdown; ``suites``, the checkpoint suites' part (``report.suite_part.suite_markdown``), ends it."""
    gb = rep.group_by
    md = ["# Catastrophic overtraining report", ""]
    md += [f"Inputs: {', '.join(str(f) for f in rep.files)}." if rep.files else "", *[f"- {n}" for n in rep.notes], ""]
    md += [
        "## Verdict",
        "",
        "With the fine-tuning LR tuned per checkpoint, a curve *turns* when its largest budget is worse than an "
        "earlier one beyond the uncertainty a rerun would show: the evaluation examples (paired bootstrap) and the "
        "run-to-run variation, pooled over the task's cells with several runs (seeds or a noise probe; t with its "
        "degrees of freedom); one-sided tests, Holm-corrected over every budget, model and metric of the task at 5%. "
        f"It shows none when the 95% upper bound of the worsening from every earlier budget is within "
        f"{fmt_pct(rep.tolerance)}; otherwise (and with fewer than 3 budgets, without per-example scores, for a "
        'model that learned nothing, or with one run per point and none repeated) the answer is "cannot tell". '
        "Intervals: 95%, over examples and runs where run variation is measured, per point; the tests compare "
        "budgets on the same examples (paired), so they can separate points whose intervals overlap. "
        'Fully decayed checkpoints only; "(int.)" marks intermediate ones.',
        "",
    ]
    none = "- no fine-tuning rows" + (": the checkpoint suites' verdicts are below." if suites else ".")
    md += [f"- {v['text']}" for v in rep.verdicts.values()] or [none]
    shows = [t for t, v in rep.verdicts.items() if v["shows"]]
    not_shows = [t for t, v in rep.verdicts.items() if v["shows"] is False]
    unknown = [t for t, v in rep.verdicts.items() if v["shows"] is None]
    if rep.verdicts:
        md += [
            "",
            f"Catastrophic overtraining: {', '.join(shows) or 'none'}. Not observed: {', '.join(not_shows) or 'none'}. "
            f"Cannot tell: {', '.join(unknown) or 'none'}.",
        ]
    if rep.flags:
        md += ["", "## Sanity checks", "", *[f"- ⚠ {f}" for f in rep.flags]]
    noise = [c for c in rep.find("noise") if not c.series.intermediate and len(c.x) > 1]
    if noise:
        grows = sum(c.y[-1] > c.y[0] for c in noise)
        md += [
            "",
            f"Noise sensitivity (C4 perplexity increase under weight noise) is larger at the largest budget than at the "
            f"smallest for {grows} of {len(noise)} (model, gamma) curves.",
        ]
    turns = [c for c in rep.curves if c.interior and c.metric in ("id", "c4")]
    if turns:
        md += ["", "Inflections (marked on the figures):", ""]
        md += [
            f"- {c.task or 'base'} {METRIC_WORDS.get(c.metric, 'base C4 perplexity')}, {c.setting}: {_describe_turn(c, gb)}"
            for c in turns
        ]

    base_series = sorted({s for s, _ in rep.base})
    if base_series:
        md += ["", "## Base models: C4 perplexity", ""]
        base_curve = {c.series: c for c in rep.find("base_c4")}
        rows = [
            [*s.group, s.model, _tokens_cell(s, t), _with_ci(base_curve.get(s), t, rep.base[s, t])]
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
                tid = {c.series: c for c in rep.find("id", task, "tuned")}.get(s)
                tc4 = {c.series: c for c in rep.find("c4", task, "tuned")}.get(s)
                r += (
                    [
                        ",".join(fmt_lr(x) for x in tuned.lrs),
                        _with_ci(tid, t, tuned.id_ppl),
                        _with_ci(tc4, t, tuned.c4_ppl),
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

    md += transfer_markdown(rep.transfer)
    if figures:
        md += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(md).strip() + "\n" + ("\n" + suites if suites else "")


def _with_ci(c: Curve | None, t: float, value: float | None) -> str:
    """A table cell: the value, with its interval when the curve holding it has one."""
    if c is None or not c.has_intervals or t not in c.x:
        return fmt_num(value)
    return fmt_ci(c, c.x.index(t))


def curves_table(rep: Report) -> tuple[list[str], list[list]]:
    """CSV header and rows of every curve point with its interval and the curve's test (curves.csv)."""
    header = [
        *rep.group_by,
        "model",
        "lr_decayed",
        "run_budget_tokens",
        "task",
        "metric",
        "setting",
        "pretrain_tokens",
        "value",
        "ci_low",
        "ci_high",
        "turns",
        "best_tokens",
        "worse_upper_bound",
        "variance",
        "run_sd",
        "run_df",
        "detectable_worsening",
    ]
    out = []
    for c in rep.curves:
        if c.metric == "noise":
            continue
        for i, (x, y) in enumerate(zip(c.x, c.y)):
            upper = math.expm1(c.test.upper) if c.test is not None and math.isfinite(c.test.upper) else None
            out.append(
                [
                    *c.series.group,
                    c.series.model,
                    not c.series.intermediate,
                    c.series.run_budget or "",
                    c.task or "",
                    c.metric,
                    c.setting,
                    int(x),
                    y,
                    c.lo[i] if c.has_intervals else None,
                    c.hi[i] if c.has_intervals else None,
                    "" if c.significant is None else c.significant,
                    int(c.x[int(c.test.best)]) if c.test is not None else "",
                    upper,
                    c.variance if c.has_intervals else "",
                    math.sqrt(float(c.run_var.var)) if c.run_var is not None else None,
                    c.run_var.df if c.run_var is not None else None,
                    c.detectable,
                ]
            )
    return header, out
