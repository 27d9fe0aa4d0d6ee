"""Data-parallel set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

Without those variables everything degrades to one process and no process group. With them:
nccl on CUDA, gloo on CPU; each rank drives ``cuda:LOCAL_RANK``. Only rank 0 writes files and
prints progress (``is_main``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


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
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, gradient_as_bucket_view=True)
