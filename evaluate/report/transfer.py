"""The muP-transfer panel's numbers: pre-training runs over widths x peak LRs (``configs/grids/ablations/mup_transfer.yaml``).

muP's promise is that the best peak LR found at one width is the best at every width. The report
shows it, or its absence, from the runs themselves: every finished pre-training run below the
report's input directories (a ``summary.json`` with ``peak_lr`` and ``c4_val_loss``, written last
by ``overtrain pretrain``) is a point (width = ``d_model`` of its final checkpoint's
``model.yaml``; loss = its final C4 validation loss). Points of one (model, parametrization,
budget) form one panel: a line per width over the peak LR, averaged over seeds, each width's
optimum (lowest loss) marked. A panel exists only when some width has 2 or more LRs, so a study
with one LR per run draws none. The optimum's resolution is the LR grid's ratio: "the same
optimum at every width" means the same grid point.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from ...core.errors import DataError
from .format import fmt_lr, fmt_num, fmt_tokens

SUMMARY = "summary.json"


def find_runs(sources) -> list[dict]:
    """One point per finished pre-training run below the directories of ``sources`` (files and globs are skipped)."""
    points = []
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(SUMMARY)):
            try:
                s = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"{path}: not a readable summary ({e})") from None
            if not isinstance(s, dict) or "peak_lr" not in s or "c4_val_loss" not in s:
                continue  # a fine-tuning run's summary (its row), not a pre-training run's
            spec = Path(str(s.get("final_checkpoint", ""))) / "model.yaml"
            try:
                width = int(yaml.safe_load(spec.read_text())["d_model"])
            except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
                raise DataError(f"{path}: its final checkpoint's {spec} gives no d_model") from None
            points.append(
                {
                    "model": str(s.get("model")),
                    "parametrization": str(s.get("parametrization")),
                    "budget_tokens": int(s.get("budget_tokens") or 0),
                    "width": width,
                    "lr": float(s["peak_lr"]),
                    "loss": float(s["c4_val_loss"]) if s["c4_val_loss"] is not None else math.nan,
                    "run": str(path.parent),
                }
            )
    return points


def transfer_curves(points: list[dict]) -> dict:
    """(model, parametrization, budget) -> {width: {lr: mean loss}}, only panels where a width has >= 2 LRs."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for p in points:
        acc[p["model"], p["parametrization"], p["budget_tokens"]][p["width"]][p["lr"]].append(p["loss"])
    out = {}
    for key, widths in sorted(acc.items()):
        curves = {w: {lr: float(np.mean(v)) for lr, v in sorted(lrs.items())} for w, lrs in sorted(widths.items())}
        if any(len(c) >= 2 for c in curves.values()):
            out[key] = curves
    return out


def optimum(curve: dict[float, float]) -> float | None:
    """The LR of lowest loss (a NaN loss, a diverged run, never wins); None when every loss is NaN."""
    finite = {lr: v for lr, v in curve.items() if math.isfinite(v)}
    return min(finite, key=lambda lr: (finite[lr], lr)) if finite else None


def transfer_markdown(curves: dict) -> list[str]:
    """The report's section: per panel, a table of loss per width and LR, and whether the optimum moved."""
    md = []
    for (model, param, budget), widths in curves.items():
        lrs = sorted({lr for c in widths.values() for lr in c})
        best = {w: optimum(c) for w, c in widths.items()}
        same = len({b for b in best.values() if b is not None}) == 1
        md += ["", f"## muP transfer: {model} ({param}), {fmt_tokens(budget)} tokens: final C4 validation loss", ""]
        md.append("| width | " + " | ".join(f"lr {fmt_lr(lr)}" for lr in lrs) + " | best LR |")
        md.append("|---" * (len(lrs) + 2) + "|")
        for w, c in widths.items():
            cells = [fmt_num(c.get(lr), 4) if lr in c else "" for lr in lrs]
            md.append(f"| {w} | " + " | ".join(cells) + f" | {fmt_lr(best[w]) if best[w] else '-'} |")
        md += [
            "",
            (
                f"The optimum is the same LR at every width ({fmt_lr(next(iter(best.values())))}), to the grid's resolution."
                if same
                else "The optimum moves with width: "
                + ", ".join(f"{w}: {fmt_lr(b) if b else '-'}" for w, b in best.items())
                + "."
            ),
        ]
    return md
