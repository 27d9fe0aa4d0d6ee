"""8-GPU DDP scaling and the paper grid's wall time: an estimate from published anchors, no training.

    .venv/bin/python benchmarks/ddp_estimate.py                                  # 8x A100 / 8x H100 table
    .venv/bin/python benchmarks/ddp_estimate.py --grid-plan paper_plan.json      # + the grid's wall time

Method and assumptions: benchmarks/README.md ("8x A100 / 8x H100 DDP scaling").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from overtrain.core.model_spec import count_params, flops_per_token, load_model_spec

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="olmo-15m,olmo-30m,olmo-90m", help="comma-separated names in configs/models/")
    ap.add_argument(
        "--grid-plan", default=None, help="`overtrain grid plan GRID json=true` output: also print the grid's wall time"
    )
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    out = {"ddp_estimate": print_ddp_estimate([m.strip() for m in args.models.split(",") if m.strip()])}
    if args.grid_plan:
        out["grid"] = print_grid_time(args.grid_plan, out["ddp_estimate"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
