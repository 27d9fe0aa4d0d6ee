"""FSDP2 vs DDP training throughput on the same ranks, in one run (the ratio is the result).

    .venv/bin/python benchmarks/fsdp_overhead.py                         # CPU: 2 gloo ranks, the tiny model
    .venv/bin/python benchmarks/fsdp_overhead.py --nproc 1 --device cuda --model olmo-15m --seq-len 1024 \\
        --micro-batch 8 --steps 20                                       # one GPU: FSDP over one rank

Each mode is one ``torch.distributed.run`` of this file's worker: the model (``core.model.build_model``),
laid out as pre-training lays it out (``parallel: ddp`` -> ``core.dist.wrap``; ``fsdp`` ->
``core.dist.shard`` per block, then the root; over one rank too, so the one-GPU figure is FSDP's own
cost), the pre-training optimizer (``core.optim``; its fused kernel on CUDA, as pre-training) and ``core.step.train_step`` on random tokens
(``--accum`` micro-batches per step), ``--warmup`` untimed steps, then ``--steps`` timed ones. Printed:
tokens/s per mode (all ranks) and fsdp / ddp. The modes alternate ``--repeats`` times (ddp, fsdp, ddp,
...) and each mode's median counts, so a drift of the machine's speed does not favour one.
On CPU the all-gathers and reduce-scatters are gloo's over shared memory: the ratio is an upper
bound of the communication cost on a real interconnect, not a GPU figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def train_tokens_per_s(
    parallel: str,
    spec,
    device,
    seq_len: int,
    micro_batch: int,
    accum: int,
    steps: int,
    warmup: int,
    fused: bool | None = False,
    rank: int = 0,
    world_size: int = 1,
) -> float:
    """Tokens/s (all ranks) of ``steps`` timed steps after ``warmup``, the model laid out by ``parallel``
    (ddp | fsdp) over the process group that exists (every rank calls it). ``fused``: the fused AdamW
    kernel (None: on CUDA, as pre-training uses it)."""
    import torch
    import torch.distributed as tdist
    from overtrain.core import dist
    from overtrain.core.model import build_model
    from overtrain.core.optim import build_optimizer
    from overtrain.core.step import train_step, use_fused_adam

    model = build_model(spec, device=device, seed=0)
    precision = "auto"
    if parallel == "fsdp":
        fsdp = dist.FSDPConfig()
        run = dist.shard(model, list(model.transformer.blocks), fsdp, dist.compute_dtype(fsdp, device, precision))
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    opt = build_optimizer(model.named_parameters(), 1e-3)
    if fused or (fused is None and device.type == "cuda"):
        use_fused_adam(opt)
    gen = torch.Generator().manual_seed(rank)
    micro = []
    for _ in range(accum):
        x = torch.randint(0, spec.vocab_size, (micro_batch, seq_len + 1), generator=gen)
        micro.append((x[:, :-1].to(device), x[:, 1:].to(device)))
    for _ in range(warmup):
        train_step(run, opt, micro, 1.0, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tdist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(run, opt, micro, 1.0, precision=precision)  # reads the loss: waits for the device
    seconds = time.perf_counter() - t0
    return steps * accum * micro_batch * seq_len * world_size / seconds


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as tdist
    from overtrain.core import dist
    from overtrain.core.model_spec import load_model_spec

    info = dist.env_info()
    device = dist.resolve_device(args.device, info)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    spec = load_model_spec(args.model)
    tps = train_tokens_per_s(
        args.parallel,
        spec,
        device,
        args.seq_len,
        args.micro_batch,
        args.accum,
        args.steps,
        args.warmup,
        fused=None,
        rank=info.rank,
        world_size=info.world_size,
    )
    if info.is_main:
        print(json.dumps({"parallel": args.parallel, "tokens_per_s": tps}))
    tdist.destroy_process_group()


def run_mode(args: argparse.Namespace, parallel: str) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    cmd += [__file__, "--worker", "--parallel", parallel, "--device", args.device, "--model", args.model]
    cmd += ["--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch), "--accum", str(args.accum)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{parallel}: exit {out.returncode}\n{out.stderr[-3000:]}")
    row = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    return row["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    runs: dict[str, list[float]] = {"ddp": [], "fsdp": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(run_mode(args, mode))
    med = {m: statistics.median(v) for m, v in runs.items()}
    result = {
        "device": args.device,
        "nproc": args.nproc,
        "model": args.model,
        "tokens_per_step": args.accum * args.micro_batch * args.seq_len * args.nproc,
        "tokens_per_s": runs,
        "fsdp_over_ddp": med["fsdp"] / med["ddp"],
    }
    print(
        f"{args.model} on {args.nproc} x {args.device}: ddp {med['ddp']:,.0f} tokens/s, fsdp {med['fsdp']:,.0f} "
        f"tokens/s: fsdp / ddp = {result['fsdp_over_ddp']:.3f} (medians of {args.repeats})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
