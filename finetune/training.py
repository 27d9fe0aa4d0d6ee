"""Fine-tuning on the one training loop (``train.trainer.Trainer``): one model or K stacked ones.

A ``Stepper`` (``train.trainer``) trains ``n_models`` models in lockstep on the same micro-batches:
``step(micro_batches, lr_factors) -> [StepStats per model]`` and ``state_dict(k)``. ``SingleRun``
is ``core.step.train_step`` with one model's optimizer; ``finetune.stacked.StackedRun`` is K
copies of a model vmapped as one computation, built from the same step pieces.

``train_loop`` is a ``Trainer`` with the divergence policy "record" and one hook (``FinetuneLog``);
it runs ``batches.total_steps`` optimizer steps. Step s:

- trains on ``batches.at(s)``: epoch e = s // steps_per_epoch is a permutation of the training
  examples seeded by (seed, e) alone, cut in batches of ``batch_size`` (the last of an epoch may
  be smaller), each cut in micro-batches of ``micro_batch_size`` (gradient accumulation). So every
  model, and every LR of a sweep run sequentially or stacked, sees the same batches in the same order;
- sets model k's LR to its peak x ``factors[k](s)`` (``core.schedule.Schedule``: warmup, then decay to
  ``final_lr``, a ratio of the peak, so per model);
- logs step, loss, LR, grad norm and cumulative target tokens to model k's train_log.jsonl every
  ``log_every`` steps and at the last (and to its tracker, ``finetune.run_tracker``); shows a bar on
  a terminal, else ~10 plain lines with elapsed time, ETA and tokens/s (``core.eta``);
- stops model k at its first non-finite loss (divergence is a result: its metrics are NaN/inf):
  its statistics end at that step and its weights are those after it (copied if other models go
  on). The loop ends when every model has stopped or all steps are done.

It returns per model its ``train_stats`` and weights (``Trained``). Training time is the loop's
wall time / n_models, each model's share.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.eta import Eta
from ..data.encode import collate
from ..train.trainer import Batch, Hook, StepEvent, Stepper, Trainer


def batch_plan(n_examples: int, batch_size: int, epochs: float, max_steps: int = 0) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps: ``max_steps`` if > 0, else ``epochs`` x steps per epoch, rounded up)."""
    per_epoch = math.ceil(n_examples / batch_size)
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    return per_epoch, total


