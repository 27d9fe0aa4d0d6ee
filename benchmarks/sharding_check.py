"""The memory plan and FSDP's cost, measured on one device (issue 24): ``gpu_check.py``'s ``sharding`` step.

- ``memory_row``: a few pre-training steps as ``overtrain pretrain`` runs them on one process (the
  model, the pre-training MuAdamW, fused on CUDA, ``core.step.train_step`` under bf16 autocast on
  CUDA and fp32 on CPU; OLMo's whole-layer activation checkpointing when asked) and the peak of the
  memory allocated over them, counted from before the model is built: ``torch.cuda.max_memory_allocated``
  on CUDA, the CPU allocator's peak (the profiler's allocation events, as tests/test_memory.py) on
  CPU. Beside it ``core.memory.estimate`` of the same job; ``ratio`` = measured / estimated. The plan
  holds (``within``) when |ratio - 1| <= 1 - ``core.memory.USABLE``: its check asks an estimate to fit
  in USABLE of a GPU and leaves the rest to the CUDA context, kernels' workspaces and fragmentation,
  which ``max_memory_allocated`` does not count; an estimate further off refuses jobs that fit or
  accepts jobs that will not.
- ``fsdp_vs_ddp``: in a process group of this process alone (nccl on CUDA, gloo on CPU), one model
  trained under DDP and one under FSDP2 over the one rank (``core.dist.shard``: per-block all-gathers
  and reduce-scatters of one shard, in the compute dtype ``fsdp.param_dtype`` auto gives), the modes
  alternating ``repeats`` times (``fsdp_overhead.train_tokens_per_s``, the benchmark's own worker);
  tokens/s medians and fsdp / ddp. Target (issue 24): FSDP over one rank costs < 5% (>= 0.95).

Both are small (tens of seconds on a GPU); ``gpu_check`` runs them after its target rows, each only
if its estimate fits the time left. Imported by ``gpu_check`` (which puts this working tree's
``overtrain`` and ``benchmarks/`` on the path first).
"""

from __future__ import annotations

import datetime
import socket
import statistics
import time

import torch
import torch.distributed as tdist
from fsdp_overhead import train_tokens_per_s
from olmo.config import ActivationCheckpointingStrategy
from overtrain.core.memory import GB, USABLE, Setup, estimate, measured_peak_bytes, olmo_shape
from overtrain.core.model import build_model
from overtrain.core.optim import optimizer_for
from overtrain.core.step import train_step, use_fused_adam
from overtrain.train.pretrain_plan import OptimConfig

WITHIN_MIN = 0.95  # fsdp / ddp tokens/s over one rank: FSDP's cost < 5% (issue 24)


def memory_row(spec, micro_batch: int, seq_len: int, device: torch.device, checkpointing: bool = False, steps: int = 2):
    """One row: the measured peak of ``steps`` steps of one micro-batch beside the plan's estimate (module doc)."""
    cuda = device.type == "cuda"
    precision = "bf16" if cuda else "fp32"
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, spec.vocab_size, (micro_batch, seq_len + 1), generator=gen).to(device)
    batch = [(x[:, :-1], x[:, 1:])]
    losses = []

    def run():
        model = build_model(spec, device=device, seed=0)
        if checkpointing:
            model.set_activation_checkpointing(ActivationCheckpointingStrategy.whole_layer)
        opt = optimizer_for(model, OptimConfig())
        if cuda:
            use_fused_adam(opt)
        for _ in range(steps):
            losses.append(train_step(model, opt, batch, 1.0, precision=precision).loss)

    t = time.monotonic()
    measured = measured_peak_bytes(run, device)
    est = estimate(olmo_shape(spec), Setup(micro_batch, seq_len, 1, "ddp", checkpointing, bf16=cuda))
    ratio = measured / est.total
    if cuda:
        torch.cuda.empty_cache()
    return {
        "model": spec.name,
        "micro_batch": micro_batch,
        "seq_len": seq_len,
        "checkpointing": checkpointing,
        "precision": precision,
        "measured_gb": measured / GB,
        "estimate_gb": est.total / GB,
        "estimate": est.describe(),
        "ratio": ratio,
        "tolerance": round(1 - USABLE, 3),
        "within": abs(ratio - 1) <= 1 - USABLE,
        "loss": losses[-1],
        "seconds": round(time.monotonic() - t, 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_vs_ddp(
    spec, device: torch.device, seq_len: int, micro_batch: int, accum: int, steps: int, warmup: int, repeats: int = 2
) -> dict:
    """DDP and FSDP2 over a one-rank group in this process, alternating (module doc); the group is
    destroyed before returning."""
    if tdist.is_initialized():
        raise RuntimeError("fsdp_vs_ddp needs a process group of its own; one exists already")
    if device.type == "cuda" and device.index is None:  # nccl's device_id and DDP's device_ids need the index
        device = torch.device("cuda", torch.cuda.current_device())
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    tdist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=60),  # a hang costs a minute, not NCCL's ten
        **kwargs,
    )
    runs: dict[str, list[float]] = {"ddp": [], "fsdp": []}
    t = time.monotonic()
    try:
        for _ in range(repeats):
            for mode in runs:
                runs[mode].append(
                    train_tokens_per_s(mode, spec, device, seq_len, micro_batch, accum, steps, warmup, fused=None)
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        tdist.destroy_process_group()
    med = {m: statistics.median(v) for m, v in runs.items()}
    ratio = med["fsdp"] / med["ddp"]
    return {
        "model": spec.name,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "accum": accum,
        "steps": steps,
        "repeats": repeats,
        "tokens_per_s": runs,
        "ddp_tokens_per_s": med["ddp"],
        "fsdp_tokens_per_s": med["fsdp"],
        "fsdp_over_ddp": ratio,
        "target": WITHIN_MIN,
        "met": ratio >= WITHIN_MIN,
        "seconds": round(time.monotonic() - t, 1),
    }
