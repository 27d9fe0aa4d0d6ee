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
from ..core.jsonl import append_record
from ..core.likelihood import perplexity
from ..core.model_spec import ModelSpec
from ..core.rows import SHORT, BaseRow, Checkpoint, EvalRow, Metrics, encoding_counts, write_scores
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
    scores: dict | None = None,
) -> dict:
    """{"c4": {loss, ppl, tokens} | None, split: {id_ppl, id_nll, acc, label_token_acc, n, ...}}.

    ``scores``: a dict to receive the per-example scores (``core.rows.write_scores``' layout):
    "c4" -> {nll, tokens} per C4 window, "val"/"test" -> ``task_metrics``' ``examples``. They are
    the same forward passes' numbers, so asking for them costs no extra compute."""
    out: dict = {"c4": None}
    if c4_tokens is not None:  # full-context windows: a quarter of the (short) task batch size
        seq_len = c4_seq_len or spec.max_sequence_length
        out["c4"] = perplexity(
            model,
            c4_tokens,
            seq_len,
            batch_size=max(1, batch_size // 4),
            precision=precision,
            vocab_size=spec.vocab_size,
            per_window=True,
        )
        nll = out["c4"].pop("window_nll")
        if scores is not None:
            scores["c4"] = {"nll": nll, "tokens": np.full(len(nll), seq_len, dtype=np.int64)}
    for split, enc in encoded.items():
        out[split] = task_metrics(
            model, enc, batch_size, vocab_size=spec.vocab_size, precision=precision, pad_id=spec.pad_token_id
        )
        examples = out[split].pop("examples")
        if scores is not None:
            scores[SHORT.get(split, split)] = examples
    return out


def result_rows(
    meta: dict,
    prov: dict,
    tasks: list,
    encoded: dict,
    result: dict,
    c4: np.ndarray | None,
    seq_len: int,
    scores: dict | None = None,
    results: str | None = None,
) -> Iterator[BaseRow]:
    """``evaluate --results`` rows: one per task (all C4-only without tasks); kind "base" for a
    pre-trained checkpoint, "eval" for any other (e.g. saved fine-tuned weights). With ``scores``
    ({"c4": .., task: {split: ..}}) and ``results``, each row's per-example scores are written
    beside the results file first (``core.rows.write_scores``) and named by its ``scores`` key."""
    cls = BaseRow if meta.get("kind", "pretrain") == "pretrain" else EvalRow
    common = dict(
        ckpt=Checkpoint(**prov),
        c4_tokens=result["c4"]["tokens"] if result["c4"] else None,
        c4_tokens_sha256=c4_identity(c4, seq_len) if c4 is not None else None,
    )
    save = (lambda d: write_scores(results, d)) if scores is not None and results else (lambda d: None)
    c4_scores = {"c4": scores["c4"]} if scores and "c4" in scores else {}
    if not tasks:
        yield cls(**common, evaluation=Metrics.of({"c4": result["c4"]}), scores=save(c4_scores), time=time.time())
    for task in tasks:
        yield cls(
            **common,
            task=task.name,
            task_type=task.type,
            template=task.template,
            evaluation=Metrics.of({"c4": result["c4"], **result["tasks"][task.name]}),
            **encoding_counts(encoded[task.name]),
            scores=save({**c4_scores, **(scores or {}).get(task.name, {})}),
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


def run(config: EvaluateConfig, checkpoint: str) -> int:
    splits, task_names = config.splits, config.tasks
    step_dir = resolve_checkpoint(checkpoint)
    device = resolve_device(config.device)
    # Everything that can fail on input is checked before the model runs.
    model, spec, meta = load_model(step_dir, device=device)
    tok = check_tokenizer(spec, str(step_dir))
    tasks = [load_task(name, template=config.template) for name in task_names]
    encoded = {t.name: encode_task(t, splits, tok, spec, config.max_examples) for t in tasks}
    c4 = load_c4(config.c4, spec, config.c4_max_tokens, spec.max_sequence_length) if config.c4 else None

    t0 = time.time()
    scores: dict = {}
    c4_result = (
        evaluate_encoded(model, spec, {}, c4, config.batch_size, scores=scores)["c4"] if c4 is not None else None
    )
    result = {"c4": c4_result, "tasks": {}}
    for t in tasks:
        scores[t.name] = {}
        result["tasks"][t.name] = evaluate_encoded(
            model, spec, encoded[t.name], None, config.batch_size, scores=scores[t.name]
        )
        result["tasks"][t.name].pop("c4")
    prov = checkpoint_provenance(step_dir, spec, meta)
    if config.results:
        rows = result_rows(meta, prov, tasks, encoded, result, c4, spec.max_sequence_length, scores, config.results)
        for row in rows:
            append_record(config.results, row.to_dict())
    if config.json:
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
