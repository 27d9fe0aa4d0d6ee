"""The one training-step core, shared by pre-training and fine-tuning.

A step takes the micro-batches of this rank's share of the global batch, accumulates gradients
(DDP all-reduce only on the last micro-step), normalizes by the *global* number of target tokens
(so 1 process x 8 micro-batches == 2 processes x 4, and masked fine-tuning batches weigh every
completion token equally), clips, sets each param group's LR to ``initial_lr x lr_factor``
(composing with muP's per-group scaling), and steps the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

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
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def use_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Switch a torch Adam/AdamW (``mup.MuAdamW`` builds one) to the fused kernel, in place.

    One kernel launch per step instead of several per parameter list; the update is the same
    algorithm. Returns False (and changes nothing) for other optimizers or devices without it.
    """
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = {p.device.type for g in optimizer.param_groups for p in g["params"]}
    if not isinstance(optimizer, torch.optim.Adam) or not devices <= set(_get_fused_kernels_supported_devices()):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    return True


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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

    ``model`` may be wrapped in DistributedDataParallel; ``loss_fn(model, x, y) -> (sum, count)``
    defaults to the LM loss. ``extra_loss()`` (e.g. L2 toward pre-trained weights) is added once
    per step, unnormalized, on the last micro-batch.
    """
    loss_fn = loss_fn or lm_loss
    device = micro_batches[0][0].device
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    distributed = _is_distributed()

    # The global count of target tokens normalizes every micro-batch's summed loss.
    local_tokens = torch.stack([(y >= 0).sum() for _, y in micro_batches]).sum().to(torch.float64)
    global_tokens = local_tokens.clone()
    if distributed:
        dist.all_reduce(global_tokens)
    # DDP averages gradients over ranks; multiply back so the result is a global-token mean.
    world = dist.get_world_size() if distributed else 1
    denom = (global_tokens / world).clamp(min=1.0).to(torch.float32)

    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    n = len(micro_batches)
    for i, (x, y) in enumerate(micro_batches):
        last = i == n - 1
        sync = nullcontext() if (last or not ddp) else model.no_sync()
        with sync:
            with autocast_for(device, precision):
                loss_sum, _ = loss_fn(model, x, y)
            loss = loss_sum / denom
            if last and extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
        loss_total += loss_sum.detach().to(torch.float64)

    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None and grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    lr = set_lr_factor(optimizer, lr_factor)
    optimizer.step()

    if distributed:
        dist.all_reduce(loss_total)
    # One wait for the device instead of one per number.
    loss_sum, grad_norm, tokens = torch.stack([loss_total, grad_norm.to(torch.float64), global_tokens]).tolist()
    tokens = int(tokens)
    return StepStats(loss=loss_sum / max(tokens, 1), grad_norm=grad_norm, tokens=tokens, lr=lr)
