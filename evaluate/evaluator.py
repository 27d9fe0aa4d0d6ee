"""``overtrain evaluate CHECKPOINT``: C4 perplexity and per-task ID perplexity / accuracy.

    overtrain evaluate runs/x/checkpoints/step-00000100 tasks=rte,trec c4=data/c4 \\
        [splits=validation,test] [template=default] [max_examples=500] [results=FILE]

The same functions evaluate before and after fine-tuning (``overtrain finetune``/``sweep``; this
module is the evaluate stage's entry point for them): ``evaluate_encoded`` computes C4 perplexity
and the ID metrics of ``overtrain.evaluate.task_metrics`` for each split of a task encoded by
``overtrain.data.encode.encode_task``. Evaluation is deterministic: fixed example subsets, a fixed
C4 prefix, no sampling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..core.checkpoint import checkpoint_provenance, load_model, resolve_checkpoint
from ..core.dist import resolve_device
from ..core.identity import c4_identity
from ..core.likelihood import perplexity
from ..core.model import ModelSpec
from ..core.results import append_row
from ..core.rows import BaseRow, Checkpoint, EvalRow, Metrics, encoding_counts
from ..data.c4 import load_c4
from ..data.encode import EncodedSplit, encode_task
from ..data.task_spec import TASK_SPLITS
from ..data.tasks import load_task
from ..data.tokenizer import check_tokenizer
from .task_metrics import task_metrics


def c4_perplexity(
    model, spec: ModelSpec, tokens: np.ndarray, batch_size: int = 8, seq_len: int | None = None, precision: str = "auto"
) -> dict:
    """{loss, ppl, tokens} on C4 validation windows of the model's context, over the real vocabulary."""
    return perplexity(
        model,
        tokens,
        seq_len or spec.max_sequence_length,
        batch_size=batch_size,
        precision=precision,
        vocab_size=spec.vocab_size,
    )


def evaluate_encoded(
    model,
    spec: ModelSpec,
    encoded: dict[str, EncodedSplit],
    c4_tokens: np.ndarray | None,
    batch_size: int = 32,
    c4_seq_len: int | None = None,
    precision: str = "auto",
) -> dict:
    """{"c4": {loss, ppl, tokens} | None, split: {id_ppl, id_nll, acc, label_token_acc, n, ...}}."""
    out: dict = {"c4": None}
    if c4_tokens is not None:  # full-context windows: a quarter of the (short) task batch size
        out["c4"] = c4_perplexity(model, spec, c4_tokens, max(1, batch_size // 4), c4_seq_len, precision)
    for split, enc in encoded.items():
        out[split] = task_metrics(
            model, enc, batch_size, vocab_size=spec.vocab_size, precision=precision, pad_id=spec.pad_token_id
        )
    return out


def result_rows(
    meta: dict, prov: dict, tasks: list, encoded: dict, result: dict, c4: np.ndarray | None, seq_len: int
) -> Iterator[BaseRow]:
    """``evaluate --results`` rows: one per task (all C4-only without tasks); kind "base" for a
    pre-trained checkpoint, "eval" for any other (e.g. saved fine-tuned weights)."""
    cls = BaseRow if meta.get("kind", "pretrain") == "pretrain" else EvalRow
    common = dict(
        ckpt=Checkpoint(**prov),
        c4_tokens=result["c4"]["tokens"] if result["c4"] else None,
        c4_tokens_sha256=c4_identity(c4, seq_len) if c4 is not None else None,
    )
    if not tasks:
        yield cls(**common, evaluation=Metrics.of({"c4": result["c4"]}), time=time.time())
    for task in tasks:
        yield cls(
            **common,
            task=task.name,
            task_type=task.type,
            template=task.template,
            evaluation=Metrics.of({"c4": result["c4"], **result["tasks"][task.name]}),
            **encoding_counts(encoded[task.name]),
            time=time.time(),
        )


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class EvaluateConfig:
    tasks: list[str] = field(default_factory=list)  # task names or YAML paths (configs/tasks/), e.g. rte,trec
    c4: str | None = None  # prepared C4 directory (val.npy) for C4 perplexity
    splits: list[str] = field(default_factory=lambda: ["validation", "test"])  # task splits to evaluate
    template: str | None = None  # prompt template of every task (None: each task's default)
    max_examples: int | None = None  # cap each split (seeded random subset)
    c4_max_tokens: int = 1_048_576  # predicted C4 tokens (a fixed prefix of val.npy)
    batch_size: int = 32  # examples per forward (C4: a quarter of it, in windows)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    results: str | None = None  # append one row per task to this results.jsonl
    json: bool = False  # print the metrics as JSON

    def validate(self) -> None:
        bad = [s for s in self.splits if s not in TASK_SPLITS]
        if bad:
            raise ValueError(f"splits: unknown split(s) {bad} (known: {', '.join(TASK_SPLITS)})")
        if not self.tasks and not self.c4:
            raise ValueError("nothing to evaluate: give tasks=NAME[,NAME] and/or c4=DIR")


CONFIG = EvaluateConfig


def add_arguments(p):
    p.add_argument("checkpoint", help="a checkpoint step dir, checkpoints/ dir, run dir, or RUN@tokens=N")


def run(args) -> int:
    splits, task_names = args.splits, args.tasks
    step_dir = resolve_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    # Everything that can fail on input is checked before the model runs.
    model, spec, meta = load_model(step_dir, device=device)
    tok = check_tokenizer(spec, str(step_dir))
    tasks = [load_task(name, template=args.template) for name in task_names]
    encoded = {t.name: encode_task(t, splits, tok, spec, args.max_examples) for t in tasks}
    c4 = load_c4(args.c4, spec, args.c4_max_tokens, spec.max_sequence_length) if args.c4 else None

    t0 = time.time()
    result = {
        "c4": c4_perplexity(model, spec, c4, max(1, args.batch_size // 4)) if c4 is not None else None,
        "tasks": {t.name: evaluate_encoded(model, spec, encoded[t.name], None, args.batch_size) for t in tasks},
    }
    for metrics in result["tasks"].values():
        metrics.pop("c4")
    prov = checkpoint_provenance(step_dir, spec, meta)
    if args.results:
        for row in result_rows(meta, prov, tasks, encoded, result, c4, spec.max_sequence_length):
            append_row(args.results, row.to_dict())
    if args.json:
        print(json.dumps({**prov, **result}, indent=2))
        return 0
    print(
        f"{step_dir}  ({spec.name}, {prov['pretrain_tokens']} tokens, lr_decayed={prov['lr_decayed']})  [{time.time() - t0:.1f}s]"
    )
    if result["c4"] is not None:
        print(f"  C4 perplexity {result['c4']['ppl']:.3f} over {result['c4']['tokens']:,} tokens")
    for task in tasks:
        for split in splits:
            m, enc = result["tasks"][task.name][split], encoded[task.name][split]
            acc = "" if m["acc"] is None else f"  acc {m['acc']:.3f}  label-token acc {m['label_token_acc']:.3f}"
            trunc = f"  ({enc.truncated} prompts truncated)" if enc.truncated else ""
            print(f"  {task.name:>16} {split:<10} ID ppl {m['id_ppl']:.4f}{acc}  n={m['n']}{trunc}")
    return 0
