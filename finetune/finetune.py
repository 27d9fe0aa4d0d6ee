"""``overtrain finetune CONFIG [key=value ...]``: fine-tune one checkpoint on one task, evaluate, record.

    overtrain finetune configs/finetune/demo.yaml checkpoint=runs/tiny-32k task=rte lr=1e-3 run_dir=runs/ft

One run: check every input (checkpoint, model and vocabulary, task, C4, step count), evaluate the
base model (C4 perplexity; ID perplexity/accuracy on validation and test), train (the one
fine-tuning loop, ``finetune.training``, over ``core.step.train_step``: loss on completion tokens only;
MuAdamW or plain AdamW, ``optimizer``; warmup + decay from ``overtrain.core.schedule``; optional L2 toward the
pre-trained weights), evaluate again, and append one row to ``results.jsonl``. The row is written only after everything finished, so a
killed run leaves no row. Weights are saved only with ``save_weights: true``.

``run_finetune(cfg, ...)`` is the function form; ``overtrain sweep`` calls it once per LR, or, with
``stacked: true``, trains all LRs at once (``train_models`` over a ``StackedRun``) and records each
through the same ``finish_run``. The config and a row's resume identity: ``overtrain.finetune.finetune_config``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.atomic import atomic_write_text
from ..core.checkpoint import checkpoint_provenance, load_model, resolve_checkpoint, save_model_checkpoint
from ..core.config import save_config
from ..core.dist import resolve_device
from ..core.errors import ConfigError
from ..core.identity import c4_identity
from ..core.jsonl import append_record
from ..core.likelihood import readout_at
from ..core.model_spec import load_model_spec
from ..core.optim import optimizer_for, peak_lrs
from ..core.rows import Checkpoint, FinetuneRow, Metrics, encoding_counts, write_scores
from ..core.schedule import Schedule
from ..core.tracker import Tracker, check_trackers
from ..data.c4 import load_c4
from ..data.encode import EncodedSplit, encode_task
from ..data.tasks import load_task
from ..data.tokenizer import check_tokenizer
from ..evaluate.evaluator import evaluate_encoded
from ..train.trainer import SingleRun, Stepper
from .finetune_config import FinetuneConfig, config_hash
from .run_tracker import close_tracker, open_tracker
from .training import StepBatches, Trained, TrainLog, batch_plan, train_loop

RESULTS_FILE = "results.jsonl"


def completion_loss(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lm_loss`` with the readout computed only at completion tokens (same value, less compute)."""
    mask = targets >= 0
    with readout_at(model, mask):
        logits = model(input_ids).logits[0]
    return F.cross_entropy(logits.float(), targets[mask], reduction="sum"), mask.sum()


def l2_to(model, lam: float):
    """``extra_loss`` for train_step: lam * ||theta - theta_0||^2 with theta_0 the weights now."""
    anchor = [p.detach().clone() for p in model.parameters()]

    def extra() -> torch.Tensor:
        return lam * sum(((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), anchor))

    return extra


@dataclass
class Prepared:
    """Everything a run needs, checked before any work starts."""

    cfg: FinetuneConfig
    step_dir: Path
    model: torch.nn.Module
    spec: object
    meta: dict
    task: object
    encoded: dict[str, EncodedSplit]
    c4: np.ndarray | None
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    tracker: Tracker | None = None  # the run's wandb/TensorBoard run (``finetune.run_tracker.open_tracker``), if asked


def prepare(cfg: FinetuneConfig, c4_tokens: np.ndarray | None = None) -> Prepared:
    """Resolve and check every input of a run; raises ConfigError/DataError/CheckpointError."""

    if not cfg.checkpoint:
        raise ConfigError("checkpoint: required (checkpoint=PATH)")
    if not cfg.task:
        raise ConfigError("task: required (task=NAME)")
    check_trackers(cfg.log, "finetune")
    step_dir = resolve_checkpoint(cfg.checkpoint)
    device = resolve_device(cfg.device)
    expect = load_model_spec(cfg.model) if cfg.model else None
    model, spec, meta = load_model(step_dir, device=device, expect=expect)
    tok = check_tokenizer(spec, str(step_dir))
    task = load_task(cfg.task, cfg.task_overrides, template=cfg.template)
    encoded = encode_task(task, ("train", "validation", "test"), tok, spec, cfg.max_examples, cfg.cap_seed)
    if c4_tokens is None and cfg.c4:
        c4_tokens = load_c4(cfg.c4, spec, cfg.c4_max_tokens, spec.max_sequence_length)
    if cfg.schedule.final_lr > cfg.lr:
        raise ConfigError(f"schedule.final_lr={cfg.schedule.final_lr} exceeds lr={cfg.lr}")
    per_epoch, total = batch_plan(len(encoded["train"].examples), cfg.batch_size, cfg.epochs, cfg.max_steps)
    if total < 2:
        raise ConfigError(
            f"{total} optimizer step(s): the schedule decays to 0 at the last step, so a run needs at least 2 "
            f"({len(encoded['train'].examples)} train examples, batch_size={cfg.batch_size}, epochs={cfg.epochs})"
        )
    return Prepared(cfg, step_dir, model, spec, meta, task, encoded, c4_tokens, device, per_epoch, total)


