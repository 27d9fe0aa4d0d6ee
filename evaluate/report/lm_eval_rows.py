"""The rows of ``overtrain lm-eval`` (kind "lm_eval") in the report: each metric against pre-training tokens.

One PNG per (task, metric), a line per model; intermediate checkpoints (``lr_decayed: false``) are
their own curves (dotted, hollow markers), as in the rest of the report.
"""

from __future__ import annotations

from pathlib import Path

from ...core.atomic import atomic_savefig

METRIC_SKIP = ("_stderr",)  # row keys that are not metrics to plot (their error bars)
ROW_KEYS = {"num_fewshot", "limit", "n_examples", "seconds", "time", "pretrain_tokens", "budget_tokens"}


def lm_eval_points(rows, metric: str) -> dict[tuple[str, str, bool], list[tuple[float, float]]]:
    """{(model, task, lr_decayed): [(pretrain_tokens, mean metric)]} of kind "lm_eval" rows, by tokens.

    Intermediate checkpoints (``lr_decayed: false``) are their own curves, as in the report."""
    acc: dict[tuple[str, str, bool, float], list[float]] = {}
    for row in rows:
        value, tokens = row.get(metric), row.get("pretrain_tokens")
        if row.get("kind") == "lm_eval" and isinstance(value, (int, float)) and tokens is not None:
            key = (str(row.get("model")), str(row.get("task")), row.get("lr_decayed") is not False, float(tokens))
            acc.setdefault(key, []).append(float(value))
    out: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    for (model, task, decayed, tokens), vals in sorted(acc.items()):
        out.setdefault((model, task, decayed), []).append((tokens, sum(vals) / len(vals)))
    return out


def lm_eval_figures(rows, out: Path) -> list[Path]:
    """One PNG per (lm-eval task, metric): the metric against pre-training tokens, a line per model
    (dotted with hollow markers: intermediate checkpoints). Used by ``overtrain report``."""
    rows = [r for r in rows if r.get("kind") == "lm_eval"]
    metrics = sorted(
        {k for r in rows for k, v in r.items() if isinstance(v, float) and k not in ROW_KEYS and "_stderr" not in k}
    )
    if not rows or not metrics:
        return []
    import matplotlib  # heavy: matplotlib, only when there are figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in metrics:
        curves = lm_eval_points(rows, metric)
        for task in sorted({t for _, t, _ in curves}):
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for (model, t, decayed), pts in curves.items():
                if t == task:
                    style = {"marker": "o"} if decayed else {"marker": "o", "linestyle": ":", "mfc": "none"}
                    label = model if decayed else f"{model} (not decayed)"
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
            ax.set_xscale("log")
            ax.set_xlabel("pre-training tokens")
            ax.set_ylabel(f"lm-eval {metric}")
            ax.set_title(f"{task}: {metric}", fontsize=10)
            ax.legend(fontsize=8)
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{task}_{metric}")
            paths.append(atomic_savefig(fig, out / f"lm_eval_{slug}.png", dpi=110, bbox_inches="tight"))
            plt.close(fig)
    return paths
