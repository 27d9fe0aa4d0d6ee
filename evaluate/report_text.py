"""The report's text: the verdict per task, report.md, summary.csv and perturb.csv (``report_data`` holds the numbers).

A task shows catastrophic overtraining when its tuned-LR ID or C4 perplexity curve after
fine-tuning (fully decayed checkpoints) turns (``report_data.find_turn``); the verdict says where,
and how the fixed-LR C4 curves behave.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .report_data import METRIC_WORDS, Curve, Report, Series, fmt_lr, fmt_num, fmt_pct, fmt_tokens


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


def judge(rep: Report) -> None:
    """Per task: does the tuned-LR ID or C4 perplexity after fine-tuning turn (decayed curves only)?"""
    tol = fmt_pct(rep.tolerance)
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


def markdown(rep: Report, figures: list[Path]) -> str:
    gb = rep.group_by
    tol = fmt_pct(rep.tolerance)
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
