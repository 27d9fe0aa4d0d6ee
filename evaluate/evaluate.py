"""``overtrain evaluate CHECKPOINT``: C4 perplexity and per-task ID perplexity / accuracy.

    overtrain evaluate runs/x/checkpoints/step-00000100 --tasks rte,trec --c4 data/c4 \\
        [--splits validation,test] [--template default] [--max-examples 500] [--results FILE]

The same functions evaluate before and after fine-tuning (``overtrain finetune``/``sweep``):
``encode_task`` tokenizes a task's splits, ``evaluate_encoded`` computes C4 perplexity and the ID
metrics of ``overtrain.evaluate.metrics`` for each split. Evaluation is deterministic: fixed
example subsets, a fixed C4 prefix, no sampling. ``checkpoint_provenance`` gives the results-row
fields that identify a checkpoint (path, sha256 of model.pt, model, size, tokens, decay).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from overtrain.config import CheckpointError, ConfigError, DataError, expand_path
from overtrain.evaluate.core import perplexity
from overtrain.evaluate.metrics import task_metrics
from overtrain.evaluate.perturb import file_sha256
from overtrain.finetune.encode import EncodedSplit, encode_split
from overtrain.train.checkpoint import resolve_checkpoint
from overtrain.train.model import ModelSpec, count_params
from overtrain.train.tokenizer import eos_token_id, load_tokenizer

SPLITS = ("train", "validation", "test")


def load_task(name: str, overrides=(), template: str | None = None):
    """``overtrain.finetune.tasks.load_task`` (imported late: tasks pull in dataset readers)."""
    from overtrain.finetune.tasks import load_task as _load

    return _load(name, overrides, template=template)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_checkpoint_ref(ref: str | os.PathLike) -> Path:
    """A step directory from a path, ``RUN@tokens=N`` or ``RUN@step=N`` (see ``resolve_checkpoint``)."""
    return resolve_checkpoint(expand_path(ref))


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def checkpoint_sha256(step_dir: str | os.PathLike) -> str:
    """sha256 of the checkpoint's model.pt (content identity of the weights), cached per process."""
    f = Path(step_dir) / "model.pt"
    st = f.stat()
    return _sha256_cached(str(f), st.st_size, st.st_mtime_ns)


def checkpoint_provenance(step_dir: str | os.PathLike, spec: ModelSpec, meta: dict) -> dict:
    """The results-row fields that identify a checkpoint."""
    return {
        "checkpoint": str(Path(step_dir).resolve()),
        "checkpoint_sha256": checkpoint_sha256(step_dir),
        "checkpoint_step": meta.get("step"),
        "checkpoint_kind": meta.get("kind"),
        "model": spec.name,
        "non_embedding_params": count_params(spec)["non_embedding_params"],
        "pretrain_tokens": meta.get("tokens"),
        "budget_tokens": meta.get("budget_tokens"),
        "lr_decayed": meta.get("lr_decayed"),
        "final": meta.get("final"),
        "pretrain_run": meta.get("run_dir"),
    }


def check_tokenizer(spec: ModelSpec, source: str):
    """The model's tokenizer, checked against the checkpoint's vocabulary and EOS id."""
    tok = load_tokenizer(spec.tokenizer)
    if tok.get_vocab_size() != spec.vocab_size or eos_token_id(tok) != spec.eos_token_id:
        raise CheckpointError(
            f"{source}: model vocab_size={spec.vocab_size}, eos={spec.eos_token_id} but tokenizer '{spec.tokenizer}' "
            f"has {tok.get_vocab_size()} ids, eos={eos_token_id(tok)} (a checkpoint from another vocabulary?)"
        )
    return tok


