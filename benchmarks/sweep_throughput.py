"""A fine-tuning LR sweep: K learning rates stacked in one process vs run one after another.

    .venv/bin/python benchmarks/sweep_throughput.py                 # GPU: OLMo-15M, K = 8
    .venv/bin/python benchmarks/sweep_throughput.py --model tiny --k 3 --steps 3 --warmup 1 --seq-len 64   # CPU

Both sides train the same K copies of one model (K LRs, geometric from 4e-6 to 1e-3, as the
paper's sweep) on the same fine-tuning-shaped batches: ``--batch-size`` sequences of ``--seq-len``
tokens per step, loss only on a completion (the last 10-30% of each sequence), through the
fine-tuning loss ``completion_loss``:

- one after another: per LR, the weights reloaded, ``core.optim.optimizer_for`` (``mup.MuAdamW``)
  and ``train_step``, as ``overtrain sweep`` runs today;
- stacked: ``overtrain.finetune.stacked.train_stacked`` (a ``StackedRun``: ``torch.func`` vmap
  over the K models, K ``MuAdamW`` over views of the stack, fused on CUDA).

Printed: tokens/s (K x steps x tokens per step / seconds, setup included on both sides: per LR
reloading the weights and building the optimizer; stacking the K copies and building K
optimizers), the ratio stacked / one after another (target >= 3x for OLMo-15M on a GPU), and the
largest difference between the two sides' losses at the last step (same weights, same data: they
differ only by floating-point order; bf16 on CUDA). ``benchmarks/gpu_check.py`` calls
``measure_sweep``.

``--end-to-end`` times the real thing instead: ``run_sweep`` with ``stacked=False`` and
``stacked=True`` on RTE (real data, ``--steps`` optimizer steps of ``--batch-size`` examples per
LR, 64 validation/test examples evaluated per LR, no C4), from a freshly initialized checkpoint of
``--model`` written to a temporary directory. Printed: wall seconds of each whole sweep (prepare,
training, evaluation, rows), the ratio, the training-only ratio (the rows' ``train_seconds``), and
the largest relative difference of validation ID perplexity between the two sweeps' rows.

    .venv/bin/python benchmarks/sweep_throughput.py --end-to-end --k 8 --steps 20        # GPU
    .venv/bin/python benchmarks/sweep_throughput.py --end-to-end --model tiny --k 3 --steps 4 --threads 1   # CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import optimizer_for
from overtrain.core.step import train_step, use_fused_adam
from overtrain.finetune.finetune import FinetuneConfig, completion_loss
from overtrain.finetune.stacked import train_stacked

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import machine, resolve_device, sync  # noqa: E402


@dataclass
class SweepSettings:
    steps: int = 20  # timed steps per LR
    warmup: int = 3  # untimed steps first (CUDA/cuBLAS start-up)
    batch_size: int = 8  # sequences per step (the fine-tuning default)
    seq_len: int = 256
    precision: str = "auto"
    fused: str = "default"  # default (each side as it runs), on, off: see --fused


def sweep_lrs(k: int) -> list[float]:
    """K LRs, geometric from 4e-6 to 1e-3 as the paper's sweep (1e-4 alone for K = 1)."""
    return [float(x) for x in np.geomspace(4e-6, 1e-3, k)] if k > 1 else [1e-4]


