"""Task examples -> token sequences for fine-tuning and evaluation.

Every example becomes a (context, completion) pair of token ids:

    context    = [EOS] + tokens(prompt)      EOS marks a document start, as between C4 documents
                                             in pre-training, and keeps the context non-empty
    completion = tokens(completion)          classification: tokens(choices[label])

Prompt and completion are tokenized separately (choices carry their leading space, e.g. " yes"),
so the completion tokens are identical for every example and identical at training and scoring
time. A pair must fit the model: len(context) + len(completion) - 1 <= max_len (the model input
is the pair minus its last token). Too-long contexts lose tokens from the *left* (the end of the
prompt, next to the answer, is kept) and are counted; a classification context is cut to fit
its longest choice, so every class is scored against the same context. A completion longer than
max_len - 1 (LM tasks only) is cut from the right and counted. Examples with an empty prompt or
empty completion are skipped and counted.

Training sequences: input = (context + completion)[:-1], target = -100 on context positions and
padding, the completion tokens elsewhere, so the loss is on completion tokens only.

Per-example answer choices (multiple choice, ``Example.choices``): each example carries its own
choices' token ids (``EncodedExample.choices``); the completion is its correct answer's tokens (the
fine-tuning loss is on the correct answer text), and its context is cut to fit its longest choice.

Loss span (lm tasks, ``Task.loss_span``): "answer" is the above. "sequence" tokenizes and truncates
exactly as "answer" (the same token sequence), then moves the prompt tokens into the completion:
context = [EOS], completion = tokens(prompt) + tokens(answer), so training and the ID perplexity
cover every token after the document-start EOS. An lm task whose template has no prompt (a whole
document, ``Task.has_prompt`` False) keeps its empty prompt: context = [EOS].

Long documents (lm tasks, ``Task.long_documents``): "truncate" cuts a completion longer than
max_len - 1 from the right (counted in ``completion_truncated``). "windows" keeps every token: the
first window is the context (cut from the left to at most max_len // 2 tokens) and as many
completion tokens as fit; each next window has as context the one token before it and up to
max_len - 1 completion tokens, so every completion token is a target exactly once (the windows
after the first see only one token of the document before them). The windows of one document
share ``EncodedExample.group`` (the example id; later windows are ``ID#wK``), and
``evaluate.task_metrics`` scores a document as the sum over its windows. ``split_windows`` counts
the documents split.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.errors import DataError
from ..core.model_spec import ModelSpec


@dataclass
class EncodedExample:
    id: str
    context: list[int]
    completion: list[int]
    label: int | None  # gold class index (classification) or None (lm)
    choices: list[list[int]] | None = None  # per-example answer choices' token ids (multiple choice)
    group: str | None = None  # long_documents windows: the document's example id (shared by its windows)


@dataclass
class EncodedSplit:
    task: str
    split: str
    type: str  # "classification" | "lm"
    examples: list[EncodedExample]
    choices: list[list[int]] = field(default_factory=list)  # token ids of each class's completion ([]: per example)
    truncated: int = 0  # contexts cut from the left
    completion_truncated: int = 0  # completions cut from the right (lm tasks)
    skipped_empty: int = 0  # examples with an empty prompt or completion
    total: int = 0  # examples in the split before caps and skips
    loss_span: str = "answer"  # "answer" | "sequence" (lm tasks; module doc)
    split_windows: int = 0  # documents split into several windows (long_documents: windows)
    source: str = ""  # the task's source, one line (``Task.source``; the rows' task_source)

    def counts(self) -> dict:
        return {
            "examples": len(self.examples),
            "truncated": self.truncated,
            "completion_truncated": self.completion_truncated,
            "skipped_empty": self.skipped_empty,
            "total": self.total,
        }


def cap_examples(examples: Sequence, max_examples: int | None, seed: int = 0) -> list:
    """A seeded random subset of at most ``max_examples`` (original order kept).

    A fixed seed, independent of the run seed, so every checkpoint and LR sees the same subset;
    random rather than the first N because some sources list examples grouped by class.
    """
    examples = list(examples)
    if max_examples is None or max_examples <= 0 or len(examples) <= max_examples:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def encode_split(
    task, split: str, tokenizer, max_len: int, eos_id: int, max_examples: int | None = None, cap_seed: int = 0
) -> EncodedSplit:
    """Tokenize ``task.examples(split)`` (a Task from ``overtrain.data.tasks``) for a model of context ``max_len``."""
    if max_len < 2:
        raise DataError(f"model context {max_len} is too short for a prompt and a completion")
    raw = task.examples(split)
    per_example = getattr(task, "per_example_choices", False)
    classification = task.type == "classification"
    choices = [tokenizer.encode(c).ids for c in task.choices] if classification and not per_example else []
    if classification and not per_example:
        if len(choices) < 2:
            raise DataError(
                f"task '{task.name}': a classification task needs at least 2 choices, has {len(task.choices)}"
            )
        _check_choices(task.name, task.choices, choices, max_len)
    loss_span = getattr(task, "loss_span", "answer")
    out = EncodedSplit(
        task.name, split, task.type, [], choices, total=len(raw), loss_span=loss_span, source=_source(task)
    )
    longest_choice = max((len(c) for c in choices), default=0)
    needs_prompt = getattr(task, "has_prompt", True)
    windows = getattr(task, "long_documents", "truncate") == "windows"
    for ex in cap_examples(raw, max_examples, cap_seed):
        own = None
        if classification and per_example:
            own = [tokenizer.encode(c).ids for c in ex.choices]
            _check_choices(f"{task.name}' example '{ex.id}", ex.choices, own, max_len)
            if ex.label is None or not 0 <= ex.label < len(own):
                raise DataError(
                    f"task '{task.name}' split '{split}' example {ex.id}: label {ex.label!r} is outside its {len(own)} choices"
                )
            completion = list(own[ex.label])
            room = max_len + 1 - max(len(c) for c in own)
        elif classification:
            if ex.label is None or not 0 <= ex.label < len(choices):
                raise DataError(
                    f"task '{task.name}' split '{split}' example {ex.id}: label {ex.label!r} is outside the {len(choices)} declared classes"
                )
            completion = list(choices[ex.label])
            room = max_len + 1 - longest_choice
        else:
            completion = tokenizer.encode(ex.completion).ids
            if len(completion) > max_len - 1 and windows:
                room = max_len // 2  # the context's share; the rest of the first window is completion
            elif len(completion) > max_len - 1:
                completion = completion[: max_len - 1]
                out.completion_truncated += 1
                room = max_len + 1 - len(completion)
            else:
                room = max_len + 1 - len(completion)
        if (needs_prompt and not ex.prompt.strip()) or not completion:
            out.skipped_empty += 1
            continue
        context = [eos_id] + (tokenizer.encode(ex.prompt).ids if ex.prompt else [])
        if len(context) > room:
            context = context[len(context) - room :]
            out.truncated += 1
        pieces = [(context, completion)]
        if not classification and len(context) + len(completion) - 1 > max_len:  # windows (module doc)
            first = max_len + 1 - len(context)
            pieces = [(context, completion[:first])]
            pieces += [
                ([completion[k - 1]], completion[k : k + max_len - 1])
                for k in range(first, len(completion), max_len - 1)
            ]
            out.split_windows += 1
        for k, (ctx, comp) in enumerate(pieces):
            if loss_span == "sequence" and not classification and k == 0:
                ctx, comp = ctx[:1], ctx[1:] + comp  # same tokens, loss on all but the first
            rid, group = (str(ex.id) if k == 0 else f"{ex.id}#w{k}"), (str(ex.id) if len(pieces) > 1 else None)
            out.examples.append(EncodedExample(rid, ctx, comp, ex.label, own, group))
    return out


def _check_choices(name: str, texts, ids: list[list[int]], max_len: int) -> None:
    for text, tokens in zip(texts, ids):
        if not tokens:
            raise DataError(f"task '{name}': choice {text!r} tokenizes to nothing")
        if len(tokens) > max_len - 1:
            raise DataError(
                f"task '{name}': choice {text!r} has {len(tokens)} tokens, longer than the context {max_len}"
            )


def _source(task) -> str:
    try:
        return str(task.source)
    except AttributeError:  # a task-like object without a recorded source (tests' fakes)
        return ""


def training_pair(ex: EncodedExample) -> tuple[list[int], list[int]]:
    """(input_ids, targets) of one example: loss on completion tokens only."""
    seq = ex.context + ex.completion
    targets = [-100] * (len(ex.context) - 1) + ex.completion
    return seq[:-1], targets


def collate(
    examples: Sequence[EncodedExample], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, targets) tensors of a micro-batch; padding targets are -100."""
    pairs = [training_pair(ex) for ex in examples]
    width = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), width), -100, dtype=torch.long)
    for i, (xi, yi) in enumerate(pairs):
        x[i, : len(xi)] = torch.tensor(xi)
        y[i, : len(yi)] = torch.tensor(yi)
    return x.to(device), y.to(device)


def encode_task(
    task, splits, tokenizer, spec: ModelSpec, max_examples: dict | int | None = None, cap_seed: int = 0
) -> dict[str, EncodedSplit]:
    """Tokenize the named splits of ``task``; an empty split is an error (before any work)."""
    out = {}
    for split in splits:
        cap = max_examples.get(split) if isinstance(max_examples, dict) else max_examples
        enc = encode_split(task, split, tokenizer, spec.max_sequence_length, spec.eos_token_id, cap, cap_seed)
        if not enc.examples:
            raise DataError(
                f"task '{task.name}' split '{split}': no usable examples ({enc.total} in the split, {enc.skipped_empty} empty)"
            )
        out[split] = enc
    return out
