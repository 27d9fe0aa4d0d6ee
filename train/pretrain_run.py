"""The pre-training loop: one process's part of a run that ``overtrain.train.pretrain_plan`` planned.

Every rank of a torchrun builds a ``PretrainRun`` from the same ``Plan``; rank 0 writes the files.
``PretrainRun.run`` is the whole run, top to bottom; its steps are the one training loop
(``train.trainer.Trainer``: a ``SingleRun`` stepper, divergence policy "raise"), with the
``PretrainRun`` itself as the hook called after each step::

    set-up      model + optimizer (fresh, or weights, optimizer state and RNG
                state from the latest checkpoint), step-addressed batches, loggers
    each step   one optimizer step over the global batch (``core.step.train_step``; a non-finite
                loss raises ``train.trainer.Diverged``, the last checkpoint kept), then
                log       every log.every_steps, the first step of a session, and the last
                evaluate  every eval.every_steps and the last step (C4 validation perplexity)
                save      every checkpoint.every_steps, at checkpoint.at_tokens marks, and the last
                stop      on SIGTERM/SIGUSR1: checkpoint this step, exit 75 (``core.preempt``)
    finish      summary.json, written last: its presence means the run finished

Exact resume: a checkpoint holds the weights, the optimizer state and every rank's RNG state
(``state.pt``), and the batches are a function of the step (``overtrain.data.loader``), so a
run resumed from ``checkpoints/latest`` repeats an uninterrupted run bit for bit; rows of
metrics.jsonl past the resumed step (written after that checkpoint) are dropped.

Over 400 lines, and one concern: the run's phases share the ``PretrainRun``'s state (model, optimizer,
step, loggers), so they stay in one class that reads top to bottom, as listed above.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import dist
from ..core.atomic import atomic_write_text
from ..core.checkpoint import (
    load_model,
    load_optimizer_state,
    prune_checkpoints,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
    step_dir_name,
)
from ..core.config import to_dict
from ..core.errors import CheckpointError
from ..core.likelihood import lm_loss, perplexity
from ..core.model import build_model
from ..core.model_spec import count_params, flops_per_token
from ..core.optim import optimizer_for
from ..core.paths import expand_path
from ..core.preempt import EXIT_PREEMPTED, Preempted, stop_requested
from ..core.step import StepStats, use_fused_adam
from ..data.loader import Prefetcher, WindowLoader
from .metrics_log import METRICS_FILE, MetricsLogger, Progress, peak_flops, say, truncate_after
from .pretrain_plan import SUMMARY_FILE, Plan, PretrainConfig
from .trainer import Hook, SingleRun, StepEvent, Trainer

EVAL_KEYS = ("c4_val_loss", "c4_val_ppl", "c4_val_tokens")  # an evaluation, in rows, checkpoint meta and summary


class DataRepeatWarning(UserWarning):
    """The budget needs more than one pass over the training tokens."""


# ---------------------------------------------------------------------------------------- set-up


@dataclass
class Resumed:
    """What a run carries over from the checkpoint it resumes (the defaults: a fresh start)."""

    step: int = 0  # optimizer steps already done
    meta: dict = field(default_factory=dict)  # the checkpoint's meta.json (with its evaluation, if any)
    train_time_s: float = 0.0  # spent by the earlier sessions
    wall_time_s: float = 0.0
    resumes: int = 0  # how many sessions resumed this run, this one included


def build_model_and_optimizer(
    plan: Plan, info: dist.DistInfo, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Resumed]:
    """Fresh: the seeded model, its optimizer and seeded RNGs. Resumed from ``plan.resume_from``:
    its weights, optimizer state and this rank's RNG state. The model is laid out for training
    (``layout``: FSDP-sharded under ``parallel: fsdp``) before the optimizer is built on it."""
    cfg = plan.cfg
    if plan.resume_from is None:
        model = layout(build_model(plan.spec, device=device, seed=cfg.seed), cfg, info, device)
        opt = optimizer_for(model, cfg.optim)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        return model, opt, Resumed()

    ckpt = plan.resume_from
    model, _, meta = load_model(ckpt, device, expect=plan.spec)
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    if state["steps_total"] != plan.steps or state["tokens_per_step"] != plan.tokens_per_step:
        raise CheckpointError(
            f"{ckpt / 'state.pt'}: planned for {state['steps_total']} steps of "
            f"{state['tokens_per_step']} tokens, the config now gives {plan.steps} x {plan.tokens_per_step}"
        )
    model = layout(model, cfg, info, device)
    opt = optimizer_for(model, cfg.optim)
    load_optimizer_state(ckpt, model, opt, device)  # saved sharded or whole, for any number of ranks
    rngs = state["rng"]  # one per rank; on another number of ranks, every rank continues rank 0's
    set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    return (
        model,
        opt,
        Resumed(
            int(meta["step"]),
            meta,
            float(state["train_time_s"]),
            float(state["wall_time_s"]),
            int(state["resumes"]) + 1,
        ),
    )


def layout(model: torch.nn.Module, cfg: PretrainConfig, info: dist.DistInfo, device: torch.device) -> torch.nn.Module:
    """The model as it trains: each block's activations recomputed in the backward
    (``activation_checkpointing``; OLMo's whole-layer strategy) and, under torchrun with
    ``parallel: fsdp``, sharded in place per block (``core.dist.shard``; muP shapes kept)."""
    if cfg.activation_checkpointing:
        from olmo.config import ActivationCheckpointingStrategy  # heavy: olmo, ~4 s

        model.set_activation_checkpointing(ActivationCheckpointingStrategy.whole_layer)
    if cfg.parallel == "fsdp" and info.distributed:
        dtype = dist.compute_dtype(cfg.fsdp, device, cfg.precision)
        dist.shard(model, list(model.transformer.blocks), cfg.fsdp, dtype)
    return model


def for_training(
    model: torch.nn.Module, cfg: PretrainConfig, info: dist.DistInfo, device: torch.device
) -> tuple[torch.nn.Module, Callable | None]:
    """The module the steps run (compiled if asked; DDP-wrapped under torchrun unless ``layout``
    sharded it) and the loss function (None = ``lm_loss``). Evaluation and checkpoints use ``model``."""
    train_model = torch.compile(model) if cfg.compile else model
    # Compiling the loss too fuses the 50K-way cross-entropy: no fp32 logits are materialized.
    loss_fn = torch.compile(lm_loss) if cfg.compile else None
    if dist.is_sharded(model):
        return train_model, loss_fn
    return dist.wrap(train_model, info, device), loss_fn


def gather_rng_states(info: dist.DistInfo) -> list[dict]:
    """Every rank's RNG state, in rank order (a collective: every rank calls it)."""
    if not info.distributed:
        return [rng_state()]
    rngs = [None] * info.world_size
    torch.distributed.all_gather_object(rngs, rng_state())
    return rngs


# ------------------------------------------------------------------------------------ the loop


class PretrainRun(Hook):
    """One process's part of a planned pre-training run; ``run()`` trains it and returns the summary.

    It is the hook of the one loop (``train.trainer.Trainer``): ``after_step`` logs, evaluates,
    checkpoints and honours a stop request, in that order."""

    def __init__(self, plan: Plan, info: dist.DistInfo, device: torch.device, started: float | None = None):
        self.started = time.time() if started is None else started  # for wall_time_s
        self.plan, self.cfg, self.spec = plan, plan.cfg, plan.spec
        self.info, self.device = info, device
        self.run_dir = Path(expand_path(self.cfg.run_dir))  # prepared by pretrain(): holds config.yaml
        self.ckpt_root = self.run_dir / "checkpoints"

        self.model, self.opt, self.resumed = build_model_and_optimizer(plan, info, device)
        if info.is_main:
            truncate_after(self.run_dir / METRICS_FILE, self.resumed.step)
        if device.type == "cuda":
            use_fused_adam(self.opt)  # one kernel per step instead of several per parameter list
        self.train_model, self.loss_fn = for_training(self.model, self.cfg, info, device)
        loader = WindowLoader(
            plan.train_tokens,
            plan.seq_len,
            self.cfg.global_batch_size,
            self.cfg.micro_batch_size,
            self.cfg.seed,
            info.rank,
            info.world_size,
            source=self.cfg.data.dir,
        )
        self.batches = Prefetcher(loader, plan.steps, device)  # next step's batch is read while this one trains

        self.params = count_params(self.spec)
        self.flops_per_token = flops_per_token(self.spec, plan.seq_len)
        self.peak_flops = peak_flops(device, self.cfg.log.peak_flops)  # None: no MFU
        self.announce()
        self.logger = MetricsLogger(
            self.run_dir, self.cfg.log, info.is_main, run_name=self.run_dir.name, config=to_dict(self.cfg)
        )
        self.progress = Progress(info, plan.steps, self.resumed.step, self.cfg.log.every_steps)

        # What the loop updates.
        self.train_time = 0.0  # seconds spent in training steps, this session
        self.window_time, self.window_tokens = 0.0, 0  # since the last logged row: its throughput
        self.last_eval: dict | None = None  # the latest evaluation row: into checkpoint meta and the summary

    def run(self) -> dict:
        """Train from the resumed step to the last one; then write and return the summary.

        SIGTERM / SIGUSR1 (``core.preempt``): the current step finishes, a checkpoint is written
        at it (reason ``preempt``) and ``Preempted`` exits the process with code 75."""
        stepper = SingleRun(
            self.train_model,
            self.opt,
            self.cfg.optim.grad_clip,
            self.cfg.precision,
            loss_fn=self.loss_fn,
            weights=self.model,
        )
        batches = lambda step: (self.batches.micro_batches(step), self.plan.tokens_per_step)  # noqa: E731
        loop = Trainer(stepper, batches, [self.plan.schedule], self.plan.steps, [self], "raise", "pretrain")
        with stop_requested() as self.stop:
            try:
                loop.run(self.resumed.step)
            finally:
                self.batches.close()
        return self.finish()

    def after_step(self, ev: StepEvent) -> None:
        """After optimizer step ``ev.step``: log, evaluate, checkpoint, stop if asked (module doc)."""
        (stats,) = ev.stats
        self.train_time += ev.seconds
        self.window_time += ev.seconds
        self.window_tokens += stats.tokens
        self.progress.stepped(stats.loss)
        done = ev.step + 1  # steps completed
        if self.due(done, self.cfg.log.every_steps) or done == self.resumed.step + 1:
            self.log_step(done, stats)
        if self.due(done, self.cfg.eval.every_steps):
            self.evaluate(done)  # before the checkpoint, whose meta records it
        reasons = self.checkpoint_reasons(done)
        if reasons:
            self.checkpoint(done, reasons)
        if done < self.plan.steps and dist.any_rank(self.info, self.device, self.stop)[0]:
            self.preempt(done, saved=bool(reasons), why=self.stop.name or "a stop on another rank")

    def close(self) -> None:
        self.progress.close()

    def preempt(self, done: int, saved: bool, why: str) -> None:
        """Checkpoint step ``done`` (unless this step already saved one) and exit with ``EXIT_PREEMPTED``."""
        if not saved:
            self.checkpoint(done, ["preempt"])
        self.logger.close()
        path = self.ckpt_root / step_dir_name(done)
        say(
            self.info,
            f"pretrain: stopped on {why} after step {done:,} of {self.plan.steps:,}; saved {path}; "
            f"exit {EXIT_PREEMPTED}: rerun the same command to resume",
        )
        raise Preempted(f"pretrain: preempted at step {done} ({path}); rerun the same command to resume")

    def due(self, done: int, every: int) -> bool:
        """Every ``every`` steps (0 = never) and at the last step."""
        return done == self.plan.steps or (every > 0 and done % every == 0)

    # ---------------------------------------------------------------------------------- logging

    def log_step(self, done: int, stats: StepStats) -> None:
        """A metrics row: the step's loss, grad norm and LR; tokens/s (and MFU) since the previous row."""
        factor = self.plan.schedule(done - 1)  # the step's LR factor (the schedule is a pure function)
        tokens_per_sec = self.window_tokens / max(self.window_time, 1e-9)
        row = {
            "step": done,
            "tokens": done * self.plan.tokens_per_step,
            "lr": self.cfg.optim.lr * factor,
            "lr_factor": factor,
            "loss": stats.loss,
            "grad_norm": stats.grad_norm,
            "tokens_per_sec": tokens_per_sec,
        }
        if self.peak_flops:
            row["mfu"] = self.flops_per_token * tokens_per_sec / (self.peak_flops * self.info.world_size)
        self.logger.log(row)
        self.progress.train_row(row)
        self.window_time, self.window_tokens = 0.0, 0

    def announce(self) -> None:
        """What is about to run; warnings for token marks a resume skipped and for repeated data."""
        plan, cfg, info = self.plan, self.cfg, self.info
        say(
            info,
            f"pretrain: {self.spec.name} ({self.params['non_embedding_params']:,} non-embedding params, "
            f"{self.spec.parametrization}) on {info.world_size} x {self.device}; {plan.steps:,} steps x "
            f"{plan.tokens_per_step:,} tokens = {plan.realized_tokens:,} tokens (budget {cfg.budget_tokens:,}); "
            f"warmup {plan.schedule.warmup_steps} steps, {plan.schedule.decay} decay to {cfg.schedule.final_lr:g}",
        )
        start = self.resumed.step
        if plan.resume_from is not None:
            say(info, f"pretrain: resuming from {plan.resume_from} (step {start:,})")
            missed = [
                t for s, t in plan.mark_steps.items() if s <= start and not (self.ckpt_root / step_dir_name(s)).is_dir()
            ]
            if missed and info.is_main:
                warnings.warn(
                    f"checkpoint.at_tokens {missed} lie before the resumed step {start:,}: not saved", stacklevel=2
                )
        if plan.epochs > 1 and info.is_main:
            warnings.warn(
                f"{cfg.data.dir}: the budget needs {plan.epochs:.2f} epochs over the training split "
                f"({plan.n_windows:,} windows of {plan.seq_len + 1} tokens); each epoch is reshuffled",
                DataRepeatWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------- evaluation

    def evaluate(self, done: int) -> None:
        """C4 validation loss and perplexity on a fixed prefix of the val split (split over ranks)."""
        r = perplexity(
            self.model,
            self.plan.val_tokens,
            self.plan.seq_len,
            batch_size=self.cfg.eval.batch_size,
            max_tokens=self.cfg.eval.val_tokens,
            device=self.device,
            precision=self.cfg.precision,
            vocab_size=self.spec.vocab_size,
            distributed=True,
        )
        row = {
            "step": done,
            "tokens": done * self.plan.tokens_per_step,
            "c4_val_loss": r["loss"],
            "c4_val_ppl": r["ppl"],
            "c4_val_tokens": r["tokens"],
        }
        self.logger.log(row)
        self.progress.eval_row(row)
        self.last_eval = row

    # ---------------------------------------------------------------------------- checkpointing

    def checkpoint_reasons(self, done: int) -> list[str]:
        reasons = []
        if self.cfg.checkpoint.every_steps and done % self.cfg.checkpoint.every_steps == 0:
            reasons.append("periodic")  # pruned to the newest checkpoint.keep_last
        if done in self.plan.mark_steps:
            reasons.append("token_mark")
        if done == self.plan.steps:
            reasons.append("final")
        return reasons

    def checkpoint(self, done: int, reasons: list[str]) -> None:
        """checkpoints/step-N/: model.pt (whole, gathered under fsdp) + meta.json, optim.pt (fsdp: optim/,
        sharded) and state.pt (what an exact resume needs)."""
        rngs = gather_rng_states(self.info)
        files = {"state.pt": self.trainer_state(done, rngs)} if self.info.is_main else {}
        meta = self.checkpoint_meta(done, reasons) if self.info.is_main else {}
        save_training_checkpoint(self.ckpt_root, done, self.model, self.opt, self.info, files, meta, self.spec)
        if self.info.is_main and "periodic" in reasons:
            prune_checkpoints(self.ckpt_root, self.cfg.checkpoint.keep_last)
        dist.barrier()

    def checkpoint_meta(self, done: int, reasons: list[str]) -> dict:
        """meta.json: what the checkpoint is (read by evaluate/finetune/report), with its evaluation if any."""
        plan, cfg = self.plan, self.cfg
        meta = {
            "step": done,
            "tokens": done * plan.tokens_per_step,
            "budget_tokens": cfg.budget_tokens,
            "final": done == plan.steps,
            "lr_decayed": plan.schedule.decayed_after(done),
            "kind": "pretrain",
            "run_dir": str(self.run_dir),
            "seed": cfg.seed,
            "reasons": reasons,
            "model": self.spec.name,
            "non_embedding_params": self.params["non_embedding_params"],
            "lr_factor": plan.schedule(done - 1),
            "steps_total": plan.steps,
        }
        if self.last_eval is not None and self.last_eval["step"] == done:
            meta.update({k: self.last_eval[k] for k in EVAL_KEYS})
        return meta

    def trainer_state(self, done: int, rngs: list[dict]) -> dict:
        """state.pt: the plan it belongs to, every rank's RNG state, and the time spent so far."""
        return {
            "step": done,
            "steps_total": self.plan.steps,
            "tokens_per_step": self.plan.tokens_per_step,
            "samples_seen": done * self.cfg.global_batch_size,
            "rng": rngs,
            "config": to_dict(self.cfg),
            "train_time_s": self.resumed.train_time_s + self.train_time,
            "wall_time_s": self.resumed.wall_time_s + time.time() - self.started,
            "resumes": self.resumed.resumes,
            "world_size": self.info.world_size,
        }

    # ----------------------------------------------------------------------------------- finish

    def finish(self) -> dict:
        """summary.json (rank 0), written last; the summary is returned on every rank."""
        plan, cfg, spec = self.plan, self.cfg, self.spec
        final = self.last_eval
        if final is None:  # resumed after the final checkpoint: its meta holds the final evaluation
            final = {k: self.resumed.meta[k] for k in EVAL_KEYS}
        summary = {
            "model": spec.name,
            "parametrization": spec.parametrization,
            "non_embedding_params": self.params["non_embedding_params"],
            "total_params": self.params["total_params"],
            "budget_tokens": cfg.budget_tokens,
            "tokens_seen": plan.realized_tokens,
            "tokens_per_step": plan.tokens_per_step,
            "steps": plan.steps,
            "epochs": plan.epochs,
            "seed": cfg.seed,
            "peak_lr": cfg.optim.lr,
            "final_lr": cfg.optim.lr * plan.schedule(plan.steps - 1),
            "c4_val_loss": final["c4_val_loss"],
            "c4_val_ppl": final["c4_val_ppl"],
            "c4_val_tokens": final["c4_val_tokens"],
            "train_time_s": self.resumed.train_time_s + self.train_time,
            "wall_time_s": self.resumed.wall_time_s + time.time() - self.started,
            "world_size": self.info.world_size,
            "resumes": self.resumed.resumes,
            "final_checkpoint": str(self.ckpt_root / step_dir_name(plan.steps)),
        }
        if self.info.is_main:
            atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            say(
                self.info,
                f"pretrain: done: {plan.realized_tokens:,} tokens, C4 val ppl {final['c4_val_ppl']:.2f} -> {self.run_dir}",
            )
        self.logger.close()
        dist.barrier()
        return summary
