"""``overtrain report RESULTS... out=DIR``: the study's tables, figures and verdict, from results rows.

    overtrain report runs/demo out=runs/demo/report [group_by=parametrization] [tolerance=0.01]

Writes ``report.md`` (also printed), ``summary.csv`` (size x budget x task), ``curves.csv`` (every
curve point with its interval), ``perturb.csv`` and
PNGs: base C4 perplexity vs tokens, per task ID and C4 perplexity after fine-tuning vs tokens (one
line per fixed LR, one for the tuned LR), noise sensitivity vs tokens (one line per gamma), and
muP transfer (final C4 loss vs peak LR, one line per width: ``report.transfer``) when the inputs
hold pre-training runs over several LRs (a directory of only such runs reports just that).

The work is split: ``report.data`` (rows -> cells -> curves -> turns), ``report.stats`` (bootstrap,
tests), ``report.text`` (verdicts, sanity checks, markdown, CSV) and ``report.figures`` (PNGs);
this module reads the rows and writes the files. Rows of kind "theory" (the linear-network study,
``finetune.theory``) get their own part, figures and verdict (``report.theory_part``).

What the numbers are (rows of several seeds or repeated evaluations are averaged):
- a *checkpoint* is (group, model, lr_decayed, pretrain_tokens); intermediate checkpoints
  (``lr_decayed: false``) form their own curves per pre-training run (``budget_tokens``), drawn
  dotted with hollow markers and never mixed into the fully decayed curves or the verdict;
- base C4 perplexity: ``c4_ppl`` of kind "base" rows, else ``c4_ppl_before`` of fine-tuning rows,
  else ``c4_ppl_base`` of perturbation rows (each row type's ``base_c4_ppl``, ``overtrain.core.rows``);
- after fine-tuning: ID perplexity ``test_id_ppl`` (else ``val_id_ppl``), C4 ``c4_ppl_after``,
  accuracy ``test_acc`` (else ``val_acc``) (``FinetuneRow.id_ppl``, ``c4_ppl_after``, ``acc``);
- tuned LR: the rows flagged ``selected``; where no row of a (checkpoint, task) is flagged, the LR
  with the lowest mean ``val_id_ppl`` (said so in the report);
- every point has a 95% interval when its rows carry per-example scores (``scores``): a paired
  bootstrap over evaluation examples and C4 windows, plus the run-to-run variance pooled over the
  task's cells with several runs (``report.stats``); tables and ``curves.csv`` show them (and which
  variance), figures draw them as bands;
- a curve *turns* when its largest budget is worse than an earlier one beyond that uncertainty:
  one-sided t tests (the pooled run variance's degrees of freedom), Holm-corrected over every
  budget, model and metric of a task at 5%, the turn placed at the best budget (an inflection,
  marked on the figures, when interior). One run per point with none repeated is never a turn
  ("cannot tell: one run per point"). Calibrated on synthetic studies with run shifts at every
  seed count (``report.stats``' docstring; tests/test_report_stats.py);
- verdicts per (model, task) and per task (``report.text``): "catastrophic overtraining", "no
  catastrophic overtraining" (every tuned curve's 95% upper bound of the worsening within
  ``tolerance``), or "cannot tell" with its reason (fewer than 3 budgets, no per-example scores,
  the model learned nothing, one run per point, intervals too wide); sanity checks flag base C4 perplexity that does
  not fall with tokens, tuned accuracy at the majority class and a tuned LR at an end of its grid
  (the sweep adds LRs past such an end, ``finetune.sweep``; the flag stays when that was off or
  reached its cap, and says which). LRs a sweep added count for the tuned LR only, not as fixed-LR
  curves; of several selections of one sweep (a rerun over another grid) the last one counts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ...core.atomic import atomic_write_text
from ...core.errors import ConfigError, DataError
from ...core.rows import Row, Rows, load_rows
from ...core.tracker import TrackConfig, Tracker, check_trackers
from .data import Report, collect, find_turn
from .figures import figures, transfer_figure
from .lm_eval_rows import lm_eval_figures
from .suite_part import collect_suite, decide_suite, suite_figures, suite_markdown
from .text import csv_text, curves_table, judge, markdown, perturb_table, sanity, summary_table
from .theory_part import only_theory, theory_header, theory_part
from .transfer import find_runs, transfer_curves

__all__ = ["aggregate", "find_turn", "load_rows", "make_report"]


def aggregate(rows: list[Row], group_by: list[str], tolerance: float, files: list[Path] | None = None) -> Report:
    """The report of typed rows (``load_rows``): cells, curves, turns and verdicts."""
    rep = collect(rows, group_by, tolerance, files)
    judge(rep)
    sanity(rep)
    source_flags(rep, rows)
    return rep


STAND_INS = ("OFFLINE DEMO ONLY", "stand-in")  # markers of a task source that is not the paper's data


def source_flags(rep: Report, rows: list[Row]) -> None:
    """Flag every task whose rows were read from a local stand-in for the paper's data (the rows'
    ``task_source``, ``data.tasks.Task.source``), so a demo's numbers are never taken for the paper's."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        d = r.to_dict()
        if d.get("task") and d.get("task_source"):
            seen.setdefault(str(d["task"]), set()).add(str(d["task_source"]))
    for task, sources in sorted(seen.items()):
        for src in sorted(sources):
            if any(m in src for m in STAND_INS):
                rep.flags.append(f"{task}: read from a local stand-in, not the paper's data: {src}")


