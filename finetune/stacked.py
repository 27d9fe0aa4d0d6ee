"""A whole fine-tuning LR sweep in one process: K copies of one model trained at once, one LR each.

A fine-tuning step of a small model (OLMo-15M, 8 examples) leaves a GPU mostly idle; K such
steps run in lockstep as one batched computation fill it. With ``torch.func`` the K models'
parameters are stacked along a new leading dimension (``stack_module_state``) and the forward is
``vmap`` of ``functional_call`` over it, so every Linear becomes one batched matmul over the K
models. The K losses are summed for a single ``backward``: the models share no parameters, so
model k's gradient is the gradient of its own loss.

The optimizer of model k is the fine-tuning optimizer itself (``core.optim.build_optimizer``:
``mup.MuAdamW``, so hidden matrices get lr / width_mult and weight_decay x width_mult, no decay
on the embedding) over *views* of slice k of the stacked tensors: its in-place update writes into
the stack. So the update is torch AdamW's by construction, and on CUDA it runs as the fused
kernel (``core.step.use_fused_adam``): a hand-written per-model-LR AdamW over the stacked tensors
made ~25 passes over memory per step against the fused kernel's ~7 (3.3x slower on CPU).

A step is ``core.step.train_step``'s pieces over the stack, so it equals K separate runs of
``train_step`` (tests/test_stacked.py):

- every model sees the same micro-batches in the same order (a sweep's LRs share the data seed);
- each micro-batch's summed loss is divided by the step's number of target tokens and
  backpropagated on its own (``target_tokens``, ``accumulate_gradients``);
- each model is clipped by its own global gradient norm (``clip_gradients(..., n_models=K)``:
  coefficient clip / (norm + 1e-6), capped at 1, as ``clip_grad_norm_``);
- model k's LR is lrs[k] x the schedule factor (``set_lr_factor``, composing with muP's scaling).

A diverged model (NaN loss) stays NaN on its own; the others are unaffected. ``StackedRun`` is a
``train.trainer.Stepper`` (as ``SingleRun`` is for one model), so the sweep trains it with
the one training loop (``train.trainer.Trainer``, through ``finetune.training.train_loop``). One
process: the token count is not meant to be all-reduced (no DDP).

    run = StackedRun(model, spec, lrs, StepSettings(...)); stats = run.step(micro_batches, lr_factors); run.state_dict(k)
    states, losses = train_stacked(model, spec, lrs, batches, lr_factors, ...)  # fixed batches (tests, benchmarks)

Both take the step settings (``StepSettings``) as one object, or as keywords naming its fields
(``weight_decay=0.1``: overrides of the given or default settings).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch.func import functional_call, stack_module_state
from tqdm.auto import tqdm

from ..core.likelihood import lm_loss
from ..core.model import attach_shapes
from ..core.optim import build_optimizer
from ..core.step import (
    StepStats,
    accumulate_gradients,
    clip_gradients,
    read_stats,
    set_lr_factor,
    target_tokens,
    use_fused_adam,
)
from ..train.trainer import Hook, StepEvent, Trainer

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StepSettings:
    """How every model of the stack steps (all but its LR): the optimizer, clip, precision and loss of ``FinetuneConfig``."""

    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decays
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.0  # decoupled AdamW decay (muP: x width_mult on hidden matrices)
    grad_clip: float | None = 1.0  # each model's global gradient-norm clip (None/0 = none)
    precision: str = "auto"  # auto | bf16 | fp32 (``core.step.train_step``)
    loss_fn: Callable | None = None  # loss_fn(model, x, y) -> (sum, count); None = the LM loss
    mup: bool = True  # MuAdamW (False: plain AdamW)
    fused: bool | None = None  # torch's fused AdamW kernel; None = on CUDA
    # lam: adds lam x ||theta_k - theta_0||^2 to each model's loss on the last micro-batch,
    # unnormalized, as ``finetune.l2_to`` does (0 = off).
    l2_to_pretrained: float = 0.0


def _settings(settings: StepSettings | None, overrides: dict) -> StepSettings:
    """``settings`` (default ``StepSettings()``) with keyword overrides; an unknown keyword is a TypeError naming it."""
    return replace(settings or StepSettings(), **overrides)


class _Bound:
    """One model of the stack as something ``loss_fn(model, x, y)`` can call.

    ``module`` is the (meta-device) template whose parameters are swapped for this model's
    (vmapped) slices; hooks such as ``overtrain.core.likelihood.readout_at`` find the template's
    modules through ``.module``, so the fine-tuning ``completion_loss`` works unchanged.
    """

    def __init__(self, module: torch.nn.Module, tensors: dict[str, torch.Tensor]):
        self.module = module
        self.tensors = tensors

    def __call__(self, *args):
        return functional_call(self.module, self.tensors, args)


class StackedRun:
    """K models (the same starting weights) under K LRs, stepped together.

    ``model`` is the starting point (left untouched; for muP its parameters need ``infshape``,
    attached from ``spec`` if missing). ``settings``: ``StepSettings``, or keywords naming its fields.
    """

    def __init__(
        self, model: torch.nn.Module, spec, lrs: Sequence[float], settings: StepSettings | None = None, **overrides
    ):
        if not lrs or any(not (lr > 0) for lr in lrs):
            raise ValueError(f"lrs: need at least one positive learning rate, got {list(lrs)}")
        self.settings = st = _settings(settings, overrides)
        named = dict(model.named_parameters())
        if st.mup and any(not hasattr(p, "infshape") for p in named.values()):
            attach_shapes(model, spec)
        self.n_models = K = len(lrs)
        self.grad_clip, self.precision = st.grad_clip, st.precision
        self.loss_fn = st.loss_fn or lm_loss
        self.l2 = float(st.l2_to_pretrained)
        self.device = next(iter(named.values())).device
        fused = self.device.type == "cuda" if st.fused is None else st.fused

        params, _ = stack_module_state([model] * K)  # (K, *shape) leaf copies that require grad
        self.params = {n: params[n] for n in named}
        self.buffers = dict(model.named_buffers())  # shared, not trained
        self.anchor = {n: p.detach().clone() for n, p in named.items()} if self.l2 > 0 else None

        # Model k's parameters: leaves sharing storage with slice k of the stack.
        self.views = []
        for k in range(K):
            views = {}
            for n, p in self.params.items():
                views[n] = torch.nn.Parameter(p.detach()[k])
                if hasattr(named[n], "infshape"):
                    views[n].infshape = named[n].infshape
            self.views.append(views)
        self.optimizers = []
        for lr, views in zip(lrs, self.views):
            opt = build_optimizer(views.items(), float(lr), tuple(st.betas), st.eps, st.weight_decay, st.mup)
            if fused:
                use_fused_adam(opt)
            self.optimizers.append(opt)

        self.template = copy.deepcopy(model).to("meta")  # the architecture; parameters come from the stack
        self.template.train()
        self._forward = torch.vmap(self._loss_one, in_dims=(0, None, None))

    def _loss_one(self, tensors: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss_sum, _ = self.loss_fn(_Bound(self.template, {**tensors, **self.buffers}), x, y)
        return loss_sum

    def _loss_sums(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(K,) summed losses of one micro-batch, one per model."""
        return self._forward(self.params, x, y)

    def _l2(self) -> torch.Tensor:
        """(K,) lam x ||theta_k - theta_0||^2."""
        total = 0.0
        for n, p in self.params.items():
            total = total + ((p - self.anchor[n]) ** 2).reshape(self.n_models, -1).sum(1)
        return self.l2 * total

    def step(self, micro_batches: Sequence[Batch], lr_factors: float | Sequence[float]) -> list[StepStats]:
        """One optimizer step of every model (``train_step``'s pieces over the stack); one ``StepStats`` per model.

        ``lr_factors``: the schedule's factor, one for all models or one per model.
        """
        K = self.n_models
        factors = [float(lr_factors)] * K if isinstance(lr_factors, (int, float)) else [float(f) for f in lr_factors]
        if len(factors) != K:
            raise ValueError(f"lr_factor: {len(factors)} factors for {K} models")
        batches = [
            (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in micro_batches
        ]
        tokens, denom = target_tokens(batches)
        for p in self.params.values():
            p.grad = None
        loss_total = accumulate_gradients(
            self._loss_sums, batches, denom, self.precision, self._l2 if self.l2 > 0 else None
        )
        grad_norm = clip_gradients(self.params.values(), self.grad_clip, n_models=K)
        lrs = []
        for k, (opt, views) in enumerate(zip(self.optimizers, self.views)):
            for n, v in views.items():
                v.grad = self.params[n].grad[k]
            lrs.append(set_lr_factor(opt, factors[k]))
            opt.step()
        return read_stats(loss_total, grad_norm, tokens, lrs)

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's weights (views into the stack), loadable with ``model.load_state_dict``."""
        out = {n: p.detach()[k] for n, p in self.params.items()}
        out.update(self.buffers)
        return out


def train_stacked(
    model: torch.nn.Module,
    spec,
    lrs: Sequence[float],
    batches: Sequence[Sequence[Batch]],
    lr_factors: Sequence[float | Sequence[float]],
    settings: StepSettings | None = None,
    progress: bool = False,
    **overrides,
) -> tuple[list[dict[str, torch.Tensor]], list[list[float]]]:
    """Train len(lrs) copies of ``model`` for len(batches) steps; returns (K state dicts, losses[step][k]).

    ``batches[s]`` is step s's list of (input_ids, targets) micro-batches (targets -100 = ignored),
    shared by every model; ``lr_factors[s]`` the schedule factor at step s (or K factors).
    ``settings`` (or keywords naming its fields) as ``StackedRun``'s; its ``loss_fn(model, x, y) ->
    (sum, count)`` is as in ``train_step`` (default the LM loss; fine-tuning passes
    ``overtrain.finetune.finetune.completion_loss``). Losses are per target token
    (``StepStats.loss``). The one loop (``train.trainer.Trainer``) with divergence "continue": every
    model runs every step, diverged or not (the fine-tuning loop, ``finetune.training.train_loop``,
    "record", stops a model at its first non-finite loss instead).
    """
    if len(lr_factors) != len(batches):
        raise ValueError(f"lr_factors: {len(lr_factors)} factors for {len(batches)} steps")
    run = StackedRun(model, spec, lrs, _settings(settings, overrides))
    K = run.n_models

    def schedule(k: int) -> Callable[[int], float]:
        return lambda s: lr_factors[s] if isinstance(lr_factors[s], (int, float)) else lr_factors[s][k]

    losses = StackedLosses(len(batches), f"stacked x{K}", progress)
    loop = Trainer(run, lambda s: (batches[s], 0), [schedule(k) for k in range(K)], len(batches), [losses], "continue")
    return loop.run(), losses.losses


class StackedLosses(Hook):
    """``train_stacked``'s hook: every model's loss at every step; a bar on a terminal when ``progress``."""

    def __init__(self, total: int, desc: str, progress: bool):
        self.losses: list[list[float]] = []
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not (progress and sys.stderr.isatty()))

    def after_step(self, ev: StepEvent) -> None:
        self.losses.append([s.loss for s in ev.stats])
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def first_nonfinite(losses: Sequence[Sequence[float]], k: int) -> int | None:
    """The first step at which model k's loss (``train_stacked``'s ``losses``) was not finite, else None."""
    return next((s for s, row in enumerate(losses) if not math.isfinite(row[k])), None)
