"""A whole fine-tuning LR sweep in one process: K copies of one model trained at once, one LR each.

A fine-tuning step of a small model (OLMo-15M, 8 examples) leaves a GPU mostly idle; K such
steps run in lockstep as one batched computation fill it. With ``torch.func`` the K models'
parameters are stacked along a new leading dimension (``stack_module_state``) and the forward is
``vmap`` of ``functional_call`` over it, so every Linear becomes one batched matmul over the K
models. The K losses are summed for a single ``backward``: the models share no parameters, so
model k's gradient is the gradient of its own loss.

The optimizer of model k is the fine-tuning optimizer itself (``finetune.build_optimizer``:
``mup.MuAdamW``, so hidden matrices get lr / width_mult and weight_decay x width_mult, no decay
on the embedding) over *views* of slice k of the stacked tensors: its in-place update writes into
the stack. So the update is torch AdamW's by construction, and on CUDA it runs as the fused
kernel (``train.step.use_fused_adam``): a hand-written per-model-LR AdamW over the stacked tensors
made ~25 passes over memory per step against the fused kernel's ~7 (3.3x slower on CPU).

Equal to K separate runs of ``train_step`` (tests/test_stacked.py):

- every model sees the same micro-batches in the same order (a sweep's LRs share the data seed);
- each micro-batch's summed loss is divided by the step's number of target tokens and
  backpropagated on its own (gradient accumulation, as ``train_step``);
- each model is clipped by its own global gradient norm (``clip_grad_norm_``: coefficient
  clip / (norm + 1e-6), capped at 1);
- model k's LR is lrs[k] x the schedule factor (``set_lr_factor``, composing with muP's scaling).

A diverged model (NaN loss) stays NaN on its own; the others are unaffected.

    states, losses = train_stacked(model, spec, lrs, batches, lr_factors, ...)
    run = StackedRun(model, spec, lrs, ...); loss, grad_norm = run.step(micro_batches, lr_factor); run.state_dict(k)
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call, stack_module_state

from ..core.likelihood import autocast_for, lm_loss
from ..core.step import set_lr_factor, use_fused_adam
from .finetune import FinetuneConfig, build_optimizer

Batch = tuple[torch.Tensor, torch.Tensor]


class _Named:
    """``named_parameters()`` over a dict: what ``finetune.build_optimizer`` reads from a model."""

    def __init__(self, params: dict[str, torch.nn.Parameter]):
        self.params = params

    def named_parameters(self):
        return iter(self.params.items())


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
    attached from ``spec`` if missing). ``betas``, ``eps``, ``weight_decay``, ``grad_clip`` and
    ``mup`` (False: plain AdamW) are those of ``FinetuneConfig``; ``fused`` (default: on CUDA)
    uses torch's fused AdamW kernel. ``l2_to_pretrained`` adds lam x ||theta_k - theta_0||^2 to
    each model's loss on the last micro-batch, unnormalized, as ``finetune.l2_to`` does.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec,
        lrs: Sequence[float],
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_clip: float | None = 1.0,
        precision: str = "auto",
        loss_fn: Callable | None = None,
        mup: bool = True,
        fused: bool | None = None,
        l2_to_pretrained: float = 0.0,
    ):
        if not lrs or any(not (lr > 0) for lr in lrs):
            raise ValueError(f"lrs: need at least one positive learning rate, got {list(lrs)}")
        named = dict(model.named_parameters())
        if mup and any(not hasattr(p, "infshape") for p in named.values()):
            from ..core.model import attach_shapes

            attach_shapes(model, spec)
        self.K = len(lrs)
        self.grad_clip, self.precision = grad_clip, precision
        self.loss_fn = loss_fn or lm_loss
        self.l2 = float(l2_to_pretrained)
        self.device = next(iter(named.values())).device
        fused = self.device.type == "cuda" if fused is None else fused

        params, _ = stack_module_state([model] * self.K)  # (K, *shape) leaf copies that require grad
        self.params = {n: params[n] for n in named}
        self.buffers = dict(model.named_buffers())  # shared, not trained
        self.anchor = {n: p.detach().clone() for n, p in named.items()} if self.l2 > 0 else None

        # Model k's parameters: leaves sharing storage with slice k of the stack.
        self.views = []
        for k in range(self.K):
            views = {}
            for n, p in self.params.items():
                views[n] = torch.nn.Parameter(p.detach()[k])
                if hasattr(named[n], "infshape"):
                    views[n].infshape = named[n].infshape
            self.views.append(views)
        self.optimizers = []
        for lr, views in zip(lrs, self.views):
            cfg = FinetuneConfig(
                lr=float(lr), betas=tuple(betas), eps=eps, weight_decay=weight_decay, mup_optimizer=mup
            )
            opt = build_optimizer(_Named(views), cfg)
            if fused:
                use_fused_adam(opt)
            self.optimizers.append(opt)

        self.template = copy.deepcopy(model).to("meta")  # the architecture; parameters come from the stack
        self.template.train()
        self._forward = torch.vmap(self._loss_one, in_dims=(0, None, None))

    def _loss_one(self, tensors: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss_sum, _ = self.loss_fn(_Bound(self.template, {**tensors, **self.buffers}), x, y)
        return loss_sum

    def _l2(self) -> torch.Tensor:
        """(K,) lam x ||theta_k - theta_0||^2."""
        total = 0.0
        for n, p in self.params.items():
            total = total + ((p - self.anchor[n]) ** 2).reshape(self.K, -1).sum(1)
        return self.l2 * total

    def step(
        self, micro_batches: Sequence[Batch], lr_factor: float | Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every model; returns (loss, grad_norm), each a (K,) tensor on the device.

        ``lr_factor``: the schedule's factor, one for all models or one per model. Returns
        without waiting for the device (``completion_loss``'s masking waits once per micro-batch);
        read the tensors when you log.
        """
        factors = [float(lr_factor)] * self.K if isinstance(lr_factor, (int, float)) else [float(f) for f in lr_factor]
        if len(factors) != self.K:
            raise ValueError(f"lr_factor: {len(factors)} factors for {self.K} models")
        batches = [
            (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in micro_batches
        ]
        count = torch.stack([(y >= 0).sum() for _, y in batches]).sum().to(torch.float64).clamp(min=1.0)
        denom = count.to(torch.float32)

        for p in self.params.values():
            p.grad = None
        loss_total = torch.zeros(self.K, dtype=torch.float64, device=self.device)
        for i, (x, y) in enumerate(batches):
            with autocast_for(self.device, self.precision):
                loss_sum = self._forward(self.params, x, y)  # (K,)
            loss = loss_sum / denom
            if self.l2 > 0 and i == len(batches) - 1:
                loss = loss + self._l2()
            loss.sum().backward()
            loss_total += loss_sum.detach().to(torch.float64)

        grad_norm = self._clip()
        for k, (opt, views) in enumerate(zip(self.optimizers, self.views)):
            for n, v in views.items():
                v.grad = self.params[n].grad[k]
            set_lr_factor(opt, factors[k])
            opt.step()
        return loss_total / count, grad_norm

    @torch.no_grad()
    def _clip(self) -> torch.Tensor:
        """Each model's global gradient norm (K,); grads scaled as ``clip_grad_norm_`` does, per model."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(self.K, -1), dim=1) for g in grads])  # (P, K)
        total = torch.linalg.vector_norm(norms, dim=0)
        if self.grad_clip is not None and self.grad_clip > 0:
            coef = torch.clamp(self.grad_clip / (total + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))
        return total

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
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    precision: str = "auto",
    loss_fn: Callable | None = None,
    mup: bool = True,
    fused: bool | None = None,
    l2_to_pretrained: float = 0.0,
    progress: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], list[list[float]]]:
    """Train len(lrs) copies of ``model`` for len(batches) steps; returns (K state dicts, losses[step][k]).

    ``batches[s]`` is step s's list of (input_ids, targets) micro-batches (targets -100 = ignored),
    shared by every model; ``lr_factors[s]`` the schedule factor at step s (or K factors).
    ``loss_fn(model, x, y) -> (sum, count)`` as in ``train_step`` (default the LM loss; fine-tuning
    passes ``overtrain.finetune.finetune.completion_loss``). Losses are per target token, like
    ``StepStats.loss``, read from the device once, at the end.
    """
    if len(lr_factors) != len(batches):
        raise ValueError(f"lr_factors: {len(lr_factors)} factors for {len(batches)} steps")
    run = StackedRun(
        model,
        spec,
        lrs,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        precision=precision,
        loss_fn=loss_fn,
        mup=mup,
        fused=fused,
        l2_to_pretrained=l2_to_pretrained,
    )
    from tqdm.auto import tqdm

    losses = []
    for micro, factor in tqdm(
        list(zip(batches, lr_factors)),
        desc=f"stacked x{run.K}",
        unit="step",
        disable=not (progress and sys.stderr.isatty()),
    ):
        loss, _ = run.step(micro, factor)
        losses.append(loss)
    rows = torch.stack(losses).tolist() if losses else []
    return [run.state_dict(k) for k in range(run.K)], rows


def first_nonfinite(losses: Sequence[Sequence[float]], k: int) -> int | None:
    """The first step at which model k's loss was not finite (a sweep stops that LR there), else None."""
    return next((s for s, row in enumerate(losses) if not math.isfinite(row[k])), None)