def evaluate_all(p: Prepared, scores: dict | None = None) -> dict:
    """C4 perplexity and ID metrics on validation and test (the train split is never evaluated);
    ``scores`` receives the per-example scores (``evaluate_encoded``)."""
    evals = {s: p.encoded[s] for s in ("validation", "test")}
    return evaluate_encoded(
        p.model, p.spec, evals, p.c4, p.cfg.eval_batch_size, precision=p.cfg.precision, scores=scores
    )


def train_models(
    p: Prepared,
    stepper: Stepper,
    cfgs: Sequence[FinetuneConfig],
    desc: str,
    progress: bool = True,
    trackers: Sequence[Tracker | None] | None = None,
) -> list[Trained]:
    """Train ``stepper``'s models, model k with ``cfgs[k]``'s peak LR and run dir, on ``p``'s data with the one loop.

    Everything else is ``p.cfg``'s: the batches (``loop.StepBatches``: fixed by the step and
    ``seed`` alone, so every LR of a sweep, sequential or stacked, trains on the same batches in
    the same order) and the schedule's shape (``core.schedule.Schedule`` per peak LR).
    ``trackers[k]``: model k's tracker (``finetune.run_tracker.open_tracker``; None: none), which
    ``finish_run`` closes.
    """
    cfg = p.cfg
    batches = StepBatches(
        p.encoded["train"].examples,
        cfg.batch_size,
        cfg.micro_batch_size,
        cfg.seed,
        p.steps_per_epoch,
        p.total_steps,
        p.spec.pad_token_id,
        p.device,
    )
    factors = [Schedule.build(cfg.schedule, p.total_steps, 1, c.lr) for c in cfgs]
    trackers = trackers or [None] * len(cfgs)
    logs = [TrainLog(c.run_dir, cfg.log_every, p.total_steps, t) for c, t in zip(cfgs, trackers)]
    return train_loop(stepper, batches, factors, logs, desc, progress)


def train(p: Prepared, progress: bool = True) -> dict:
    """Fine-tune ``p.model`` in place (``train_step`` with completion-only loss); returns training
    statistics. ``p.tracker`` (if any) is fed the training log."""
    cfg = p.cfg
    torch.manual_seed(cfg.seed)
    extra = l2_to(p.model, cfg.l2_to_pretrained) if cfg.l2_to_pretrained > 0 else None
    run = SingleRun(p.model, optimizer_for(p.model, cfg), cfg.grad_clip, cfg.precision, completion_loss, extra)
    (trained,) = train_models(p, run, [cfg], f"finetune {p.task.name} lr={cfg.lr:.2e}", progress, [p.tracker])
    return trained.stats


def start_run(cfg: FinetuneConfig) -> Path:
    """Create the run directory and write its resolved config.yaml."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def run_finetune(
    cfg: FinetuneConfig,
    results: str | Path | None = None,
    before: dict | None = None,
    prepared: Prepared | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Fine-tune, evaluate before/after, append the row to ``results`` (default RUN_DIR/results.jsonl); return it.

    ``before``: base-model metrics already computed (``evaluate_all`` of the same checkpoint, task
    and caps; the sweep passes them to avoid re-evaluating per LR); ``extra``: keys added to the row.
    """
    t_start = time.time()
    p = prepared or prepare(cfg)
    cut = {s: e.truncated for s, e in p.encoded.items() if e.truncated}
    if progress and cut:
        print(
            f"finetune: prompts longer than the context ({p.spec.max_sequence_length}) cut from the left: {cut}",
            file=sys.stderr,
        )
    start_run(cfg)
    if before is None and cfg.eval_before:
        before = evaluate_all(p)
    p = replace(p, tracker=open_tracker(p))
    stats = train(p, progress)
    return finish_run(p, stats, before, results, time.time() - t_start, extra)


