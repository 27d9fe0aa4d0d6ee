"""The one training-step core, shared by pre-training, fine-tuning and stacked fine-tuning sweeps.

A step takes the micro-batches of this rank's share of the global batch and

1. counts the *global* number of target tokens N (``target_tokens``; all-reduced under DDP), so
   1 process x 8 micro-batches == 2 processes x 4, and masked fine-tuning batches weigh every
   completion token equally;
2. backpropagates sum_i loss_sum_i / N (+ an optional extra loss once), micro-batch by
   micro-batch (``accumulate_gradients``; under DDP all-reduced only on the last, under FSDP
   reduce-scattered after each);
3. clips to ``grad_clip`` by the global gradient norm (``clip_gradients``);
4. sets each param group's LR to ``initial_lr x lr_factor`` (``set_lr_factor``, composing with
   muP's per-group scaling) and steps the optimizer;
5. reads loss (mean per target token), grad norm and tokens in one wait (``read_stats``).

``train_step`` is these steps for one model (maybe DDP-wrapped); ``finetune.stacked.StackedRun``
composes the same functions for K models trained as one vmapped computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from .likelihood import autocast_for, lm_loss


@dataclass
class StepStats:
    loss: float  # mean loss per target token over the global batch
    grad_norm: float  # before clipping
    tokens: int  # target tokens in the global batch
    lr: float  # the LR of the first param group after scheduling


def remember_initial_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Record each group's LR (muP-scaled by MuAdamW) so schedules scale it, not overwrite it."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's LR to its ``initial_lr`` x ``factor``; returns the first group's."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def use_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Switch a torch Adam/AdamW (``mup.MuAdamW`` builds one) to the fused kernel, in place.

    One kernel launch per step instead of several per parameter list; the update is the same
    algorithm. Returns False (and changes nothing) for other optimizers or devices without it.
    """
    devices = {p.device.type for g in optimizer.param_groups for p in g["params"]}
    if not isinstance(optimizer, torch.optim.Adam) or not devices <= set(_get_fused_kernels_supported_devices()):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    return True


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def target_tokens(micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(target tokens of the global batch, float64; the float32 denominator of each micro-batch's summed loss).

    Under DDP the count is all-reduced over ranks, and the denominator is count / world: DDP
    averages gradients over ranks, so dividing by count / world makes the gradient a mean over
    every target token of the global batch. Without DDP the denominator is the count (>= 1).
    """
    local_tokens = torch.stack([(y >= 0).sum() for _, y in micro_batches]).sum().to(torch.float64)
    global_tokens = local_tokens.clone()
    distributed = _is_distributed()
    if distributed:
        dist.all_reduce(global_tokens)
    world = dist.get_world_size() if distributed else 1
    return global_tokens, (global_tokens / world).clamp(min=1.0).to(torch.float32)


def accumulate_gradients(
    loss_sums: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    denom: torch.Tensor,
    precision: str = "auto",
    extra_loss: Callable[[], torch.Tensor] | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Backpropagate sum_i loss_sums(x_i, y_i) / denom, plus ``extra_loss()`` once (on the last micro-batch).

    ``loss_sums(x, y)`` is the summed loss of one micro-batch (run under autocast): a scalar for
    one model, or (K,) for K stacked models, whose sum is backpropagated at once (the models share
    no parameters, so each gets the gradient of its own loss). ``no_sync`` (DDP's
    ``model.no_sync``) wraps every micro-batch but the last, so gradients are all-reduced once.
    Gradients add to ``.grad`` (clear them first). Returns the summed loss, detached, float64.
    """
    device = micro_batches[0][0].device
    loss_total = 0.0
    n = len(micro_batches)
    for i, (x, y) in enumerate(micro_batches):
        last = i == n - 1
        with nullcontext() if (last or no_sync is None) else no_sync():
            with autocast_for(device, precision):
                loss_sum = loss_sums(x, y)
            loss = loss_sum / denom
            if last and extra_loss is not None:
                loss = loss + extra_loss()
            (loss.sum() if loss.ndim else loss).backward()
        loss_total = loss_total + loss_sum.detach().to(torch.float64)
    return loss_total


@torch.no_grad()
def clip_gradients(
    params: Iterable[torch.nn.Parameter], grad_clip: float | None, n_models: int | None = None
) -> torch.Tensor:
    """The global gradient norm before clipping; with ``grad_clip`` > 0 the gradients are scaled in place by
    min(1, grad_clip / (norm + 1e-6)) (``torch.nn.utils.clip_grad_norm_``).

    ``n_models=K``: each parameter holds K models stacked along dim 0; returns the K norms and
    clips each model by its own norm, the same formula per model.
    """
    params = [p for p in params if p.grad is not None]
    if n_models is None:
        if grad_clip is not None and grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if any(hasattr(p.grad, "full_tensor") for p in params):  # FSDP's DTensor shards: torch's norm of them
            return torch.nn.utils.get_total_norm([p.grad for p in params])
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    grads = [p.grad for p in params]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(n_models, -1), dim=1) for g in grads])  # (P, K)
    total = torch.linalg.vector_norm(norms, dim=0)
    if grad_clip is not None and grad_clip > 0:
        coef = torch.clamp(grad_clip / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))
    return total


def read_stats(
    loss_total: torch.Tensor, grad_norm: torch.Tensor, tokens: torch.Tensor, lrs: Sequence[float]
) -> list[StepStats]:
    """One ``StepStats`` per model from the step's tensors (scalars, or (K,) for K models), in one wait for the device."""
    values = torch.cat([loss_total.reshape(-1), grad_norm.to(torch.float64).reshape(-1), tokens.reshape(1)]).tolist()
    k = len(lrs)
    tokens = int(values[-1])
    return [
        StepStats(loss=loss_sum / max(tokens, 1), grad_norm=norm, tokens=tokens, lr=lr)
        for loss_sum, norm, lr in zip(values[:k], values[k : 2 * k], lrs)
    ]


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    lr_factor: float,
    grad_clip: float | None = 1.0,
    precision: str = "auto",
    loss_fn: Callable | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> StepStats:
    """One optimizer step over ``micro_batches`` of (input_ids, targets) with -100 = ignored.

    ``model`` may be wrapped in DistributedDataParallel or sharded by FSDP (``core.dist.shard``:
    gradients reduce-scattered after every micro-batch, so they stay sharded: FSDP's ``no_sync``
    would keep every parameter's unsharded fp32 gradient until the last, 4 bytes per parameter on
    every rank; the clip norm over all shards); ``loss_fn(model, x, y) -> (sum, count)``
    defaults to the LM loss. ``extra_loss()`` (e.g. L2 toward pre-trained weights) is added once
    per step, unnormalized, on the last micro-batch.
    """
    loss_fn = loss_fn or lm_loss
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    tokens, denom = target_tokens(micro_batches)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total = accumulate_gradients(
        lambda x, y: loss_fn(model, x, y)[0],
        micro_batches,
        denom,
        precision,
        extra_loss,
        no_sync=model.no_sync if ddp else None,
    )
    grad_norm = clip_gradients(model.parameters(), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: the norm of sharded (DTensor) gradients, reduced over ranks
        grad_norm = grad_norm.full_tensor()
    lr = set_lr_factor(optimizer, lr_factor)
    optimizer.step()

    if _is_distributed():
        dist.all_reduce(loss_total)
    return read_stats(loss_total, grad_norm, tokens, [lr])[0]
