"""Pre-training throughput: overtrain vs a plain-PyTorch GPT of the same shape, and the data loader.

    .venv/bin/python benchmarks/pretrain_throughput.py                       # GPU: 15M/30M/90M at 1024
    .venv/bin/python benchmarks/pretrain_throughput.py --models tiny --seq-len 128 --micro-batch 4 \\
        --steps 3 --warmup 1 --compile off --loader-tokens 4M                # CPU smoke run
    .venv/bin/python benchmarks/pretrain_throughput.py --ddp-estimate        # the 8-GPU estimate (no training)

For each model, eager and ``torch.compile`` (of the model; and, overtrain only, of model + loss):
tokens/s on this device, MFU (FLOPs/token
from ``overtrain.core.model.flops_per_token``, the same figure as ``overtrain info``; peak from
``--peak-tflops``, H100 bf16 dense 989 by default), peak device memory, for

- overtrain: ``build_model`` (OLMo + muP) + ``pretrain.build_optimizer`` (``mup.MuAdamW``, as
  pre-training builds it; ``--fused`` switches it to the fused kernel) + ``train_step``;
- baseline: ``benchmarks/gpt_baseline.py``, the same parameter shapes in plain PyTorch with fused
  AdamW (nanoGPT-style), measured in the same run; the ratio overtrain / baseline is printed
  (against the last baseline measured: eager for eager, compiled for both compiled rows).

Inputs are random tokens already on the device (the loader is measured on its own): ``--accum``
micro-batches of ``--micro-batch`` sequences of ``--seq-len`` per step. Timing: ``--warmup``
steps (compilation happens there), then ``--steps`` timed steps between two device syncs.

Data loader: ``overtrain.data.loader.WindowLoader.micro_batches`` (window gather from the memmap,
pinned copy to the device) for a global batch of 256 sequences, alone, in tokens/s, over a
prepared C4 directory (``--data``) or a synthetic token file of ``--loader-tokens`` tokens; printed
as a multiple of each model's fastest training tokens/s (target >= 20x).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt_baseline  # noqa: E402
from overtrain.core.config import parse_count  # noqa: E402
from overtrain.core.likelihood import lm_loss  # noqa: E402
from overtrain.core.model import build_model, count_params, flops_per_token, load_model_spec  # noqa: E402
from overtrain.core.step import train_step, use_fused_adam  # noqa: E402
from overtrain.data.loader import WindowLoader  # noqa: E402
from overtrain.train.pretrain import OptimConfig, build_optimizer  # noqa: E402

H100_BF16_TFLOPS = 989.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"CPU {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"load average {load:.1f}), torch {torch.__version__}"
    )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def random_batches(spec, args, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.accum):
        rows = torch.randint(0, spec.vocab_size, (args.micro_batch, args.seq_len + 1), generator=g).to(device)
        out.append((rows[:, :-1].contiguous(), rows[:, 1:].contiguous()))
    return out


def time_steps(step, args, device) -> float:
    """Seconds per step: ``--warmup`` untimed steps, then ``--steps`` timed ones."""
    for _ in range(args.warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return (time.perf_counter() - t) / args.steps


def measure(spec, impl: str, compiled: str, args, device) -> dict:
    """One (implementation, compile mode): "no", "model" (``torch.compile(model)``, as pre-training
    with ``compile: true``), or "model+loss" (overtrain only: ``loss_fn=torch.compile(lm_loss)``,
    so the cross-entropy is fused into the graph and the fp32 logits need not be materialized)."""
    torch._dynamo.reset()  # compiled graphs of the previous configuration
    free(device)
    batches = random_batches(spec, args, device)
    if impl == "overtrain":
        model = build_model(spec, device=device, seed=0)
        opt = build_optimizer(model, OptimConfig())
        if args.fused:
            use_fused_adam(opt)
        run_model = torch.compile(model) if compiled == "model" else model
        loss_fn = torch.compile(lm_loss) if compiled == "model+loss" else None
        step = lambda: train_step(run_model, opt, batches, 1.0, 1.0, args.precision, loss_fn=loss_fn)  # noqa: E731
    else:
        model = gpt_baseline.from_spec(spec, device)
        gpt_baseline.check_same_shape(model, build_model(spec, device="meta", init=False))
        opt = gpt_baseline.make_optimizer(model)
        run_model = torch.compile(model) if compiled == "model" else model
        step = lambda: gpt_baseline.train_step(run_model, opt, batches, args.precision)  # noqa: E731
    seconds = time_steps(step, args, device)
    tokens = args.accum * args.micro_batch * args.seq_len
    tps = tokens / seconds
    fpt = flops_per_token(spec, args.seq_len)
    row = {
        "model": spec.name,
        "impl": impl,
        "compile": compiled,
        "fused_adamw": bool(args.fused) if impl == "overtrain" else True,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "accum": args.accum,
        "precision": args.precision,
        "step_s": seconds,
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "mfu": fpt * tps / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return row


def loader_tokens(args, tmp: Path) -> np.ndarray:
    if args.data:
        from overtrain.data.c4 import open_prepared

        return open_prepared(args.data).tokens("train")
    n = parse_count(args.loader_tokens)
    path = tmp / "train.npy"
    rng = np.random.default_rng(0)
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n,))
    for start in range(0, n, 1 << 24):
        stop = min(n, start + (1 << 24))
        mm[start:stop] = rng.integers(0, 50280, stop - start, dtype=np.uint16)
    mm.flush()
    del mm
    return np.memmap(path, dtype=np.uint16, mode="r")


def measure_loader(args, device) -> dict:
    """WindowLoader alone: tokens/s of whole global batches delivered to ``device``."""
    global_batch = 256
    with tempfile.TemporaryDirectory() as tmp:
        tokens = loader_tokens(args, Path(tmp))
        loader = WindowLoader(tokens, args.seq_len, global_batch, args.micro_batch, seed=0)
        steps = args.loader_steps
        loader.micro_batches(0, device)  # the epoch permutation is built once per epoch
        sync(device)
        t = time.perf_counter()
        for s in range(1, steps + 1):
            batches = loader.micro_batches(s, device)
        sync(device)
        seconds = time.perf_counter() - t
        del batches, loader, tokens
    return {
        "impl": "loader",
        "source": args.data or f"synthetic memmap, {parse_count(args.loader_tokens):,} tokens",
        "global_batch": global_batch,
        "seq_len": args.seq_len,
        "steps": steps,
        "tokens_per_s": steps * global_batch * args.seq_len / seconds,
    }


# ------------------------------------------------------------------------- 8-GPU estimate

# Published single-GPU anchors for GPT-2 124M at context 1024 (see benchmarks/README.md).
ANCHORS = {
    "H100": {"tok_s": 470e3, "peak": 989e12, "busbw": 450e9, "source": "llm.c GPT-2 124M"},
    "A100": {"tok_s": 107e3, "peak": 312e12, "busbw": 230e9, "source": "nanoGPT GPT-2 124M"},
}


def gpt2_124m_flops_per_token(seq_len: int = 1024) -> int:
    """The same formula as ``flops_per_token``: 6 x (12 layers x 12 d^2 + readout) + attention."""
    d, layers, vocab = 768, 12, 50304
    return 6 * (layers * 12 * d * d + d * vocab) + 12 * layers * d * seq_len


def ddp_estimate(
    spec,
    gpu: str,
    gpus: int = 8,
    global_batch: int = 256,
    seq_len: int = 1024,
    bucket_mb: float = 25.0,
    interference: float = 0.1,
    small_allreduce_s: float = 30e-6,
) -> dict:
    """Scaling efficiency of DDP for ``spec`` on ``gpus`` GPUs of kind ``gpu`` (an estimate).

    Compute: the anchor's tokens/s scaled by FLOPs/token (the anchor's MFU carried over).
    Communication: ring all-reduce of fp32 gradients, 2 (N-1)/N x bytes / bus bandwidth, in 25 MB
    buckets overlapped with backward (2/3 of a step's compute). Exposed time per step =
    the last bucket (the input embedding's gradient, ready only when backward ends)
    + what backward cannot hide + ``interference`` x the hidden part (NCCL kernels take SMs and
    memory bandwidth from the overlapped backward) + two small all-reduces of ``train_step``
    (target-token count, loss) at ``small_allreduce_s`` each.
    """
    a = ANCHORS[gpu]
    fpt = flops_per_token(spec, seq_len)
    tok_s = a["tok_s"] * gpt2_124m_flops_per_token(seq_len) / fpt
    compute = global_batch * seq_len / gpus / tok_s
    backward = compute * 2 / 3
    grad_bytes = 4 * count_params(spec)["total_params"]
    ring = 2 * (gpus - 1) / gpus
    t_all = ring * grad_bytes / a["busbw"]
    last = max(4 * spec.embedding_size * spec.d_model, bucket_mb * 2**20)
    t_last = ring * last / a["busbw"]
    rest = t_all - t_last
    exposed = t_last + max(0.0, rest - backward) + interference * min(rest, backward) + 2 * small_allreduce_s
    return {
        "model": spec.name,
        "gpu": gpu,
        "gpus": gpus,
        "single_gpu_tok_s": tok_s,
        "mfu": tok_s * fpt / a["peak"],
        "step_compute_ms": compute * 1e3,
        "grad_mb": grad_bytes / 2**20,
        "allreduce_ms": t_all * 1e3,
        "exposed_ms": exposed * 1e3,
        "efficiency": compute / (compute + exposed),
        "cluster_tok_s": global_batch * seq_len / (compute + exposed),
    }


def print_ddp_estimate(models: list[str]) -> list[dict]:
    rows = [ddp_estimate(load_model_spec(m), gpu) for gpu in ANCHORS for m in models]
    print("8-GPU DDP estimate (global batch 256 x 1024; anchors scaled by FLOPs/token; fp32 grads, ring all-reduce)")
    print(
        f"{'model':<10}{'gpu':<6}{'1-GPU tok/s':>13}{'MFU':>6}{'step ms':>9}{'grads MB':>10}{'allred ms':>11}"
        f"{'exposed ms':>12}{'efficiency':>12}{'8-GPU tok/s':>13}"
    )
    for r in rows:
        print(
            f"{r['model']:<10}{r['gpu']:<6}{r['single_gpu_tok_s']:>13,.0f}{r['mfu']:>6.0%}{r['step_compute_ms']:>9.1f}"
            f"{r['grad_mb']:>10.0f}{r['allreduce_ms']:>11.2f}{r['exposed_ms']:>12.2f}{r['efficiency']:>12.1%}{r['cluster_tok_s']:>13,.0f}"
        )
    return rows


def print_grid_time(plan_path: str, estimates: list[dict], flat_mfus=(0.2,), sweep_mfus=(0.05, 0.15)) -> dict:
    """Wall time of a grid on one 8-GPU node from ``overtrain grid plan GRID json=true`` FLOPs.

    Pre-training runs one job at a time on all 8 GPUs: FLOPs / (8 x peak x MFU x DDP efficiency),
    with the anchor's MFU (``estimates``) and with each of ``flat_mfus``. Sweeps (and
    perturbation) run 8 jobs at a time, one per GPU, at each of ``sweep_mfus``.
    """
    plan = json.loads(Path(plan_path).read_text())
    by_model: dict[str, float] = {}
    other = {"sweep": 0.0, "perturb": 0.0}
    for job in plan["job_list"]:
        if job["kind"] == "pretrain":
            model = job["id"].split("/", 1)[1].split("_", 1)[0]
            by_model[model] = by_model.get(model, 0.0) + job["flops"]
        elif job["kind"] in other:
            other[job["kind"]] += job["flops"]
    out = {"pretrain_flops": by_model, **{f"{k}_flops": v for k, v in other.items()}, "hours": {}}
    print(
        f"\ngrid {plan.get('grid')}: pre-training {sum(by_model.values()):.3e} FLOPs "
        f"({', '.join(f'{m} {f:.2e}' for m, f in by_model.items())}); sweeps {other['sweep']:.3e}; perturbation {other['perturb']:.3e}"
    )
    print(
        f"{'gpu':<6}{'pre-training MFU':<26}{'pre-training h':>15}{'sweep MFU':>11}{'sweeps h':>10}{'total h':>9}{'days':>6}"
    )
    for gpu, a in ANCHORS.items():
        eff = {e["model"]: e for e in estimates if e["gpu"] == gpu}
        options = [("anchor (" + ", ".join(f"{eff[m]['mfu']:.0%}" for m in by_model if m in eff) + ")", None)]
        options += [(f"{m:.0%} flat", m) for m in flat_mfus]
        for label, flat in options:
            pre = 0.0
            for m, f in by_model.items():
                e = eff.get(m) or ddp_estimate(load_model_spec(m), gpu)
                pre += f / (8 * a["peak"] * (flat or e["mfu"]) * e["efficiency"]) / 3600
            for smfu in sweep_mfus:
                sweeps = (other["sweep"] + other["perturb"]) / (8 * a["peak"] * smfu) / 3600
                out["hours"][f"{gpu} {label} sweep {smfu:.0%}"] = pre + sweeps
                print(
                    f"{gpu:<6}{label:<26}{pre:>15.1f}{smfu:>11.0%}{sweeps:>10.1f}{pre + sweeps:>9.1f}{(pre + sweeps) / 24:>6.1f}"
                )
    return out


# ---------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="olmo-15m,olmo-30m,olmo-90m", help="comma-separated names in configs/models/")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=32, help="sequences per forward/backward")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast (CUDA only) or fp32")
    ap.add_argument(
        "--fused", action="store_true", help="overtrain side: fused AdamW kernel (train.step.use_fused_adam)"
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak TFLOP/s per device for MFU (default {H100_BF16_TFLOPS:g}, H100 bf16 dense, on CUDA; none on CPU)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--data", default=None, help="prepared C4 directory for the loader (default: a synthetic memmap)")
    ap.add_argument("--loader-tokens", default="128M", help="size of the synthetic loader file (accepts 4M, 1B)")
    ap.add_argument("--loader-steps", type=int, default=20)
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--ddp-estimate", action="store_true", help="print the 8x A100 / 8x H100 DDP estimate and exit")
    ap.add_argument(
        "--grid-plan",
        default=None,
        help="with --ddp-estimate: `overtrain grid plan GRID json=true` output; prints the grid's wall time on 8 GPUs",
    )
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.ddp_estimate:
        out = {"ddp_estimate": print_ddp_estimate(models)}
        if args.grid_plan:
            out["grid"] = print_grid_time(args.grid_plan, out["ddp_estimate"])
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = H100_BF16_TFLOPS
    args.precision = args.dtype
    if args.dtype == "bf16" and device.type != "cuda":
        print("note: bf16 autocast is CUDA-only in overtrain (evaluate.core.autocast_for); this CPU run is fp32")
        args.precision = "fp32"
    specs = [load_model_spec(m) for m in models]
    for spec in specs:
        if args.seq_len > spec.max_sequence_length:
            ap.error(f"--seq-len {args.seq_len} exceeds {spec.name}'s context {spec.max_sequence_length}")
    # (compile mode, implementations); each overtrain row is compared with the baseline of its group.
    groups = {"no": ("baseline", "overtrain"), "model": ("baseline", "overtrain"), "model+loss": ("overtrain",)}
    modes = {"off": ["no"], "on": ["model", "model+loss"], "both": ["no", "model", "model+loss"]}[args.compile]

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {machine(device)}; {when}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"step: {args.accum} x {args.micro_batch} sequences x {args.seq_len} tokens, {args.precision}; "
        f"{args.warmup} warmup + {args.steps} timed steps; MFU vs {args.peak_tflops or '-'} TFLOP/s"
    )
    print(
        f"{'model':<10}{'impl':<11}{'compile':<12}{'tokens/s':>12}{'step ms':>10}{'MFU':>7}{'peak GB':>9}{'vs baseline':>13}"
    )
    rows = []
    for spec in specs:
        baseline = None
        for compiled in modes:
            for impl in groups[compiled]:
                r = measure(spec, impl, compiled, args, device)
                rows.append(r)
                if impl == "baseline":
                    baseline = r
                else:
                    r["ratio_vs_baseline"] = r["tokens_per_s"] / baseline["tokens_per_s"] if baseline else None
                    r["baseline_compile"] = baseline["compile"] if baseline else None
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
                mem = f"{r['peak_mem_gb']:.2f}" if r["peak_mem_gb"] is not None else "-"
                ratio = r.get("ratio_vs_baseline")
                ratio = "1.00x" if impl == "baseline" else (f"{ratio:.2f}x" if ratio else "-")
                print(
                    f"{spec.name:<10}{impl:<11}{compiled:<12}{r['tokens_per_s']:>12,.0f}"
                    f"{r['step_s'] * 1e3:>10.1f}{mfu:>7}{mem:>9}{ratio:>13}",
                    flush=True,
                )

    if not args.no_loader:
        lr = measure_loader(args, device)
        rows.append(lr)
        print(
            f"loader: {lr['tokens_per_s']:,.0f} tokens/s ({lr['source']}; global batch {lr['global_batch']} x {lr['seq_len']}, to {device})"
        )
        for spec in specs:
            best = max(r["tokens_per_s"] for r in rows if r.get("model") == spec.name and r["impl"] == "overtrain")
            ratio = lr["tokens_per_s"] / best
            lr.setdefault("ratio_vs_training", {})[spec.name] = ratio
            print(
                f"  loader / {spec.name} training: {ratio:,.1f}x (target >= 20x){'' if ratio >= 20 else '  BELOW TARGET'}"
            )

    if args.json:
        out = {"machine": machine(device), "date": when, "command": sys.argv, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
