"""In-distribution (ID) metrics of a fine-tuning task, from ``continuation_logprobs``.

Classification (PROTOCOL.md "Evaluation"; Springer et al. 2025):
    score[i, c]   = mean over the tokens of choice c of log p(token | context_i, earlier tokens)
                    (length-normalized log-likelihood of the class's label text)
    p(c | i)      = softmax_c score[i, c]
    id_ppl        = exp(mean_i -log p(gold_i | i))     a uniform model gives exactly n_classes
    acc           = mean_i [argmax_c score[i, c] == gold_i]
    label_token_acc: the Amuro & Char "TokenProb" prediction, argmax_c of the probability of the
                    *first* token of choice c (ties go to the lower class index)
Multiple choice with per-example answers (``EncodedExample.choices``): the same formulas with
example i's own answer texts as its choices c = 0..C_i-1 (the answer texts are scored, not letters);
examples with fewer choices than the split's most are padded with score -inf (probability 0, never
the argmax), so ``n_classes`` is the largest C_i and ``n_choices`` (per example) holds each C_i;
an example is correct when the argmax answer's text is the gold answer's text (a record that lists
the same answer twice is not penalized for picking the other copy). label_token_acc compares first
tokens, which per-example answers often share: it is of little use for multiple choice.
Fixed-class tasks take the unchanged path (their numbers are identical to before).
LM tasks: id_ppl = exp(sum of target-token NLL / number of target tokens) (the standard LM loss;
the target tokens are the answer, or the whole sequence with ``loss_span: sequence``).

Per-example scores (``examples``, for the report's intervals; not row keys): classification
``nll`` (-log p(gold_i | i)), ``correct`` (argmax == gold), ``label`` (gold) and ``n_classes``; LM
``nll`` (summed over the example's target tokens; a long document's windows summed into one entry) and ``tokens``. The metrics above are their means
(classification) or sum ratio (LM), so a bootstrap over examples resamples exactly these numbers.

Log-probabilities are taken over the real vocabulary (``vocab_size``, 50280 for the OLMo
tokenizer): the padded embedding rows 50280..50303 never occur in data and are masked out of
the softmax, so a model with uniform logits has LM perplexity 50280, not 50304.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.likelihood import continuation_logprobs
from ..data.encode import EncodedSplit


def safe_exp(x: float) -> float:
    """exp that returns inf instead of raising for a diverged model's huge losses."""
    return math.exp(x) if x < 709.0 else math.inf


def class_logprobs(
    model,
    split: EncodedSplit,
    batch_size: int = 32,
    vocab_size: int | None = None,
    precision: str = "auto",
    pad_id: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean log-likelihood, first-token log-prob) of every choice for every example: two (N, C) arrays
    (per-example choices: C = the most choices of any example, the missing ones -inf)."""
    if not split.choices and split.examples and split.examples[0].choices is not None:
        return _per_example_logprobs(model, split, batch_size, vocab_size, precision, pad_id)
    n, c = len(split.examples), len(split.choices)
    pairs = [(ex.context, choice) for ex in split.examples for choice in split.choices]
    lps = continuation_logprobs(
        model, pairs, batch_size=batch_size, vocab_size=vocab_size, precision=precision, pad_id=pad_id
    )
    mean = np.array([lp.mean() for lp in lps], dtype=np.float64).reshape(n, c)
    first = np.array([lp[0] for lp in lps], dtype=np.float64).reshape(n, c)
    return mean, first


def _per_example_logprobs(model, split, batch_size, vocab_size, precision, pad_id) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(ex.context, choice) for ex in split.examples for choice in ex.choices]
    lps = iter(
        continuation_logprobs(
            model, pairs, batch_size=batch_size, vocab_size=vocab_size, precision=precision, pad_id=pad_id
        )
    )
    width = max(len(ex.choices) for ex in split.examples)
    mean = np.full((len(split.examples), width), -np.inf)
    first = np.full((len(split.examples), width), -np.inf)
    for i, ex in enumerate(split.examples):
        for c in range(len(ex.choices)):
            lp = next(lps)
            mean[i, c], first[i, c] = lp.mean(), lp[0]
    return mean, first


def classification_metrics_from_scores(mean: np.ndarray, first: np.ndarray, labels: np.ndarray) -> dict:
    """The classification metrics from per-class scores (see module docstring)."""
    shifted = mean - mean.max(axis=1, keepdims=True)  # stable log-softmax over classes
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_p[np.arange(len(labels)), labels]
    mean_nll = float(nll.mean())
    correct = mean.argmax(axis=1) == labels
    return {
        "id_ppl": safe_exp(mean_nll),
        "id_nll": mean_nll,
        "acc": float(correct.mean()),
        "label_token_acc": float((first.argmax(axis=1) == labels).mean()),
        "n": int(len(labels)),
        "examples": {"nll": nll, "correct": correct, "label": labels, "n_classes": np.int64(mean.shape[1])},
    }


def lm_metrics(
    model,
    split: EncodedSplit,
    batch_size: int = 32,
    vocab_size: int | None = None,
    precision: str = "auto",
    pad_id: int = 1,
) -> dict:
    pairs = [(ex.context, ex.completion) for ex in split.examples]
    lps = continuation_logprobs(
        model, pairs, batch_size=batch_size, vocab_size=vocab_size, precision=precision, pad_id=pad_id
    )
    nll = -sum(float(lp.sum()) for lp in lps)
    tokens = sum(len(lp) for lp in lps)
    loss = nll / tokens
    # one entry per document: the windows of a long document (EncodedExample.group) summed
    docs: dict[str, list[float]] = {}
    for ex, lp in zip(split.examples, lps):
        d = docs.setdefault(getattr(ex, "group", None) or ex.id, [0.0, 0])
        d[0] -= float(lp.sum())
        d[1] += len(lp)
    return {
        "id_ppl": safe_exp(loss),
        "id_nll": loss,
        "acc": None,
        "label_token_acc": None,
        "n": len(docs),
        "tokens": tokens,
        "examples": {
            "nll": np.array([d[0] for d in docs.values()]),
            "tokens": np.array([d[1] for d in docs.values()], dtype=np.int64),
        },
    }


def task_metrics(
    model,
    split: EncodedSplit,
    batch_size: int = 32,
    vocab_size: int | None = None,
    precision: str = "auto",
    pad_id: int = 1,
) -> dict:
    """ID metrics of one encoded split: id_ppl, id_nll, acc, label_token_acc (None for lm tasks), n,
    and the per-example ``examples`` (module doc)."""
    if not split.examples:
        raise ValueError(f"task '{split.task}' split '{split.split}' has no examples to evaluate")
    if split.type == "classification":
        mean, first = class_logprobs(model, split, batch_size, vocab_size, precision, pad_id)
        labels = np.array([ex.label for ex in split.examples])
        out = classification_metrics_from_scores(mean, first, labels)
        if split.examples[0].choices is not None:
            # an answer text given twice (a few SIQA records) scores twice the same: picking either is right
            pred = mean.argmax(axis=1)
            correct = np.array([ex.choices[p] == ex.choices[ex.label] for ex, p in zip(split.examples, pred)])
            out["acc"] = float(correct.mean())
            out["examples"]["correct"] = correct
            out["examples"]["n_choices"] = np.array([len(ex.choices) for ex in split.examples], dtype=np.int64)
        return out
    return lm_metrics(model, split, batch_size, vocab_size, precision, pad_id)