def finish_run(
    p: Prepared,
    stats: dict,
    before: dict | None,
    results: str | Path | None,
    elapsed: float,
    extra: dict | None = None,
) -> dict:
    """Evaluate ``p.model`` (the fine-tuned weights), save them if asked, append and return the run's row.

    ``elapsed``: the run's seconds so far (the row's ``wall_s`` adds this evaluation); ``extra``:
    keys added to the row; ``p.tracker`` (if any) gets the row as its summary and is closed.
    Shared by ``run_finetune`` and the stacked sweep, so both record alike.
    """
    t0 = time.time()
    cfg, run_dir = p.cfg, Path(p.cfg.run_dir)
    scores: dict = {}
    after = evaluate_all(p, scores)
    results = Path(results) if results else run_dir / RESULTS_FILE
    if cfg.save_weights:
        save_model_checkpoint(
            run_dir / "checkpoints",
            stats["steps"],
            p.model,
            p.spec,
            {
                "step": stats["steps"],
                "tokens": p.meta.get("tokens"),
                "budget_tokens": p.meta.get("budget_tokens"),
                "final": True,
                "lr_decayed": stats["lr_decayed"],
                "kind": "finetune",
                "run_dir": str(run_dir),
                "seed": cfg.seed,
                "base_checkpoint": str(p.step_dir),
                "task": p.task.name,
                "template": p.task.template,
                "lr": cfg.lr,
                "finetune_tokens": stats["train_tokens"],
            },
        )
    extra = {**(extra or {}), "scores": write_scores(results, {"after": scores})}  # the file first, then its row
    row = make_row(p, stats, before, after, elapsed + time.time() - t0, **extra).to_dict()
    append_record(results, row)
    atomic_write_text(run_dir / "summary.json", json.dumps(row, indent=2, default=str))
    close_tracker(p.tracker, row)
    return row


def c4_tokens_sha256(p: Prepared) -> str | None:
    """The C4 identity of a run's evaluation (``core.identity.c4_identity``; None without C4)."""
    return None if p.c4 is None else c4_identity(p.c4, p.spec.max_sequence_length)


def make_row(p: Prepared, stats: dict, before: dict | None, after: dict, wall: float, **extra) -> FinetuneRow:
    """The run's row from its training statistics (``train_stats``) and evaluations before and after;
    ``extra``: more FinetuneRow fields (the stacked sweep's ``stacked``, ``stack_size``)."""
    cfg, before_m = p.cfg, Metrics.of(before)
    return FinetuneRow(
        run_id=Path(cfg.run_dir).name,
        run_dir=str(Path(cfg.run_dir).resolve()),
        ckpt=Checkpoint(**checkpoint_provenance(p.step_dir, p.spec, p.meta)),
        checkpoint_ref=cfg.checkpoint,
        task=p.task.name,
        task_type=p.task.type,
        template=p.task.template,
        lr=cfg.lr,
        seed=cfg.seed,
        selected=False,
        config_hash=config_hash(cfg),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        mup_optimizer=cfg.mup,
        optimizer=cfg.optimizer,
        lr_groups=peak_lrs(p.model, cfg),
        l2_to_pretrained=cfg.l2_to_pretrained,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule.decay,
        train_examples=len(p.encoded["train"].examples),
        total_steps=p.total_steps,
        **{k: stats[k] for k in TRAIN_STATS},
        finetune_lr_decayed=stats["lr_decayed"],
        after=Metrics.of(after),
        before=before_m,
        id_ppl_before=before_m.split("test").id_ppl if before is not None else None,
        c4_tokens=after["c4"]["tokens"] if after.get("c4") else None,
        c4_tokens_sha256=c4_tokens_sha256(p),
        **encoding_counts(p.encoded),
        split_info=getattr(p.task, "split_info", None),
        tags=dict(cfg.tags),
        wall_s=wall,
        time=time.time(),
        **extra,
    )


# train_stats' keys recorded under their own name (its lr_decayed is the row's finetune_lr_decayed)
TRAIN_STATS = (
    "steps",
    "train_tokens",
    "train_input_tokens",
    "train_loss_first",
    "train_loss_last",
    "train_loss_last_epoch",
    "diverged",
    "train_seconds",
    "train_tokens_per_s",
)


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class FinetuneOptions:
    results: str | None = None  # results file to append the row to (None: RUN_DIR/results.jsonl)


def run(cfg: FinetuneConfig, results: str | None = None) -> int:
    row = run_finetune(cfg, results)
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    print(
        f"{row['task']} lr={row['lr']:.3g} steps={row['steps']} ({row['train_input_tokens']:,} tokens, "
        f"{row['train_tokens']:,} of them completion tokens; {row['train_tokens_per_s']:.0f} tok/s){'  DIVERGED' if row['diverged'] else ''}"
    )
    for s in ("val", "test"):
        print(
            f"  {s:<4} ID ppl {fmt(row.get(f'{s}_id_ppl_before'))} -> {fmt(row[f'{s}_id_ppl'])}   "
            f"acc {fmt(row.get(f'{s}_acc_before'))} -> {fmt(row[f'{s}_acc'])}"
        )
    if "c4_ppl_after" in row:
        print(f"  C4 ppl {fmt(row.get('c4_ppl_before'))} -> {fmt(row['c4_ppl_after'])}")
    print(f"  row appended to {results or Path(cfg.run_dir) / RESULTS_FILE}")
    return 0
