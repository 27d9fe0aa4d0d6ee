"""The report's figures (PNG): base C4 perplexity, per task ID and C4 perplexity after fine-tuning
(one line per fixed LR, one for the tuned LR), and noise sensitivity, each over pre-training tokens;
and muP transfer (``transfer_figure``: loss against peak LR, one line per width) when the inputs
hold pre-training runs over several LRs.

Intervals (``report.stats``: 95% bootstrap) are drawn as bands around the curves that have them;
noise sensitivity as error bars of mean +- t_{0.975, n-1} sd / sqrt(n) over its n noise seeds
(``report.stats.mean_interval``: a handful of seeds), on a symlog axis (a perplexity change can be
negative).

Intermediate checkpoints are drawn dotted with hollow markers; turns (interior inflections) are
circled in red. Files are written whole or not at all (``core.atomic.atomic_savefig``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ...core.atomic import atomic_savefig
from .data import Curve, Report, Series
from .format import METRIC_WORDS, fmt_lr, fmt_tokens
from .transfer import optimum


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


TURN_MARKER = dict(marker="o", markerfacecolor="none", markeredgecolor="red", markeredgewidth=2, linestyle="none")


def _mark_turn(ax, c: Curve, color) -> None:
    if c.interior:
        ax.plot([c.turn_tokens], [c.y[c.turn]], markersize=15, zorder=5, **TURN_MARKER)
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
    from matplotlib.lines import Line2D  # heavy: matplotlib, only when there are figures

    return Line2D([], [], markersize=10, label="turn (inflection)", **TURN_MARKER)


def _band(ax, c: Curve, color) -> None:
    """The curve's 95% intervals as a translucent band (nothing without per-example scores)."""
    if c.has_intervals:
        ax.fill_between(c.x, c.lo, c.hi, color=color, alpha=0.15, linewidth=0)


def _finish(ax, curves: list[Curve], legend: bool = True, turn_entry: bool | None = None, log_ok: bool = True) -> None:
    """Log y when the values span more than 20x; legend outside the axes, right (never over data)."""
    ys = [y for c in curves for y in c.y if y is not None and math.isfinite(y) and y > 0]
    if log_ok and ys and max(ys) / min(ys) > 20:
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
    import matplotlib  # heavy: matplotlib, only when there are figures

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
            _band(ax, c, color)
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
                    _band(ax, c, color)
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
                stats = rep.noise[c.series][g]
                err = [stats[t][4] - stats[t][0] if stats[t][2] > 1 else 0.0 for t in c.x]  # t interval: symmetric
                ax.errorbar(
                    c.x,
                    c.y,
                    yerr=err,
                    capsize=3,
                    marker="o",
                    color=g_color[g],
                    label=f"γ = {g:g}" + (" (intermediate)" if c.series.intermediate else ""),
                    **_style(c.series),
                )
            _token_axis(ax, [x for c in curves for x in c.x])
            ys = [abs(y) for c in curves for y in c.y if math.isfinite(y) and y != 0]
            ax.set_yscale("symlog", linthresh=max(min(ys), 1e-3) if ys else 1.0)  # changes can be negative
            ax.axhline(0.0, color="gray", linewidth=0.8)
            ax.set_ylabel("C4 perplexity change under noise (symlog)")
            ax.set_title(
                "Noise sensitivity: " + ", ".join([key[2], *[f"{k}={v}" for k, v in zip(gb, key[0])]]), fontsize=10
            )
            _finish(ax, curves, log_ok=False)
        fig.tight_layout()
        paths.append(_save(fig, out / "noise_sensitivity.png"))
        plt.close(fig)
    return paths


def transfer_figure(curves: dict, out: Path) -> list[Path]:
    """``mup_transfer.png``: per (model, parametrization, budget) panel, final C4 validation loss against
    peak LR (log x), one line per width, each width's optimum circled (``report.transfer``); [] without panels."""
    if not curves:
        return []
    import matplotlib  # heavy: matplotlib, only when there are figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6.2 * len(curves), 4.4), squeeze=False)
    for ax, ((model, param, budget), widths) in zip(axes[0], curves.items()):
        for i, (w, c) in enumerate(widths.items()):
            color = plt.cm.viridis(i / max(1, len(widths) - 1) * 0.85)
            lrs = list(c)
            ax.plot(lrs, [c[lr] for lr in lrs], marker="o", color=color, label=f"width {w}")
            best = optimum(c)
            if best is not None:
                ax.plot([best], [c[best]], marker="o", markersize=14, markerfacecolor="none", markeredgecolor=color)
        ax.set_xscale("log")
        ax.set_xlabel("peak LR (log scale" + ("; hidden matrices: LR / width_mult)" if param == "mup" else ")"))
        ax.set_ylabel("final C4 validation loss")
        ax.set_title(f"LR across widths: {model} ({param}), {fmt_tokens(budget)} tokens (○ = optimum)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = _save(fig, out / "mup_transfer.png")
    plt.close(fig)
    return [path]


def _same_model(a: Series, b: Series) -> bool:
    return (a.group, a.params, a.model) == (b.group, b.params, b.model)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"
