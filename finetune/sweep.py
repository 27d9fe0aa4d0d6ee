"""``overtrain sweep CONFIG checkpoint=... task=... [lrs=[...]]``: the paper's LR sweep for one (checkpoint, task).

For every LR of the grid (``lrs``, else geometric from ``sweep.min_lr`` = 4e-6 to ``sweep.max_lr``
or the task YAML's ``max_lr``, ``sweep.n_lrs`` points) the checkpoint is fine-tuned from the same
weights and evaluated on validation and test. Both regimes of the paper are recorded in
RUN_DIR/results.jsonl:

- fixed LR: one row per LR (``selected: false``);
- tuned LR: a copy of the row whose *validation* ID perplexity is lowest, ``selected: true``
  (plus ``selected_from``: the grid), reported on test. A diverged LR (NaN) never wins.

Grid extension (``sweep.extend``, on by default): when the tuned LR is the lowest or the highest
of the grid, the best LR may lie beyond it, so the sweep adds one LR past that end, geometric with
the grid's own ratio there (``lo**2 / lo_2`` or ``hi**2 / hi_2``, 4 significant digits), fine-tunes
it, and selects again over the grid as run; it repeats while the selection is an end, at most
``sweep.max_extensions`` (2) times per sweep, and never below ``schedule.final_lr``
(``extend_grid``). The added LRs' rows carry ``extended_lr: true``; the selected row carries
``selected_from`` (the grid as run), ``lr_extended`` and ``lr_extensions`` (the added LRs, in
order; both absent when none was added) and, when the tuned LR is still an end, ``lr_extend_stop`` (why the grid stopped there: "off",
"max_extensions=N reached", "schedule.final_lr", "no finite validation perplexity"; the report
flags it). The extension depends only on the rows, so a rerun reuses the added LRs' rows too.

The base model is evaluated once (a ``kind: "base"`` row; every fine-tuning row carries it as
``*_before``). Resumable: LRs whose rows exist with this run's identity (``finetune_config.RESUME_KEYS``:
checkpoint content, task, template, C4 tokens, seed, config hash; ``core.identity.same_identity``) are
skipped, and the selected row is written again only when the grid it was selected from changed
(the latest selected row of a sweep is its selection). Per-LR run dirs
(RUN_DIR/lr-<lr>/) hold config.yaml and the training log; rows live only in RUN_DIR/results.jsonl.

``stacked: true`` trains every LR still lacking a row in one pass (``finetune.stacked.StackedRun``:
K copies of the model, one per LR, each step one batched computation) instead of one after
another. Everything else is the sequential path's: the same loop (``finetune.training.train_loop``,
through ``finetune.train_models``) with its batches, schedule per LR and divergence rule, and the
same step pieces (``core.step``), seed, clipping, L2 to the pre-trained weights and optimizer; each
model is then loaded into the model and recorded by the same ``finish_run`` (rows add
``stacked: true`` and ``stack_size``; ``train_seconds`` is the stack's training time / K). The
rows equal the sequential ones up to floating-point order (tests/test_sweep.py). A diverged LR
keeps its weights from the step whose loss was not finite, as the sequential loop stops there.
Rows are appended only after the whole stack has trained, so a killed stack leaves no row.

SIGTERM / SIGUSR1 (a scheduler's time limit or preemption, ``core.preempt``): the LR in training
(or the stack) finishes and records its row, then the sweep exits with code 75 before the next;
rerunning it skips the recorded LRs.

Function form for the grid runner::

    run_sweep(config, overrides=(), progress=True) -> list[dict]

``config`` is a finetune config name/path or a ``FinetuneConfig``; ``overrides`` are the same
``key=value`` strings as the command line (checkpoint=, task=, run_dir=, c4=, lrs=[...], stacked=true, tags.x=...).
Returns this sweep's rows: one per LR in grid order (added LRs last), then the selected row.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import checkpoint_provenance
from ..core.errors import ConfigError
from ..core.eta import Eta
from ..core.identity import same_identity, warn_predating
from ..core.jsonl import append_record
from ..core.lock import LOCK_FILE, hold
from ..core.preempt import Preempted, stop_requested
from ..core.rows import BaseRow, Checkpoint, FinetuneRow, Metrics, Row, load_rows, write_scores
from .finetune import (
    RESULTS_FILE,
    Prepared,
    c4_tokens_sha256,
    completion_loss,
    evaluate_all,
    finish_run,
    prepare,
    run_finetune,
    start_run,
    train_models,
)
from .finetune_config import RESUME_KEYS, FinetuneConfig, config_hash, load_finetune_config
from .run_tracker import open_tracker
from .stacked import StackedRun, StepSettings


def lr_grid(cfg: FinetuneConfig, task) -> list[float]:
    """The explicit ``lrs``, else ``n_lrs`` geometric points from ``sweep.min_lr`` to the maximum LR."""
    if cfg.lrs:
        lrs = [float(x) for x in cfg.lrs]
    else:
        top = cfg.sweep.max_lr or getattr(getattr(task, "spec", None), "max_lr", None)
        if not top:
            raise ConfigError(
                f"sweep: no maximum LR: set sweep.max_lr or max_lr in the task YAML of '{task.name}' (or give lrs=[...])"
            )
        if top < cfg.sweep.min_lr or cfg.sweep.n_lrs < 1:
            raise ConfigError(f"sweep: need max_lr ({top}) >= min_lr ({cfg.sweep.min_lr}) and n_lrs >= 1")
        n = cfg.sweep.n_lrs if top > cfg.sweep.min_lr else 1
        lrs = [float(f"{x:.4g}") for x in np.geomspace(cfg.sweep.min_lr, top, n)]
    if any(lr <= 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise ConfigError(f"lrs: need distinct positive learning rates, got {lrs}")
    if min(lrs) < cfg.schedule.final_lr:
        raise ConfigError(f"lrs: {min(lrs)} is below schedule.final_lr={cfg.schedule.final_lr}")
    return lrs


def _same_lr(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def resumable(results: Path, base: BaseRow) -> list[Row]:
    """The rows of ``results`` with the identity of ``base`` (this run's base row), every LR's.

    Rows from before the C4 identity (``core.identity``) are reused with a warning."""
    rows = load_rows(results, warn=False) if results.is_file() else []
    ref = base.to_dict()
    mine = [
        r
        for r in rows
        if type(r) in (BaseRow, FinetuneRow) and same_identity(r, ref, [k for k in RESUME_KEYS if k != "lr"])
    ]
    warn_predating(results, mine, stacklevel=2)
    return mine


def select(rows: Sequence[dict]) -> dict:
    """The row with the lowest validation ID perplexity (NaN/None count as +inf; ties: smaller LR)."""

    def score(r):
        v = FinetuneRow.from_dict(r).val_id_ppl
        return (math.inf if v is None or not math.isfinite(v) else v, r["lr"])

    return min(rows, key=score)


def edge(grid: Sequence[float], lr: float) -> str | None:
    """ "low" or "high" when ``lr`` is that end of ``grid`` (of 2 or more LRs), else None."""
    g = sorted(grid)
    if len(g) < 2:
        return None
    return "low" if _same_lr(lr, g[0]) else "high" if _same_lr(lr, g[-1]) else None


def past_end(grid: Sequence[float], end: str) -> float:
    """One geometric step past ``end`` of ``grid``, with the grid's own ratio at that end (4 significant digits)."""
    g = sorted(grid)
    x = g[0] * g[0] / g[1] if end == "low" else g[-1] * g[-1] / g[-2]
    return float(f"{x:.4g}")


def extend_grid(
    lrs: Sequence[float], row_of: Callable[[float, bool], dict], extend: bool, max_extensions: int, floor: float = 0.0
) -> tuple[list[float], list[float], str | None]:
    """Select over ``lrs``, and while the selected LR is an end of the grid, add one LR past it (module doc).

    ``row_of(lr, added)``: the row of ``lr`` (recorded or trained now; ``added``: an LR past the
    asked grid). Returns (the grid as run, the added LRs in order, why the grid stopped with the
    selection at an end: None when it is inside). A function of the rows alone, so a rerun with
    the same rows extends the same way."""
    grid, added = list(lrs), []
    while True:
        best = select([row_of(lr, lr in added) for lr in grid])
        end = edge(grid, best["lr"])
        if end is None:
            return grid, added, None
        val = FinetuneRow.from_dict(best).val_id_ppl
        new = past_end(grid, end)
        if not extend:
            stop = "off"
        elif len(added) >= max_extensions:
            stop = f"max_extensions={max_extensions} reached"
        elif val is None or not math.isfinite(val):
            stop = "no finite validation perplexity"
        elif new < floor:
            stop = "schedule.final_lr"
        else:
            grid.append(new)
            added.append(new)
            continue
        return grid, added, stop


def train_stacked_lrs(
    p: Prepared, cfgs: Sequence[FinetuneConfig], progress: bool = True, trackers: Sequence | None = None
) -> list[tuple[dict, dict]]:
    """Train one model per config (``cfgs[k].lr``; everything else ``p.cfg``'s) at once from ``p.model``'s weights.

    Returns per config (training stats as ``finetune.train``'s, final weights): the one fine-tuning
    loop (``finetune.train_models``) over a ``StackedRun``, so a diverged model stops, and keeps its
    weights, at its first non-finite step, as the sequential loop does. Each config's run dir gets
    its own train_log.jsonl (and ``trackers[k]``, its tracker, if given).
    """
    cfg = p.cfg
    torch.manual_seed(cfg.seed)
    settings = StepSettings(
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        precision=cfg.precision,
        loss_fn=completion_loss,
        mup=cfg.mup,
        l2_to_pretrained=cfg.l2_to_pretrained,
    )
    run = StackedRun(p.model, p.spec, [c.lr for c in cfgs], settings=settings)
    trained = train_models(p, run, cfgs, f"sweep {p.task.name} stacked x{run.n_models}", progress, trackers)
    return [(t.stats, t.weights) for t in trained]


def sweep_stacked(
    p: Prepared,
    cfgs: Sequence[FinetuneConfig],
    before: dict | None,
    results: Path,
    progress: bool = True,
    extra: dict | None = None,
) -> list[dict]:
    """Train ``cfgs`` (one per LR) in one stack from ``p.model``'s weights, then evaluate and record each; returns their rows."""
    t0 = time.time()
    for c in cfgs:
        start_run(c)
    trackers = [open_tracker(replace(p, cfg=c)) for c in cfgs]
    trained = train_stacked_lrs(p, cfgs, progress, trackers)
    setup = (time.time() - t0) / len(cfgs) - trained[0][0]["train_seconds"]  # stacking, optimizers, run dirs: per model
    rows = []
    for c, tracker, (stats, weights) in zip(cfgs, trackers, trained):
        p.model.load_state_dict(weights)
        rows.append(
            finish_run(
                replace(p, cfg=c, tracker=tracker),
                stats,
                before,
                results,
                setup + stats["train_seconds"],
                extra={**(extra or {}), "stacked": True, "stack_size": len(cfgs)},
            )
        )
    return rows


def run_sweep(config: str | Path | FinetuneConfig, overrides: Sequence[str] = (), progress: bool = True) -> list[dict]:
    """Fine-tune and evaluate every LR of the grid, then record the selected one (see module doc)."""
    cfg = config if isinstance(config, FinetuneConfig) else load_finetune_config(config, overrides)
    if isinstance(config, FinetuneConfig) and overrides:
        raise ConfigError("run_sweep: give overrides with a config path, or apply them to the FinetuneConfig yourself")
    p = prepare(cfg)  # every input checked before any work (and before the run dir exists)
    lrs = lr_grid(cfg, p.task)
    with hold(Path(cfg.run_dir) / LOCK_FILE, "sweep"):  # one process per sweep dir; LockHeld names the holder
        return _run_sweep(cfg, p, lrs, progress)


def _run_sweep(cfg: FinetuneConfig, p: Prepared, lrs: list[float], progress: bool) -> list[dict]:
    root = Path(cfg.run_dir)
    results = root / RESULTS_FILE
    base = BaseRow(
        ckpt=Checkpoint(**checkpoint_provenance(p.step_dir, p.spec, p.meta)),
        checkpoint_ref=cfg.checkpoint,
        c4_tokens_sha256=c4_tokens_sha256(p),
        task=p.task.name,
        task_type=p.task.type,
        template=p.task.template,
        seed=cfg.seed,
        config_hash=config_hash(cfg),
        tags=dict(cfg.tags),
    )
    mine = resumable(results, base)
    base_state = {k: v.detach().clone() for k, v in p.model.state_dict().items()}

    before = None
    base_rows = [r for r in mine if type(r) is BaseRow]
    if base_rows:
        before = base_rows[-1].metrics
    elif cfg.eval_before:
        t0 = time.time()
        scores: dict = {}
        before = evaluate_all(p, scores)
        base = replace(base, evaluation=Metrics.of(before), metrics=before, wall_s=time.time() - t0, time=time.time())
        base = replace(base, scores=write_scores(results, scores))  # the scores file first, then its row
        append_record(results, base.to_dict())

    done = {r.lr: r.to_dict() for r in mine if isinstance(r, FinetuneRow) and not r.selected}
    recorded = lambda lr: next((r for d, r in done.items() if _same_lr(d, lr)), None)  # noqa: E731
    rows = {lr: recorded(lr) for lr in lrs}
    run_cfg = lambda lr: replace(cfg, lr=lr, run_dir=str(root / f"lr-{lr:.3e}"))  # noqa: E731
    todo = [lr for lr in lrs if rows[lr] is None]
    with stop_requested() as stop:  # SIGTERM/SIGUSR1: the LR in training finishes, then exit 75
        _train_lrs(p, cfg, lrs, todo, rows, run_cfg, base_state, before, results, stop, progress)

        def row_of(lr: float, added: bool) -> dict:
            if lr not in rows:
                rows[lr] = recorded(lr)
            if rows[lr] is None:  # an LR past the asked grid, not yet trained
                if progress:
                    end = "lowest" if lr < min(lrs) else "highest"
                    print(f"sweep {p.task.name}: tuned LR the {end} of the grid: adding lr {lr:.3g}", file=sys.stderr)
                extra = {"extended_lr": True}
                _train_lrs(p, cfg, [lr], [lr], rows, run_cfg, base_state, before, results, stop, progress, extra)
            return rows[lr]

        grid, added, why = extend_grid(lrs, row_of, cfg.sweep.extend, cfg.sweep.max_extensions, cfg.schedule.final_lr)
    out = [rows[lr] for lr in grid]

    best = select(out)
    ordered = sorted(grid)
    last = next((r for r in reversed(mine) if isinstance(r, FinetuneRow) and r.selected), None)
    if last is not None and sorted(last.selected_from or []) == ordered:
        chosen = last.to_dict()
    else:  # a copy of the best row: its keys, then the selection's
        best = FinetuneRow.from_dict(best)
        chosen = replace(
            best,
            selected=True,
            selected_from=ordered,
            selected_by="val_id_ppl",
            lr_extended=True if added else None,  # absent when nothing was added (as rows before the extension)
            lr_extensions=added or None,
            lr_extend_stop=why,
            time=time.time(),
        ).to_dict()
        append_record(results, chosen)
    return out + [chosen]


def _stop_here(stop, task: str, left: int, lrs: Sequence[float]) -> None:
    if stop:
        print(f"sweep {task}: stopped on {stop.name}; exit 75: rerun the same command to resume", file=sys.stderr)
        raise Preempted(
            f"sweep {task}: stopped on {stop.name} with {left} of {len(lrs)} LRs left; rerun the same command to resume"
        )


def _train_lrs(p, cfg, lrs, todo, rows, run_cfg, base_state, before, results, stop, progress, extra=None) -> None:
    """Train the LRs lacking rows (in one stack, or one after another), filling ``rows``; a stop
    request is honoured before each LR (or before the stack), never inside one. ``extra``: keys
    added to their rows."""
    _stop_here(stop, p.task.name, len(todo), lrs)
    if cfg.stacked and todo:
        if progress:
            print(
                f"sweep {p.task.name}: {len(todo)} of {len(lrs)} LRs in one stacked pass ({', '.join(f'{lr:.3g}' for lr in todo)})",
                file=sys.stderr,
                flush=True,
            )
        p.model.load_state_dict(base_state)  # every LR starts from the checkpoint's weights
        rows.update(zip(todo, sweep_stacked(p, [run_cfg(lr) for lr in todo], before, results, progress, extra)))
    else:
        eta, trained = Eta(len(todo)), 0  # the sweep's ETA from the LRs trained so far in this session
        for i, lr in enumerate(lrs):
            if progress:
                when = " already done" if rows[lr] else f" | {eta.text(trained)}"
                print(f"sweep {p.task.name}: lr {lr:.3g} ({i + 1}/{len(lrs)}){when}", file=sys.stderr, flush=True)
            trained += rows[lr] is None
            if rows[lr] is None:
                _stop_here(stop, p.task.name, sum(r is None for r in rows.values()), lrs)
                p.model.load_state_dict(base_state)
                c = run_cfg(lr)
                rows[lr] = run_finetune(c, results, before, replace(p, cfg=c), progress, extra)


# ------------------------------------------------------------------------------------------- CLI


def run(config: FinetuneConfig) -> int:
    rows = run_sweep(config)
    chosen = rows[-1]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"sweep {chosen['task']} on {chosen['checkpoint']} ({len(rows) - 1} LRs)")
    for r in rows[:-1]:
        mark = " *" if _same_lr(r["lr"], chosen["lr"]) else " +" if r.get("extended_lr") else "  "
        print(
            f"{mark} lr {r['lr']:<9.3g} val ID ppl {fmt(r.get('val_id_ppl'))}  test ID ppl {fmt(r.get('test_id_ppl'))}  "
            f"test acc {fmt(r.get('test_acc'))}  C4 ppl {fmt(r.get('c4_ppl_after'))}{'  DIVERGED' if r.get('diverged') else ''}"
        )
    print(
        f"selected lr {chosen['lr']:.3g} by validation ID perplexity; rows in {Path(rows[-1]['run_dir']).parent / RESULTS_FILE}"
    )
    if chosen.get("lr_extensions"):
        print(f"  grid extended past its end by {', '.join(f'{lr:.3g}' for lr in chosen['lr_extensions'])}")
    if chosen.get("lr_extend_stop"):
        end = edge(chosen["selected_from"], chosen["lr"])
        print(f"  the selected lr is the {end} end of the grid ({chosen['lr_extend_stop']}): the best may lie beyond")
    return 0
