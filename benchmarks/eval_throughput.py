"""Evaluation examples/s: batched + length-bucketed vs one example at a time; fine-tuning tokens/s.

    .venv/bin/python benchmarks/eval_throughput.py [--examples 64] [--batch-size 32] [--trials 3] [--threads N] [--model tiny]

Evaluation (target: batched >= 5x the one-at-a-time loop, examples/s on CPU), on real RTE
validation examples (classification, 2 classes: 2 scored continuations per example) and GSM8k
(LM: long completions), through ``overtrain.evaluate.task_metrics.task_metrics``:

- one at a time: ``batch_size=1``, one forward per (prompt, continuation) pair;
- batched: ``batch_size=B``, pairs sorted by length so a batch pads little;
- reference: a naive loop (full forward, logits at every position, as the brute-force tests do).

All three must give the same metrics (checked). Fine-tuning: optimizer steps of the demo config
(batch 8) through ``train_step``, in tokens/s (input tokens, and completion tokens the loss is
on), with the completion-only readout (``finetune.completion_loss``) vs the full-logits
``lm_loss``, in the same run. Figures: best of ``--trials``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import tempfile
import time

import numpy as np
import torch
from overtrain.core.likelihood import lm_loss
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.data.encode import encode_task
from overtrain.data.tasks import load_task
from overtrain.data.tokenizer import check_tokenizer
from overtrain.evaluate.task_metrics import task_metrics
from overtrain.finetune import finetune as ft
from overtrain.finetune.finetune_config import load_finetune_config


@torch.no_grad()
def naive_metrics(model, split, vocab_size):
    """One full forward per pair, log-softmax over every position: the pre-batching reference."""
    scores = []
    for ex in split.examples:
        conts = split.choices if split.type == "classification" else [ex.completion]
        row = []
        for cont in conts:
            logp = torch.log_softmax(model(torch.tensor([ex.context + cont])).logits[0, :, :vocab_size].float(), -1)
            row.append([logp[len(ex.context) - 1 + j, t].item() for j, t in enumerate(cont)])
        scores.append(row)
    if split.type == "classification":
        mean = np.array([[np.mean(c) for c in r] for r in scores])
        logz = np.log(np.exp(mean).sum(1))
        nll = logz - mean[np.arange(len(mean)), [ex.label for ex in split.examples]]
        return math.exp(nll.mean())
    lps = [lp for r in scores for lp in r[0]]
    return math.exp(-np.mean(lps))


def best_time(fn, trials):
    times, out = [], None
    for _ in range(trials):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--examples", type=int, default=64, help="examples per task")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="fine-tuning steps per trial")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = load_model_spec(args.model)
    model = build_model(spec, seed=0).eval()
    tok = check_tokenizer(spec, args.model)
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"python {platform.python_version()}, load average {load:.1f}"
    )
    print(
        f"model: {spec.name} (d_model {spec.d_model}, {spec.n_layers} layers, context {spec.max_sequence_length}); "
        f"best of {args.trials}; {args.examples} examples per task\n"
    )

    print(f"{'evaluation':<34}{'examples/s':>12}{'ratio':>8}   ID ppl")
    for name in ("rte", "trec", "gsm8k"):
        split = encode_task(load_task(name), ["validation"], tok, spec, args.examples)["validation"]
        n = len(split.examples)
        t1, one = best_time(lambda: task_metrics(model, split, batch_size=1, vocab_size=spec.vocab_size), args.trials)
        tb, bat = best_time(
            lambda: task_metrics(model, split, batch_size=args.batch_size, vocab_size=spec.vocab_size), args.trials
        )
        tn, naive = best_time(lambda: naive_metrics(model, split, spec.vocab_size), 1)
        # Compare log-perplexities: batching changes the fp32 summation order (tests/tolerances.py).
        assert math.isclose(one["id_nll"], bat["id_nll"], rel_tol=1e-4) and math.isclose(
            math.log(naive), bat["id_nll"], rel_tol=1e-4
        ), (one, bat, naive)
        print(f"{name} ({split.type}, {n} examples)")
        print(f"  {'naive loop (full logits)':<32}{n / tn:>12.1f}{t1 / tn:>8.2f}   {naive:.6g}")
        print(f"  {'one at a time (batch_size=1)':<32}{n / t1:>12.1f}{1.0:>8.2f}   {one['id_ppl']:.6g}")
        print(f"  {f'batched (batch_size={args.batch_size})':<32}{n / tb:>12.1f}{t1 / tb:>8.2f}   {bat['id_ppl']:.6g}")

    with tempfile.TemporaryDirectory() as tmp:
        from overtrain.core.checkpoint import save_model_checkpoint

        save_model_checkpoint(
            f"{tmp}/checkpoints",
            1,
            model,
            spec,
            {"step": 1, "tokens": 0, "final": True, "lr_decayed": True, "kind": "pretrain"},
        )
        print(f"\n{'fine-tuning (RTE, demo config)':<34}{'tokens/s':>12}{'ratio':>8}   completion tokens/s")
        base = None
        for label, loss_fn in (("full logits (lm_loss)", lm_loss), ("completion-only readout", ft.completion_loss)):
            cfg = load_finetune_config(
                "demo",
                [
                    f"checkpoint={tmp}",
                    "task=rte",
                    f"run_dir={tmp}/run",
                    f"max_steps={args.steps}",
                    f"max_examples={{train: {8 * args.steps}, validation: 8, test: 8}}",
                ],
            )
            p = ft.prepare(cfg)
            os.makedirs(cfg.run_dir, exist_ok=True)
            real = ft.completion_loss
            ft.completion_loss = loss_fn  # the loop looks it up at call time
            try:
                rates = [ft.train(dataclasses.replace(p), progress=False) for _ in range(args.trials)]
            finally:
                ft.completion_loss = real
            best = max(rates, key=lambda s: s["train_tokens_per_s"])
            per_target = best["train_tokens"] / best["train_seconds"]
            base = base or best["train_tokens_per_s"]
            print(
                f"  {label:<32}{best['train_tokens_per_s']:>12.0f}{best['train_tokens_per_s'] / base:>8.2f}   {per_target:.1f}"
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
