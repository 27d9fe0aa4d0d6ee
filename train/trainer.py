"""The one training loop: pre-training, fine-tuning, a stacked LR sweep and SFT all run a ``Trainer``.

A ``Trainer`` is three parts, each given by the stage:

- a ``Stepper``: what one optimizer step does to ``n_models`` models trained in lockstep on the
  same micro-batches, ``step(micro_batches, lr_factors) -> [StepStats per model]`` and
  ``state_dict(k)``. ``SingleRun`` is ``core.step.train_step`` with one model's optimizer, loss
  and extra loss (pre-training: ``lm_loss``, possibly DDP-wrapped and compiled; fine-tuning:
  completion-only loss; SFT: the chat-masked ``sft_loss`` over a DDP-wrapped transformers model);
  ``finetune.stacked.StackedRun`` is K vmapped copies of a model, built from the same step pieces;
- the data and the schedule, as functions of the 0-based step: ``batches(step) -> (micro-batches,
  input tokens)`` and one ``schedules[k](step) -> LR factor`` per model (``core.schedule.Schedule``);
- hooks (``Hook``), called after every step with a ``StepEvent``, in order: the stage's logging,
  evaluation, checkpoints and preemption, tracking, ETA and MFU live there.

``run(start)`` runs steps ``start .. total_steps - 1``::

    micro, n_input = batches(step)
    stats = stepper.step(micro, [schedules[k](step) for k])
    divergence "raise":  a non-finite loss raises ``Diverged`` before any hook sees the step
                         (pre-training: the last checkpoint is kept; SFT: nothing is written)
    every hook's after_step(StepEvent)
    divergence "record": a model with a non-finite loss stops (a diverged run is a result, its
                         metrics NaN/inf): its weights are those after this step (copied if others
                         go on); the loop ends when no model runs

and returns each model's final weights (``Trainer.weights``). The policy is a setting
(``divergence``): "raise" for pre-training and SFT, "record" for fine-tuning and stacked sweeps,
"continue" (every model runs every step, diverged or not) for fixed-batch measurements
(``finetune.stacked.train_stacked``: tests, benchmarks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from ..core.step import StepStats, train_step

Batch = tuple[torch.Tensor, torch.Tensor]
Divergence = Literal["raise", "record", "continue"]


class Diverged(RuntimeError, FloatingPointError):
    """A non-finite training loss under the "raise" divergence policy (a RuntimeError, as
    pre-training raised, and a FloatingPointError, as SFT raised)."""


class Stepper(Protocol):
    """``n_models`` models trained in lockstep: one optimizer step of each on the same micro-batches."""

    n_models: int

    def step(self, micro_batches: Sequence[Batch], lr_factors: Sequence[float]) -> list[StepStats]:
        """One optimizer step; model k's LR is its initial LR x ``lr_factors[k]``."""
        ...

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's weights now (may share storage with the live model)."""
        ...


class SingleRun:
    """One model as a ``Stepper``: ``train_step`` with its optimizer, clip, precision, loss and extra loss.

    ``model`` is what the step runs (compiled, DDP-wrapped: the step all-reduces the token count
    and gradients); ``weights`` the plain module ``state_dict`` reads (default: ``model``)."""

    n_models = 1

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        grad_clip: float | None = 1.0,
        precision: str = "auto",
        loss_fn: Callable | None = None,
        extra_loss: Callable[[], torch.Tensor] | None = None,
        weights: torch.nn.Module | None = None,
    ):
        self.model, self.optimizer = model, optimizer
        self.grad_clip, self.precision = grad_clip, precision
        self.loss_fn, self.extra_loss = loss_fn, extra_loss
        self.weights = model if weights is None else weights

    def step(self, micro_batches: Sequence[Batch], lr_factors: Sequence[float]) -> list[StepStats]:
        (factor,) = lr_factors
        stats = train_step(
            self.model,
            self.optimizer,
            micro_batches,
            factor,
            self.grad_clip,
            self.precision,
            loss_fn=self.loss_fn,
            extra_loss=self.extra_loss,
        )
        return [stats]

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return self.weights.state_dict()


@dataclass
class StepEvent:
    """What a hook sees after optimizer step ``step`` (0-based; ``step + 1`` steps are done)."""

    step: int
    stats: list[StepStats]  # one per model, the stopped ones' included (their values are not used)
    input_tokens: int  # input tokens of the step's batch (what ``batches`` returned)
    seconds: float  # wall time of the step, its batch read included
    running: list[int]  # the models still training at this step (all of them under "raise")


class Hook:
    """Called by ``Trainer.run`` after each step (``after_step``) and once at its end, however it
    ends (``close``). The defaults do nothing."""

    def after_step(self, ev: StepEvent) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """The loop (module doc): ``stepper`` on ``batches`` at ``schedules``, ``hooks`` after each step."""

    def __init__(
        self,
        stepper: Stepper,
        batches: Callable[[int], tuple[Sequence[Batch], int]],
        schedules: Sequence[Callable[[int], float]],
        total_steps: int,
        hooks: Sequence[Hook] = (),
        divergence: Divergence = "raise",
        what: str = "train",
    ):
        if len(schedules) != stepper.n_models:
            raise ValueError(f"Trainer: {len(schedules)} schedules for {stepper.n_models} models")
        if divergence not in ("raise", "record", "continue"):
            raise ValueError(f"Trainer: divergence={divergence!r} (raise | record | continue)")
        self.stepper, self.batches, self.schedules = stepper, batches, list(schedules)
        self.total_steps, self.hooks, self.divergence, self.what = total_steps, list(hooks), divergence, what
        self.stopped: dict[int, dict[str, torch.Tensor]] = {}  # model -> its weights at divergence, if others went on

    def run(self, start: int = 0) -> list[dict[str, torch.Tensor]]:
        """Steps ``start .. total_steps - 1``; returns each model's final weights (``weights``)."""
        running = list(range(self.stepper.n_models))
        try:
            for step in range(start, self.total_steps):
                t0 = time.perf_counter()
                micro, n_input = self.batches(step)
                stats = self.stepper.step(micro, [f(step) for f in self.schedules])
                seconds = time.perf_counter() - t0  # the losses are .item()s: the step is finished on the device
                diverged = [k for k in running if not math.isfinite(stats[k].loss) and self.divergence != "continue"]
                if diverged and self.divergence == "raise":
                    raise Diverged(
                        f"{self.what}: loss is {stats[diverged[0]].loss} at step {step + 1}; stopping "
                        "(the last checkpoint, if any, is kept)"
                    )
                ev = StepEvent(step, stats, n_input, seconds, running)
                for hook in self.hooks:
                    hook.after_step(ev)
                running = [k for k in running if k not in diverged]
                if not running:
                    break
                for k in diverged:  # the others go on stepping the stack: keep this model's weights as they are now
                    self.stopped[k] = {n: t.clone() for n, t in self.stepper.state_dict(k).items()}
        finally:
            for hook in self.hooks:
                hook.close()
        return self.weights()

    def weights(self) -> list[dict[str, torch.Tensor]]:
        """Each model's final weights: those after its first non-finite step, else the stepper's now."""
        return [
            self.stopped[k] if k in self.stopped else self.stepper.state_dict(k) for k in range(self.stepper.n_models)
        ]
