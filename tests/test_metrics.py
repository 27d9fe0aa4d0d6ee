"""ID metrics and encoding against independent brute force on the tiny model and real task data."""

import math

import numpy as np
import pytest
import torch
from overtrain.core.errors import DataError
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.data.encode import EncodedSplit, collate, encode_split, encode_task, training_pair
from overtrain.data.tasks import load_task
from overtrain.data.tokenizer import check_tokenizer
from overtrain.evaluate.evaluator import evaluate_encoded
from overtrain.evaluate.task_metrics import class_logprobs, classification_metrics_from_scores, task_metrics
from tolerances import loglik_rtol

SPEC = load_model_spec("tiny")
TOK = check_tokenizer(SPEC, "tiny")
V = SPEC.vocab_size
RTOL = loglik_rtol(SPEC)  # fp32 log-likelihoods in another summation order (tests/tolerances.py)


@pytest.fixture(scope="module")
def model():
    m = build_model(SPEC, seed=0)
    with torch.no_grad():  # sharpen the random readout so class scores differ clearly
        m.transformer.ff_out.weight.mul_(40.0)
    return m.eval()


@pytest.fixture(scope="module")
def splits():
    caps = {"validation": 6, "test": 4}
    out = {}
    for name in ("rte", "trec", "gsm8k"):
        task = load_task(name)
        out[name] = encode_task(task, ("validation", "test"), TOK, SPEC, caps)
    return out


@torch.no_grad()
def brute_logprobs(model, context, completion, vocab=V):
    """One sequence, full forward, manual log-softmax over the real vocabulary."""
    ids = torch.tensor([context + completion])
    logits = model(ids).logits[0].double()[:, :vocab]
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    logsm = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()
    return np.array([logsm[len(context) - 1 + j, t].item() for j, t in enumerate(completion)])


def brute_classification(model, split: EncodedSplit):
    mean = np.zeros((len(split.examples), len(split.choices)))
    first = np.zeros_like(mean)
    for i, ex in enumerate(split.examples):
        for c, choice in enumerate(split.choices):
            lp = brute_logprobs(model, ex.context, choice)
            mean[i, c], first[i, c] = lp.mean(), lp[0]
    nll = []
    for i, ex in enumerate(split.examples):
        z = sum(math.exp(s) for s in mean[i])
        nll.append(-math.log(math.exp(mean[i, ex.label]) / z))
    labels = np.array([ex.label for ex in split.examples])
    return (
        mean,
        first,
        {
            "id_nll": sum(nll) / len(nll),
            "acc": float(np.mean([int(np.argmax(mean[i])) == ex.label for i, ex in enumerate(split.examples)])),
            "label_token_acc": float(np.mean(first.argmax(1) == labels)),
        },
    )


@pytest.mark.parametrize("task", ["rte", "trec"])
def test_classification_metrics_match_brute_force(model, splits, task):
    split = splits[task]["validation"]
    mean, first, want = brute_classification(model, split)
    got_mean, got_first = class_logprobs(model, split, batch_size=5, vocab_size=V)
    # Per-token log-probs: fp32 (batched) against fp64 softmax of the same fp32 logits.
    np.testing.assert_allclose(got_mean, mean, rtol=RTOL)
    np.testing.assert_allclose(got_first, first, rtol=RTOL)
    got = task_metrics(model, split, batch_size=7, vocab_size=V)
    assert got["id_nll"] == pytest.approx(want["id_nll"], rel=RTOL)
    assert got["id_ppl"] == pytest.approx(math.exp(got["id_nll"]), rel=1e-12)
    assert got["acc"] == want["acc"] and got["label_token_acc"] == want["label_token_acc"]
    assert got["n"] == len(split.examples) == 6
    assert abs(got["id_ppl"] - len(split.choices)) > 1e-3  # the sharpened model is far from uniform


def test_lm_metrics_match_brute_force(model, splits):
    split = splits["gsm8k"]["validation"]
    nll = tokens = 0
    for ex in split.examples:
        lp = brute_logprobs(model, ex.context, ex.completion)
        nll, tokens = nll - lp.sum(), tokens + len(lp)
    got = task_metrics(model, split, batch_size=3, vocab_size=V)
    assert got["tokens"] == tokens
    assert got["id_nll"] == pytest.approx(nll / tokens, rel=RTOL)
    assert got["acc"] is None


def test_metrics_do_not_depend_on_batch_size(model, splits):
    split = splits["trec"]["test"]
    one, many = (task_metrics(model, split, batch_size=b, vocab_size=V) for b in (1, 64))
    # Another batch shape sums in another order: compare the log (id_nll), not id_ppl = exp(15.6)
    # (a 1-ulp change of the log is a 1e-6 relative change of the perplexity).
    assert one["id_nll"] == pytest.approx(many["id_nll"], rel=RTOL)
    # Accuracies are argmaxes: exact, since no two class scores are within the rounding bound.
    mean, first = class_logprobs(model, split, batch_size=64, vocab_size=V)
    for scores in (mean, first):
        top2 = np.sort(scores, axis=1)[:, -2:]
        assert np.all(top2[:, 1] - top2[:, 0] > RTOL * np.abs(top2).max())
    assert (one["acc"], one["label_token_acc"], one["n"]) == (many["acc"], many["label_token_acc"], many["n"])


