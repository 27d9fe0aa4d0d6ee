"""Pre-training throughput: overtrain vs a plain-PyTorch GPT of the same shape, and the data loader.

    .venv/bin/python benchmarks/pretrain_throughput.py                       # GPU: 15M/30M/90M at 1024, bf16
    .venv/bin/python benchmarks/pretrain_throughput.py --models tiny --seq-len 128 --micro-batch 4 \\
        --global-batch 4 --steps 3 --warmup 1 --compile off --loader-tokens 4M     # CPU smoke run

``benchmarks/gpu_check.py`` calls ``measure_fitting`` (row by row) and ``measure_loader`` with its own settings
(``make gpu-check``); the 8-GPU DDP estimate is ``benchmarks/ddp_estimate.py``.

One timed step is what pre-training does per optimizer step: ``--global-batch`` sequences of
``--seq-len`` tokens in micro-batches of ``--micro-batch`` (gradient accumulation), random tokens
already on the device (the loader is measured on its own). For each model and compile mode:

- overtrain: ``build_model`` (OLMo + muP), the pre-training optimizer (``core.optim.optimizer_for``,
  ``mup.MuAdamW``, switched to the fused kernel on CUDA as pre-training does; ``--fused``/``--no-fused``
  force it) and ``core.step.train_step``;
- baseline: ``benchmarks/gpt_baseline.py``, the same parameter shapes in plain PyTorch with fused
  AdamW (nanoGPT-style), in the same process; ratio = overtrain / baseline of the same compile mode.

Compile modes: ``no`` (eager); ``model`` (``torch.compile(model)``, the loss outside the graph, so
fp32 logits are materialized); ``model+loss`` (what ``compile: true`` does in pre-training: the
model and the loss function compiled, so the 50K-way cross-entropy is fused into the graph; the
baseline compiles its own cross-entropy the same way).

Timing: ``--warmup`` steps (compilation happens there; their seconds are the row's ``warmup_s``),
then ``--steps`` steps between two device syncs. MFU = FLOPs/token x tokens/s / peak, FLOPs/token
from ``flops_per_token`` at ``--seq-len`` (at the model's context: the figure ``overtrain info`` prints), peak = ``--peak-tflops``
or the device's dense bf16 figure from ``train.metrics_log.PEAK_BF16_FLOPS`` (the one pre-training
logs MFU with). A row that runs out of device memory is retried with half the micro-batch and twice
the accumulation (same tokens per step); the row records the micro-batch that fit.

Data loader: ``overtrain.data.loader.WindowLoader.micro_batches`` (window gather from the memmap,
pinned copy to the device) for one global batch per step, alone, in tokens/s, over a prepared C4
directory (``--data``) or a synthetic token file of ``--loader-tokens``; printed as a multiple of
each model's fastest training tokens/s (target >= 20x).
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
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt_baseline  # noqa: E402
from overtrain.core.config import parse_count  # noqa: E402
from overtrain.core.likelihood import lm_loss  # noqa: E402
from overtrain.core.model import build_model  # noqa: E402
from overtrain.core.model_spec import flops_per_token, load_model_spec
from overtrain.core.optim import optimizer_for  # noqa: E402
from overtrain.core.step import train_step, use_fused_adam  # noqa: E402
from overtrain.data.loader import WindowLoader  # noqa: E402
from overtrain.train.metrics_log import peak_flops  # noqa: E402
from overtrain.train.pretrain_plan import OptimConfig  # noqa: E402

MODES = ("no", "model", "model+loss")


@dataclass
class Settings:
    seq_len: int = 1024
    global_batch: int = 32  # sequences per optimizer step (pre-training's global_batch_size on one GPU)
    micro_batch: int = 32  # sequences per forward/backward
    steps: int = 20  # timed steps
    warmup: int = 5  # untimed steps first (compilation happens here)
    precision: str = "bf16"  # bf16 autocast on CUDA; CPU runs fp32 whatever this says
    fused: bool | None = None  # overtrain's AdamW kernel: None = as pre-training (fused on CUDA)
    peak_flops: float | None = None  # FLOP/s per device for MFU (None: no MFU)
    compile_backend: str = "inductor"  # "eager" traces with dynamo only (the CPU dry run)

    @property
    def accum(self) -> int:
        return max(1, self.global_batch // self.micro_batch)


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


def random_batches(spec, s: Settings, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(s.accum):
        rows = torch.randint(0, spec.vocab_size, (s.micro_batch, s.seq_len + 1), generator=g).to(device)
        out.append((rows[:, :-1].contiguous(), rows[:, 1:].contiguous()))
    return out


def time_steps(step: Callable[[], float], s: Settings, device) -> tuple[float, float, float]:
    """(seconds of all warmup steps, seconds per timed step, the last step's loss)."""
    t = time.perf_counter()
    for _ in range(s.warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(s.steps):
        loss = step()
    sync(device)
    return warm, (time.perf_counter() - t) / s.steps, float(loss)


def measure(spec, impl: str, compiled: str, s: Settings, device) -> dict:
    """One (implementation, compile mode) row: see the module docstring."""
    torch._dynamo.reset()  # compiled graphs of the previous configuration
    free(device)
    batches = random_batches(spec, s, device)
    compile_ = lambda f: torch.compile(f, backend=s.compile_backend)
    if impl == "overtrain":
        model = build_model(spec, device=device, seed=0)
        opt = optimizer_for(model, OptimConfig())
        fused = use_fused_adam(opt) if (device.type == "cuda" if s.fused is None else s.fused) else False
        run_model = compile_(model) if compiled in ("model", "model+loss") else model
        loss_fn = compile_(lm_loss) if compiled == "model+loss" else None
        step = lambda: train_step(run_model, opt, batches, 1.0, 1.0, s.precision, loss_fn=loss_fn).loss
    else:
        model = gpt_baseline.from_spec(spec, device)
        gpt_baseline.check_same_shape(model, build_model(spec, device="meta", init=False))
        opt = gpt_baseline.make_optimizer(model)
        fused = bool(opt.param_groups[0].get("fused"))
        run_model = compile_(model) if compiled in ("model", "model+loss") else model
        loss_fn = compile_(gpt_baseline.lm_loss) if compiled == "model+loss" else None
        step = lambda: gpt_baseline.train_step(run_model, opt, batches, s.precision, loss_fn=loss_fn)
    warm, seconds, loss = time_steps(step, s, device)
    tps = s.accum * s.micro_batch * s.seq_len / seconds
    fpt = flops_per_token(spec, s.seq_len)  # what `overtrain info` prints (at the model's context)
    return {
        "model": spec.name,
        "impl": impl,
        "compile": compiled,
        "compile_backend": s.compile_backend if compiled != "no" else None,
        "fused_adamw": fused,
        "seq_len": s.seq_len,
        "micro_batch": s.micro_batch,
        "accum": s.accum,
        "precision": s.precision,
        "warmup_steps": s.warmup,
        "warmup_s": warm,
        "step_s": seconds,
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "mfu": fpt * tps / s.peak_flops if s.peak_flops else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": loss,
    }


def measure_fitting(spec, impl: str, compiled: str, s: Settings, device) -> dict:
    """``measure``, halving the micro-batch (same tokens per step) until it fits in device memory.

    Any other failure (a compile error, say) is returned as a row with ``error`` rather than raised,
    so one broken configuration does not cost the others' figures."""
    while True:
        try:
            return measure(spec, impl, compiled, s, device)
        except torch.cuda.OutOfMemoryError:
            if s.micro_batch == 1:
                return {
                    "model": spec.name,
                    "impl": impl,
                    "compile": compiled,
                    "error": "out of memory at micro-batch 1",
                }
            s = replace(s, micro_batch=s.micro_batch // 2)
        except Exception as e:  # noqa: BLE001 - recorded in the row
            tb = traceback.format_exc(limit=-3)
            return {
                "model": spec.name,
                "impl": impl,
                "compile": compiled,
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": tb,
            }
        finally:
            free(device)


def measure_models(
    specs: list,
    modes: list[str],
    s: Settings,
    device,
    deadline: float | None = None,
    log: Callable[[dict], None] | None = None,
    overtrain_first: bool = False,
) -> list[dict]:
    """Rows for every (compile mode, model, implementation), modes outermost so the eager figures of
    every model come first; baseline then overtrain within a model (``overtrain_first``: the other
    way round, so that a budget running out costs a baseline figure first). Rows after ``deadline``
    (``time.monotonic()``) are recorded as skipped. Each overtrain row gets ``ratio_vs_baseline``,
    its tokens/s over the baseline's of the same model and compile mode (set as soon as both exist)."""
    rows = []
    impls = ("overtrain", "baseline") if overtrain_first else ("baseline", "overtrain")
    for compiled in modes:
        for spec in specs:
            pair = {}
            for impl in impls:
                if deadline is not None and time.monotonic() > deadline:
                    r = {"model": spec.name, "impl": impl, "compile": compiled, "skipped": "time budget"}
                else:
                    r = measure_fitting(spec, impl, compiled, s, device)
                pair[impl] = r
                if all("tokens_per_s" in pair.get(i, {}) for i in impls):
                    pair["overtrain"]["ratio_vs_baseline"] = (
                        pair["overtrain"]["tokens_per_s"] / pair["baseline"]["tokens_per_s"]
                    )
                rows.append(r)
                if log:
                    log(r)
    return rows


def format_row(r: dict) -> str:
    head = f"{r['model']:<10}{r['impl']:<11}{r['compile']:<12}"
    if "tokens_per_s" not in r:
        return head + f"  {r.get('skipped') or r.get('error', '?')}"
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
    mem = f"{r['peak_mem_gb']:.2f}" if r.get("peak_mem_gb") is not None else "-"
    ratio = (
        "1.00x" if r["impl"] == "baseline" else (f"{r['ratio_vs_baseline']:.2f}x" if "ratio_vs_baseline" in r else "-")
    )
    return (
        head + f"{r['tokens_per_s']:>12,.0f}{r['step_s'] * 1e3:>10.1f}{mfu:>7}{mem:>9}{r['micro_batch']:>6}"
        f"{r['warmup_s']:>9.1f}{ratio:>13}"
    )


HEADER = f"{'model':<10}{'impl':<11}{'compile':<12}{'tokens/s':>12}{'step ms':>10}{'MFU':>7}{'peak GB':>9}{'micro':>6}{'warmup s':>9}{'vs baseline':>13}"


# ------------------------------------------------------------------------------------- loader


def synthetic_tokens(n: int, path: Path) -> np.memmap:
    """A flat uint16 memmap of ``n`` random token ids (< 50280), as prepare-data writes train.npy."""
    rng = np.random.default_rng(0)
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n,))
    for start in range(0, n, 1 << 24):
        stop = min(n, start + (1 << 24))
        mm[start:stop] = rng.integers(0, 50280, stop - start, dtype=np.uint16)
    mm.flush()
    del mm
    return np.memmap(path, dtype=np.uint16, mode="r")


def measure_loader(
    device, seq_len: int, micro_batch: int, global_batch: int = 256, steps: int = 20, tokens: str = "128M", data=None
) -> dict:
    """WindowLoader alone: tokens/s of whole global batches delivered to ``device``."""
    with tempfile.TemporaryDirectory() as tmp:
        if data:
            from overtrain.data.c4 import open_prepared

            arr = open_prepared(data).tokens("train")
        else:
            arr = synthetic_tokens(parse_count(tokens), Path(tmp) / "train.npy")
        loader = WindowLoader(arr, seq_len, global_batch, min(micro_batch, global_batch), seed=0)
        loader.micro_batches(0, device)  # the epoch permutation is built once per epoch
        sync(device)
        t = time.perf_counter()
        for step in range(1, steps + 1):
            batches = loader.micro_batches(step, device)
        sync(device)
        seconds = time.perf_counter() - t
        del batches, loader, arr
    return {
        "impl": "loader",
        "source": data or f"synthetic memmap, {parse_count(tokens):,} tokens",
        "global_batch": global_batch,
        "seq_len": seq_len,
        "steps": steps,
        "device": str(device),
        "tokens_per_s": steps * global_batch * seq_len / seconds,
    }


# ---------------------------------------------------------------------------------------- main


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="olmo-15m,olmo-30m,olmo-90m", help="comma-separated names in configs/models/")
    ap.add_argument("--model-overrides", default="", help="comma-separated key=value applied to every model")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--global-batch", type=int, default=32, help="sequences per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=32, help="sequences per forward/backward")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both", help="on: model, model+loss")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast (CUDA only) or fp32")
    ap.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None, help="overtrain's AdamW kernel")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak per device for MFU (default: the GPU's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--data", default=None, help="prepared C4 directory for the loader (default: a synthetic memmap)")
    ap.add_argument("--loader-tokens", default="128M", help="size of the synthetic loader file (accepts 4M, 1B)")
    ap.add_argument("--loader-steps", type=int, default=20)
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = args.dtype if device.type == "cuda" else "fp32"
    if args.dtype == "bf16" and device.type != "cuda":
        print("note: bf16 autocast is CUDA-only in overtrain (core.likelihood.autocast_for); this CPU run is fp32")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    s = Settings(
        args.seq_len,
        args.global_batch,
        args.micro_batch,
        args.steps,
        args.warmup,
        precision,
        args.fused,
        peak,
        args.compile_backend,
    )
    overrides = [o for o in args.model_overrides.split(",") if o]
    specs = [load_model_spec(m.strip(), overrides) for m in args.models.split(",") if m.strip()]
    for spec in specs:
        if s.seq_len > spec.max_sequence_length:
            ap.error(f"--seq-len {s.seq_len} exceeds {spec.name}'s context {spec.max_sequence_length}")
    modes = {"off": ["no"], "on": ["model", "model+loss"], "both": list(MODES)}[args.compile]

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {machine(device)}; {when}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"step: {s.accum} x {s.micro_batch} sequences x {s.seq_len} tokens, {s.precision}; {s.warmup} warmup + "
        f"{s.steps} timed steps; MFU vs {peak / 1e12 if peak else '-'} TFLOP/s"
    )
    print(HEADER)
    rows = measure_models(specs, modes, s, device, log=lambda r: print(format_row(r), flush=True))

    if not args.no_loader:
        lr = measure_loader(
            device, s.seq_len, s.micro_batch, steps=args.loader_steps, tokens=args.loader_tokens, data=args.data
        )
        rows.append(lr)
        print(
            f"loader: {lr['tokens_per_s']:,.0f} tokens/s ({lr['source']}; global batch 256 x {lr['seq_len']}, to {device})"
        )
        for spec in specs:
            best = max(
                (
                    r["tokens_per_s"]
                    for r in rows
                    if r.get("model") == spec.name and r["impl"] == "overtrain" and "tokens_per_s" in r
                ),
                default=None,
            )
            if best:
                ratio = lr["tokens_per_s"] / best
                lr.setdefault("ratio_vs_training", {})[spec.name] = ratio
                print(
                    f"  loader / {spec.name} training: {ratio:,.1f}x (target >= 20x){'' if ratio >= 20 else '  BELOW TARGET'}"
                )

    if args.json:
        out = {"machine": machine(device), "date": when, "command": sys.argv, "settings": asdict(s), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