def finetune_batches(
    spec, steps: int, batch: int, seq_len: int, device
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        x = torch.randint(0, spec.vocab_size, (batch, seq_len), generator=g)
        y = torch.randint(0, spec.vocab_size, (batch, seq_len), generator=g)
        for i in range(batch):
            y[i, : int(seq_len * (0.7 + 0.2 * torch.rand((), generator=g)))] = -100
        out.append([(x.to(device), y.to(device))])
    return out


def one_after_another(spec, base_state, lrs, batches, warmup, precision, device, fused) -> tuple[float, list[float]]:
    model = build_model(spec, device=device, seed=0)
    opt = optimizer_for(model, FinetuneConfig(lr=lrs[0]))
    if fused:
        use_fused_adam(opt)
    for micro in batches[:warmup]:  # CUDA/cuBLAS start-up, not timed
        train_step(model, opt, micro, 1.0, 1.0, precision, loss_fn=completion_loss)
    timed = batches[warmup:]
    sync(device)
    t = time.perf_counter()
    last = []
    for lr in lrs:
        model.load_state_dict(base_state)
        opt = optimizer_for(model, FinetuneConfig(lr=lr))
        if fused:
            use_fused_adam(opt)
        for micro in timed:
            stats = train_step(model, opt, micro, 1.0, 1.0, precision, loss_fn=completion_loss)
        last.append(stats.loss)
    sync(device)
    return time.perf_counter() - t, last


def stacked(spec, model, lrs, batches, warmup, precision, device, fused) -> tuple[float, list[float]]:
    cfg = FinetuneConfig()
    kw = dict(
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        precision=precision,
        loss_fn=completion_loss,
        mup=cfg.mup,
        fused=fused,
    )
    if warmup:
        train_stacked(model, spec, lrs, batches[:warmup], [1.0] * warmup, **kw)
    timed = batches[warmup:]
    sync(device)
    t = time.perf_counter()
    _, losses = train_stacked(model, spec, lrs, timed, [1.0] * len(timed), **kw)
    sync(device)
    return time.perf_counter() - t, list(losses[-1])


def measure_sweep(spec, k: int, s: SweepSettings, device) -> dict:
    """One K: both sides on the same batches (module docstring); setup included on both sides."""
    batches = finetune_batches(spec, s.warmup + s.steps, s.batch_size, s.seq_len, device)
    model = build_model(spec, device=device, seed=0)
    base_state = {n: v.detach().clone() for n, v in model.state_dict().items()}
    lrs = sweep_lrs(k)
    fused_seq = {"default": False, "on": True, "off": False}[s.fused]
    fused_stk = {"default": None, "on": True, "off": False}[s.fused]
    t_seq, loss_seq = one_after_another(spec, base_state, lrs, batches, s.warmup, s.precision, device, fused_seq)
    t_stk, loss_stk = stacked(spec, model, lrs, batches, s.warmup, s.precision, device, fused_stk)
    work = k * s.steps * s.batch_size * s.seq_len
    return {
        "model": spec.name,
        "k": k,
        "lrs": lrs,
        "batch_size": s.batch_size,
        "seq_len": s.seq_len,
        "steps": s.steps,
        "precision": s.precision,
        "fused": s.fused,
        "device": str(device),
        "sequential_tokens_per_s": work / t_seq,
        "stacked_tokens_per_s": work / t_stk,
        "ratio": t_seq / t_stk,
        "max_loss_diff": max(abs(a - b) for a, b in zip(loss_seq, loss_stk)),
    }


def end_to_end(args, device) -> list[dict]:
    """Time ``run_sweep`` one LR after another vs stacked, on real RTE data (see the module doc)."""
    import tempfile

    from overtrain.core.checkpoint import save_model_checkpoint
    from overtrain.finetune.sweep import run_sweep

    spec = load_model_spec(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        meta = {"step": 1, "tokens": 0, "budget_tokens": 0, "final": True, "lr_decayed": True, "kind": "pretrain"}
        ckpt = save_model_checkpoint(Path(tmp) / "checkpoints", 1, build_model(spec, seed=0), spec, meta)
        print(
            f"{'K':>3}{'one after another s':>21}{'stacked s':>11}{'ratio':>8}{'training ratio':>16}{'max val ppl rel diff':>22}"
        )
        for k in [int(v) for v in args.k.split(",")]:
            lrs = [float(f"{x:.4g}") for x in sweep_lrs(k)]
            times, out = {}, {}
            for stacked in (False, True):
                cfg = FinetuneConfig(
                    checkpoint=str(ckpt),
                    task="rte",
                    run_dir=f"{tmp}/k{k}-{stacked}",
                    lrs=lrs,
                    max_steps=args.steps,
                    batch_size=args.batch_size,
                    micro_batch_size=args.batch_size,
                    precision=args.precision,
                    device=str(device),
                    eval_before=False,
                    max_examples={"validation": 64, "test": 64},
                    stacked=stacked,
                )
                sync(device)
                t = time.perf_counter()
                out[stacked] = run_sweep(cfg, progress=False)[:-1]
                sync(device)
                times[stacked] = time.perf_counter() - t
            train_s = {m: sum(r["train_seconds"] for r in out[m]) for m in out}
            diff = max(abs(a["val_id_ppl"] / b["val_id_ppl"] - 1) for a, b in zip(out[False], out[True]))
            row = {
                "mode": "end-to-end",
                "model": spec.name,
                "k": k,
                "lrs": lrs,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "sequential_s": times[False],
                "stacked_s": times[True],
                "ratio": times[False] / times[True],
                "training_ratio": train_s[False] / train_s[True],
                "max_val_ppl_rel_diff": diff,
            }
            rows.append(row)
            print(
                f"{k:>3}{times[False]:>21.2f}{times[True]:>11.2f}{row['ratio']:>7.2f}x{row['training_ratio']:>15.2f}x{diff:>22.2e}",
                flush=True,
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="olmo-15m")
    ap.add_argument("--model-overrides", default="", help="comma-separated key=value for the model spec")
    ap.add_argument("--k", default="8", help="number of LRs (comma-separated for several runs, e.g. 2,4,8)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per LR")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per step (the fine-tuning default)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--fused",
        choices=("default", "on", "off"),
        default="default",
        help="AdamW kernel: default = each side as it runs by default (sweep: MuAdamW's default; "
        "stacked: fused on CUDA); on/off = the fused kernel on both sides / neither",
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--end-to-end", action="store_true", help="time run_sweep(stacked=False) vs run_sweep(stacked=True) on RTE"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="There is a performance drop")  # CPU SDPA under vmap: a loop

    device = resolve_device(args.device)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.end_to_end:
        print(f"machine: {machine(device)}; {when}")
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(
            f"{args.model}: run_sweep on RTE, {args.steps} steps x {args.batch_size} examples per LR, 64 val + 64 test examples; precision {args.precision}"
        )
        rows = end_to_end(args, device)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"machine": machine(device), "date": when, "command": sys.argv, "rows": rows}, indent=2)
                + "\n"
            )
        return 0
    spec = load_model_spec(args.model, [o for o in args.model_overrides.split(",") if o])
    s = SweepSettings(args.steps, args.warmup, args.batch_size, args.seq_len, args.precision, args.fused)
    print(f"machine: {machine(device)}; {when}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{spec.name}: {s.batch_size} x {s.seq_len} tokens per step, completion loss; {s.warmup} warmup + "
        f"{s.steps} timed steps per LR; precision {s.precision}; AdamW kernel: {s.fused}"
    )
    print(f"{'K':>3}{'one after another tok/s':>25}{'stacked tok/s':>15}{'ratio':>8}{'max |loss diff|':>17}")
    rows = []
    for k in [int(v) for v in args.k.split(",")]:
        row = measure_sweep(spec, k, s, device)
        rows.append(row)
        print(
            f"{k:>3}{row['sequential_tokens_per_s']:>25,.0f}{row['stacked_tokens_per_s']:>15,.0f}"
            f"{row['ratio']:>7.2f}x{row['max_loss_diff']:>17.2e}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine(device), "date": when, "command": sys.argv, "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
