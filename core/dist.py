"""Data-parallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

Without those variables everything degrades to one process and no process group. With them:
nccl on CUDA, gloo on CPU; each rank drives ``cuda:LOCAL_RANK``. Only rank 0 writes files and
prints progress (``is_main``).

``parallel: ddp | fsdp`` (``prepare``): DDP replicates the model and optimizer on every rank;
FSDP2 (``shard``: ``fully_shard`` per block, then the root) keeps 1/world of every parameter,
gradient and optimizer state per rank, gathering a block's parameters for its forward and
backward and reduce-scattering its gradients (fp32) after every micro-batch (not only the last,
as DDP all-reduces: FSDP's no_sync would hold every parameter's unsharded fp32 gradient on every
rank until then). Both average gradients over ranks, so the step is the same (``core.step``), up
to the order of float additions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank/world from torchrun's variables (read before any process group exists)."""
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def resolve_device(name: str = "auto", info: DistInfo | None = None) -> torch.device:
    """The one device rule: ``auto`` -> cuda when available else cpu; cuda on a machine without it
    is an error; under torchrun (``info`` distributed), cuda means ``cuda:LOCAL_RANK``."""
    info = info or DistInfo()
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: CUDA is not available on this machine")
        if info.distributed or device.index is None:
            device = torch.device("cuda", info.local_rank if info.distributed else (device.index or 0))
        torch.cuda.set_device(device)
    return device


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for one process)."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)


def any_rank(info: DistInfo, device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank (one MAX all-reduce under torchrun, so every rank takes the same
    decision at the same step, e.g. a stop one rank's signal asked for); alone, the flags as given."""
    if not info.distributed:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(bool(f)) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DDP with default bucketing; gradients as bucket views (no extra gradient copy)."""
    if not info.distributed:
        return model

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, gradient_as_bucket_view=True)


# ------------------------------------------------------------------------------------- FSDP2


@dataclass
class FSDPConfig:
    """Settings of ``parallel: fsdp`` (torch's FSDP2, ``torch.distributed.fsdp.fully_shard``)."""

    # Free each block's gathered parameters after its forward and gather them again in the backward:
    # parameters take 1/world of their memory between uses, for one more all-gather per block.
    reshard_after_forward: bool = True
    # Gathered copies of the fp32 shards are in param_dtype; gradients are reduced in fp32 and the
    # optimizer steps the fp32 shards. auto: bf16 where the run computes in bf16 anyway (precision
    # auto on CUDA, or bf16), else fp32 (CPU: the tests compare float sums, not precisions).
    param_dtype: Literal["auto", "bf16", "fp32"] = "auto"  # the dtype blocks compute in (auto: the run's precision)


def compute_dtype(fsdp: FSDPConfig, device: torch.device, precision: str) -> torch.dtype:
    """The dtype FSDP gathers parameters in (``FSDPConfig.param_dtype``; auto follows ``precision``)."""
    choice = fsdp.param_dtype
    if choice == "auto":
        bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        choice = "bf16" if bf16 else "fp32"
    return torch.bfloat16 if choice == "bf16" else torch.float32


def shard(model: torch.nn.Module, blocks: Sequence[torch.nn.Module], fsdp: FSDPConfig, dtype: torch.dtype):
    """``fully_shard`` each of ``blocks`` (one all-gather per block), then the root (embeddings,
    final norm, readout), in place; returns ``model`` (now an ``FSDPModule``).

    Each parameter becomes a DTensor sharded on dim 0 over the ranks, a new ``nn.Parameter``: mup's
    ``infshape`` (an attribute of the old one) is copied over by name, so the optimizer built after
    sharding (``core.optim``) groups and scales the LRs as for the unsharded model.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # heavy: ~0.6 s, sharded runs only

    shapes = {n: p.infshape for n, p in model.named_parameters() if hasattr(p, "infshape")}
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, reshard_after_forward=fsdp.reshard_after_forward, mp_policy=mp)
    fully_shard(model, reshard_after_forward=fsdp.reshard_after_forward, mp_policy=mp)
    for n, p in model.named_parameters():
        if n in shapes:
            p.infshape = shapes[n]
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule  # heavy: ~0.6 s, sharded runs only

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def reshard(model: torch.nn.Module) -> None:
    """Free every FSDP unit's gathered parameters (a no-op for a model that is not sharded). A forward
    without a backward (an evaluation under no_grad) leaves them gathered when ``reshard_after_forward``
    is false, and while they are, the model's parameters are the gathered tensors rather than the
    shards the optimizer steps: a state dict taken then cannot be matched to the optimizer's
    (torch's ``get_optimizer_state_dict``: KeyError), and a unit's whole weights stay in memory."""
    from torch.distributed.fsdp import FSDPModule  # heavy: ~0.6 s, sharded runs only

    for m in getattr(model, "_orig_mod", model).modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_state_dict(model: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0's CPU (None on the other ranks). For a sharded model a
    collective (every rank calls it): the shards are gathered one tensor at a time."""
    if not is_sharded(model):
        return model.state_dict() if info.is_main else None
    from torch.distributed.checkpoint.state_dict import (  # heavy: loads torch.distributed.fsdp
        StateDictOptions,
        get_model_state_dict,
    )

    reshard(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if info.is_main else None


def prepare(
    model: torch.nn.Module,
    info: DistInfo,
    device: torch.device,
    parallel: str = "ddp",
    fsdp: FSDPConfig | None = None,
    blocks: Sequence[torch.nn.Module] = (),
    precision: str = "auto",
) -> torch.nn.Module:
    """What the steps run under torchrun: ``parallel`` ddp (``wrap``: the model replicated) or fsdp
    (``shard``: in place, per block). One process: the model itself either way (FSDP over one rank
    would only copy)."""
    if not info.distributed:
        return model
    if parallel == "fsdp":
        return shard(model, blocks, fsdp or FSDPConfig(), compute_dtype(fsdp or FSDPConfig(), device, precision))
    return wrap(model, info, device)