def test_uniform_model_perplexity_is_classes_and_vocab(splits, tmp_path):
    m = build_model(SPEC, seed=0)
    with torch.no_grad():
        m.transformer.ff_out.weight.zero_()  # logits 0 everywhere: a uniform next-token distribution
    # Logits are exactly 0, so every log-prob is the one fp32 value -log(V) whatever the summation
    # order: class scores tie exactly (ID ppl = the class count), and LM perplexities are V up to
    # one rounding of log(V) (~1e-7 relative, times |log V| ~ 11 once exponentiated).
    for task, n_classes in (("rte", 2), ("trec", 6)):
        got = task_metrics(m, splits[task]["validation"], vocab_size=V)
        assert got["id_ppl"] == pytest.approx(n_classes, rel=1e-6)
    # LM: the real vocabulary (50280) when the padded rows are masked, as evaluation does ...
    assert task_metrics(m, splits["gsm8k"]["validation"], vocab_size=V)["id_ppl"] == pytest.approx(50280, rel=1e-5)
    # ... and the padded embedding size (50304) when they are not.
    assert task_metrics(m, splits["gsm8k"]["validation"], vocab_size=None)["id_ppl"] == pytest.approx(50304, rel=1e-5)
    tokens = np.random.default_rng(0).integers(0, V, size=3 * SPEC.max_sequence_length + 1)
    c4 = evaluate_encoded(m, SPEC, {}, tokens)["c4"]
    assert c4["ppl"] == pytest.approx(50280, rel=1e-5) and c4["tokens"] == 3 * SPEC.max_sequence_length


def test_classification_formulas_by_hand():
    mean = np.array([[-1.0, -2.0], [-3.0, -1.0], [-0.5, -0.5]])
    first = np.array([[-5.0, -1.0], [-3.0, -4.0], [-1.0, -2.0]])
    labels = np.array([0, 0, 1])
    got = classification_metrics_from_scores(mean, first, labels)
    p_gold = [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2)), 0.5]
    assert got["id_ppl"] == pytest.approx(math.exp(-np.mean(np.log(p_gold))))
    assert got["acc"] == pytest.approx(1 / 3)  # argmax [0, 1, 0 (tie -> lower index)]
    assert got["label_token_acc"] == pytest.approx(1 / 3)  # argmax [1, 0, 0]


def test_left_truncation_keeps_the_prompt_end_and_is_counted():
    task = load_task("rte")
    raw = {ex.id: ex for ex in task.examples("validation")}
    split = encode_split(task, "validation", TOK, SPEC.max_sequence_length, SPEC.eos_token_id, max_examples=40)
    assert split.truncated > 0  # RTE premises are longer than the tiny model's 128 tokens
    longest = max(len(c) for c in split.choices)
    n_cut = 0
    for ex in split.examples:
        full = [SPEC.eos_token_id] + TOK.encode(raw[ex.id].prompt).ids
        assert len(ex.context) + longest - 1 <= SPEC.max_sequence_length
        assert ex.context == full[len(full) - len(ex.context) :]  # a suffix: cut from the left
        n_cut += len(ex.context) < len(full)
    assert n_cut == split.truncated


class FakeTask:
    """The Task interface (DESIGN.md) over hand-made examples, for malformed-input cases."""

    def __init__(self, examples, choices=(" yes", " no"), type_="classification"):
        from overtrain.data.tasks import Example

        self.name, self.type, self.template, self.choices = "fake", type_, "default", list(choices)
        self._ex = [Example(str(i), p, c, lab) for i, (p, c, lab) in enumerate(examples)]

    def examples(self, split):
        return self._ex


def test_training_pairs_put_loss_on_completion_only():
    task = FakeTask([("Is it? Answer:", " no", 1), ("Short:", " yes", 0)])
    split = encode_split(task, "train", TOK, 128, SPEC.eos_token_id)
    x, y = collate(split.examples, SPEC.pad_token_id)
    for row, ex in enumerate(split.examples):
        inp, tgt = training_pair(ex)
        assert inp == (ex.context + ex.completion)[:-1]
        n_ctx = len(ex.context) - 1
        assert tgt[:n_ctx] == [-100] * n_ctx and tgt[n_ctx:] == ex.completion == TOK.encode(task.choices[ex.label]).ids
        assert y[row, len(tgt) :].eq(-100).all() and x[row, len(inp) :].eq(SPEC.pad_token_id).all()
    assert int((y >= 0).sum()) == 2  # one label token each


def test_bad_examples_are_errors_or_counted_skips():
    with pytest.raises(DataError, match="label 5 is outside"):
        encode_split(FakeTask([("p", " yes", 5)]), "train", TOK, 128, SPEC.eos_token_id)
    split = encode_split(
        FakeTask([("   ", "x", None), ("ok", "", None), ("fine", " text", None)], (), "lm"),
        "train",
        TOK,
        128,
        SPEC.eos_token_id,
    )
    assert split.skipped_empty == 2 and len(split.examples) == 1
    long = encode_split(FakeTask([("q", " word" * 300, None)], (), "lm"), "train", TOK, 64, SPEC.eos_token_id)
    assert (
        long.completion_truncated == 1 and len(long.examples[0].completion) == 63 and len(long.examples[0].context) == 2
    )
    with pytest.raises(DataError, match="no usable examples"):
        encode_task(FakeTask([("", " yes", 0)]), ["test"], TOK, SPEC)