def make_report(
    sources: list[str], out: str | Path, group_by: list[str] = (), tolerance: float = 0.01
) -> tuple[Report, str, list[Path]]:
    """Read results, write report.md / summary.csv / perturb.csv / PNGs into ``out``; (report, markdown, figure paths)."""
    if tolerance < 0:
        raise ConfigError(f"command line: --tolerance must be >= 0, got {tolerance}")
    transfer = transfer_curves(find_runs(sources))  # pre-training runs over LRs: the muP-transfer panel
    try:
        rows = load_rows(list(sources), warn=False)
    except DataError:
        if not transfer:
            raise
        rows = Rows()  # pre-training runs only (ablations/mup_transfer.yaml): no results rows
        rows.files, rows.where, rows.torn = [Path(s) for s in sources], [], []
    if not rows and not transfer:
        raise DataError(f"{', '.join(str(f) for f in rows.files)}: no results rows")
    rep = aggregate(rows, list(group_by), tolerance, rows.files)
    rep.transfer = transfer
    if rows.torn:
        rep.notes.append(f"ignored {len(rows.torn)} torn final line(s) (interrupted writes): {', '.join(rows.torn)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = figures(rep, out) + transfer_figure(transfer, out)

    paths += lm_eval_figures([d for d in (r.to_dict() for r in rows) if not d.get("suite_model")], out)
    families = collect_suite(rows)  # checkpoint suites (the paper's Section 2), drawn and judged apart
    decide_suite(families, tolerance)
    paths += suite_figures(families, out)
    atomic_write_text(out / "summary.csv", csv_text(*summary_table(rep)))
    atomic_write_text(out / "curves.csv", csv_text(*curves_table(rep)))
    if rep.noise:
        atomic_write_text(out / "perturb.csv", csv_text(*perturb_table(rep)))
    text = markdown(rep, paths, suite_markdown(families, tolerance))
    theory_md, theory_paths = theory_part(rows, out, tolerance)  # the linear-network study (kind "theory")
    paths += theory_paths
    text = theory_md.replace("\n\n", theory_header(rows.files), 1) if only_theory(rows) else text + theory_md
    atomic_write_text(out / "report.md", text)
    return rep, text, paths


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class ReportConfig:
    out: str = ""  # output directory (report.md, summary.csv, perturb.csv, *.png)
    group_by: list[str] = field(default_factory=list)  # compare by these row keys, e.g. parametrization,tags.optim_lr
    tolerance: float = 0.01  # the smallest relative worsening that matters: "no" needs its 95% bound below it
    log: TrackConfig = field(default_factory=TrackConfig)  # wandb / TensorBoard: every curve against tokens, figures

    def validate(self) -> None:
        if not self.out:
            raise ValueError("out is not set (the output directory: out=DIR)")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


def track_report(rep: Report, cfg: TrackConfig, out: Path, paths: list[Path]) -> None:
    """One tracker run in ``out``: every curve's points at step = pre-training tokens (tag
    task/metric/setting/series), and the figures (wandb images)."""
    if not (cfg.wandb or cfg.tensorboard):
        return
    at: dict[int, dict[str, float]] = defaultdict(dict)
    for c in rep.curves:
        tag = f"{c.task or 'base'}/{c.metric}/{c.setting}/{c.series.label(rep.group_by)}"
        for x, y in zip(c.x, c.y):
            at[int(x)][tag] = y
    tracker = Tracker(out, cfg, job_type="report", config={"group_by": rep.group_by, "tolerance": rep.tolerance})
    for tokens in sorted(at):  # increasing steps: wandb needs them so
        tracker.log(at[tokens], tokens)
    if tracker.wandb is not None:
        import wandb  # heavy: wandb (optional extra [track]), only with log.wandb

        tracker.wandb.log({p.stem: wandb.Image(str(p)) for p in paths})
    tracker.close()


def run(config: ReportConfig, results: list[str]) -> int:
    group_by = config.group_by
    check_trackers(config.log, "report")
    rep, text, paths = make_report(results, config.out, group_by, config.tolerance)
    track_report(rep, config.log, Path(config.out), paths)
    print(text)
    print(f"report: {Path(config.out) / 'report.md'}  table: {Path(config.out) / 'summary.csv'}")
    for p in paths:
        print(f"figure: {p}")
    return 0