def step_examples(step: int, n: int, per_epoch: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of optimizer step ``step``: epoch e is a seeded permutation, cut in batches."""
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch_size : (k + 1) * batch_size]


@dataclass
class StepBatches:
    """The training data of a run, step by step: which examples, in which micro-batches, on which device."""

    examples: Sequence  # encoded training examples (``data.encode``: .context, .completion)
    batch_size: int
    micro_batch_size: int
    seed: int
    steps_per_epoch: int
    total_steps: int
    pad_token_id: int
    device: torch.device

    def at(self, step: int) -> tuple[list[Batch], int]:
        """Step ``step``'s micro-batches on the device, and its input tokens (context + completion)."""
        idx = step_examples(step, len(self.examples), self.steps_per_epoch, self.batch_size, self.seed)
        batch = [self.examples[i] for i in idx]
        micro = [
            collate(batch[i : i + self.micro_batch_size], self.pad_token_id, self.device)
            for i in range(0, len(batch), self.micro_batch_size)
        ]
        return micro, sum(len(ex.context) + len(ex.completion) - 1 for ex in batch)


class TrainLog:
    """A run's train_log.jsonl, emptied on open (a rerun logs afresh); a record every ``log_every`` steps and at the last."""

    def __init__(self, run_dir: str | Path, log_every: int, total_steps: int, tracker=None):
        self.path = Path(run_dir) / "train_log.jsonl"
        self.path.unlink(missing_ok=True)
        self.log_every, self.total_steps = log_every, total_steps
        self.tracker = tracker  # a core.tracker.Tracker (or None): every record also goes there

    def due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps - 1

    def write(self, step: int, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.tracker is not None:
            self.tracker.log(record, step)


def train_stats(losses: list[float], tokens: int, seen: int, wall: float, steps_per_epoch: int) -> dict:
    """A run's training statistics from its per-step losses; a non-finite last loss means it diverged."""
    diverged = not math.isfinite(losses[-1])  # a diverged run is a result (its metrics are NaN/inf), not an error
    return {
        "steps": len(losses),
        "train_tokens": tokens,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "train_loss_last_epoch": float(np.mean(losses[-steps_per_epoch:])),
        "diverged": diverged,
        "train_seconds": wall,
        "train_input_tokens": seen,
        "train_tokens_per_s": seen / max(wall, 1e-9),
        "lr_decayed": not diverged,
    }  # the schedule's factor at the last step is exactly final_lr / lr


@dataclass
class Trained:
    stats: dict  # train_stats
    weights: dict[str, torch.Tensor]  # the model's final weights (those after its first non-finite step)


class FinetuneLog(Hook):
    """The fine-tuning loop's hook: per model, its losses and tokens (``train_stats``) and its
    train_log.jsonl (``TrainLog``); a bar on a terminal, else ~10 plain lines with ETA and tokens/s."""

    def __init__(self, logs: Sequence[TrainLog], total_steps: int, desc: str, progress: bool):
        K = len(logs)
        self.logs, self.total_steps, self.desc = logs, total_steps, desc
        self.losses: list[list[float]] = [[] for _ in range(K)]
        self.tokens, self.seen = [0] * K, [0] * K  # cumulative target and input tokens, per model while it runs
        self.bar = tqdm(total=total_steps, desc=desc, disable=not (progress and sys.stderr.isatty()))
        # Without a terminal (a batch job's log): ~10 plain lines per run with elapsed time, ETA and tokens/s.
        self.plain_every = max(1, total_steps // 10) if progress and self.bar.disable else 0
        self.eta = Eta(total_steps)
        self.t0 = time.time()

    def after_step(self, ev: StepEvent) -> None:
        step, stats = ev.step, ev.stats
        for k in ev.running:
            s = stats[k]
            self.losses[k].append(s.loss)
            self.tokens[k] += s.tokens
            self.seen[k] += ev.input_tokens
            if self.logs[k].due(step):
                self.logs[k].write(
                    step, {"loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "tokens": self.tokens[k]}
                )
        self.bar.update(1)
        if self.logs[0].due(step):
            self.bar.set_postfix(loss=" ".join(f"{s.loss:.3f}" for s in stats))
        if self.plain_every and ((step + 1) % self.plain_every == 0 or step + 1 == self.total_steps):
            rate = sum(self.seen) / max(self.eta.elapsed(), 1e-9)
            loss = " ".join(f"{s.loss:.4f}" for s in stats)
            print(
                f"{self.desc}: step {step + 1:,}/{self.total_steps:,} | loss {loss} | {rate:,.0f} tokens/s | {self.eta.text(step + 1)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()

    def stats(self, k: int, steps_per_epoch: int) -> dict:
        """Model k's ``train_stats``; its training time is the loop's wall time / n_models, its share."""
        share = (time.time() - self.t0) / len(self.logs)
        return train_stats(self.losses[k], self.tokens[k], self.seen[k], share, steps_per_epoch)


def train_loop(
    stepper: Stepper,
    batches: StepBatches,
    factors: Sequence[Callable[[int], float]],
    logs: Sequence[TrainLog],
    desc: str = "train",
    progress: bool = True,
) -> list[Trained]:
    """Train ``stepper``'s models (``factors[k]`` and ``logs[k]`` for model k) on ``batches`` (see
    module doc): the one ``train.trainer.Trainer``, divergence recorded, with a ``FinetuneLog``."""
    K = stepper.n_models
    if len(factors) != K or len(logs) != K:
        raise ValueError(f"train_loop: {len(factors)} schedules and {len(logs)} logs for {K} models")
    log = FinetuneLog(logs, batches.total_steps, desc, progress)
    weights = Trainer(stepper, batches.at, factors, batches.total_steps, [log], "record", desc).run()
    return [Trained(log.stats(k, batches.steps_per_epoch), weights[k]) for k in range(K)]