def load_c4(c4_dir: str | os.PathLike, spec: ModelSpec, max_tokens: int | None, seq_len: int) -> np.ndarray:
    """The evaluated prefix of a prepared directory's held-out C4 validation tokens (never trained on).

    The directory's tokenizer must match the model's vocabulary and EOS (``check_vocab``).
    """
    from overtrain.train.data import open_prepared

    data = open_prepared(c4_dir)
    data.check_vocab(spec)
    tokens = data.tokens("val")
    if len(tokens) < seq_len + 1:
        raise DataError(f"{data.path}/val.npy: {len(tokens)} validation tokens, need at least {seq_len + 1} for one window")
    n = len(tokens) if max_tokens is None else min(len(tokens), max(1, max_tokens // seq_len) * seq_len + 1)
    return np.asarray(tokens[:n])


def encode_task(task, splits, tokenizer, spec: ModelSpec, max_examples: dict | int | None = None, cap_seed: int = 0) -> dict[str, EncodedSplit]:
    """Tokenize the named splits of ``task``; an empty split is an error (before any work)."""
    out = {}
    for split in splits:
        cap = max_examples.get(split) if isinstance(max_examples, dict) else max_examples
        enc = encode_split(task, split, tokenizer, spec.max_sequence_length, spec.eos_token_id, cap, cap_seed)
        if not enc.examples:
            raise DataError(f"task '{task.name}' split '{split}': no usable examples ({enc.total} in the split, {enc.skipped_empty} empty)")
        out[split] = enc
    return out


def c4_perplexity(model, spec: ModelSpec, tokens: np.ndarray, batch_size: int = 8, seq_len: int | None = None, precision: str = "auto") -> dict:
    """{loss, ppl, tokens} on C4 validation windows of the model's context, over the real vocabulary."""
    return perplexity(model, tokens, seq_len or spec.max_sequence_length, batch_size=batch_size, precision=precision, vocab_size=spec.vocab_size)


def evaluate_encoded(model, spec: ModelSpec, encoded: dict[str, EncodedSplit], c4_tokens: np.ndarray | None,
                     batch_size: int = 32, c4_seq_len: int | None = None, precision: str = "auto") -> dict:
    """{"c4": {loss, ppl, tokens} | None, split: {id_ppl, id_nll, acc, label_token_acc, n, ...}}."""
    out: dict = {"c4": None}
    if c4_tokens is not None:  # full-context windows: a quarter of the (short) task batch size
        out["c4"] = c4_perplexity(model, spec, c4_tokens, max(1, batch_size // 4), c4_seq_len, precision)
    for split, enc in encoded.items():
        out[split] = task_metrics(model, enc, batch_size, vocab_size=spec.vocab_size, precision=precision, pad_id=spec.pad_token_id)
    return out


# Short split names used in results-row keys (val_id_ppl, test_acc, ...).
SHORT = {"validation": "val", "test": "test", "train": "train"}


def flatten_metrics(metrics: dict, suffix: str = "") -> dict:
    """``{"c4": .., "validation": {...}}`` -> {c4_ppl, val_id_ppl, val_acc, val_label_token_acc, ...}."""
    row = {}
    if metrics.get("c4") is not None:
        row[f"c4_ppl{suffix}"] = metrics["c4"]["ppl"]
        row[f"c4_loss{suffix}"] = metrics["c4"]["loss"]
    for split, m in metrics.items():
        if split == "c4":
            continue
        s = SHORT.get(split, split)
        for k in ("id_ppl", "acc", "label_token_acc"):
            row[f"{s}_{k}{suffix}"] = m.get(k)
    return row


def add_arguments(p):
    p.add_argument("checkpoint", help="a checkpoint step dir, checkpoints/ dir, run dir, or RUN@tokens=N")
    p.add_argument("--tasks", default="", help="comma-separated task names or YAML paths (configs/tasks/)")
    p.add_argument("--c4", default=None, help="prepared C4 directory (val.npy) for C4 perplexity")
    p.add_argument("--splits", default="validation,test", help="task splits to evaluate")
    p.add_argument("--template", default=None, help="prompt template of every task (default: each task's default)")
    p.add_argument("--max-examples", type=int, default=None, help="cap each split (seeded random subset)")
    p.add_argument("--c4-max-tokens", type=int, default=1_048_576, help="predicted C4 tokens (a fixed prefix of val.npy)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--results", default=None, help="append one row per task to this results.jsonl")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args) -> int:
    from overtrain.train.checkpoint import load_model

    splits = [s for s in args.splits.split(",") if s]
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"command line: --splits: unknown split(s) {bad} (known: {', '.join(SPLITS)})")
    task_names = [t for t in args.tasks.split(",") if t]
    if not task_names and not args.c4:
        raise ConfigError("command line: nothing to evaluate: give --tasks and/or --c4")
    step_dir = resolve_checkpoint_ref(args.checkpoint)
    device = pick_device(args.device)
    # Everything that can fail on input is checked before the model runs.
    model, spec, meta = load_model(step_dir, device=device)
    tok = check_tokenizer(spec, str(step_dir))
    tasks = [load_task(name, template=args.template) for name in task_names]
    encoded = {t.name: encode_task(t, splits, tok, spec, args.max_examples) for t in tasks}
    c4 = load_c4(args.c4, spec, args.c4_max_tokens, spec.max_sequence_length) if args.c4 else None

    t0 = time.time()
    result = {"c4": c4_perplexity(model, spec, c4, max(1, args.batch_size // 4)) if c4 is not None else None,
              "tasks": {t.name: evaluate_encoded(model, spec, encoded[t.name], None, args.batch_size) for t in tasks}}
    for metrics in result["tasks"].values():
        metrics.pop("c4")
    prov = checkpoint_provenance(step_dir, spec, meta)
    if args.results:
        from overtrain.evaluate.results import append_row

        # "base": a pre-trained checkpoint; "eval": any other (e.g. saved fine-tuned weights).
        kind = "base" if meta.get("kind", "pretrain") == "pretrain" else "eval"
        common = {"kind": kind, **prov, "c4_tokens": result["c4"]["tokens"] if result["c4"] else None}
        if not tasks:
            append_row(args.results, {**common, "task": None, **flatten_metrics({"c4": result["c4"]}), "time": time.time()})
        for task in tasks:
            enc = encoded[task.name]
            append_row(args.results, {
                **common, "task": task.name, "task_type": task.type, "template": task.template,
                **flatten_metrics({"c4": result["c4"], **result["tasks"][task.name]}),
                "n_examples": {s: len(e.examples) for s, e in enc.items()}, "truncated": {s: e.truncated for s, e in enc.items()},
                "completion_truncated": {s: e.completion_truncated for s, e in enc.items()},
                "skipped_empty": {s: e.skipped_empty for s, e in enc.items()}, "time": time.time()})
    if args.json:
        print(json.dumps({**prov, **result}, indent=2))
        return 0
    print(f"{step_dir}  ({spec.name}, {prov['pretrain_tokens']} tokens, lr_decayed={prov['lr_decayed']})  [{time.time() - t0:.1f}s]")
    if result["c4"] is not None:
        print(f"  C4 perplexity {result['c4']['ppl']:.3f} over {result['c4']['tokens']:,} tokens")
    for task in tasks:
        for split in splits:
            m, enc = result["tasks"][task.name][split], encoded[task.name][split]
            acc = "" if m["acc"] is None else f"  acc {m['acc']:.3f}  label-token acc {m['label_token_acc']:.3f}"
            trunc = f"  ({enc.truncated} prompts truncated)" if enc.truncated else ""
            print(f"  {task.name:>16} {split:<10} ID ppl {m['id_ppl']:.4f}{acc}  n={m['n']}{trunc}")
    return 0
