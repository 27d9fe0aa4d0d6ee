"""An independent implementation scores our checkpoints: lm-evaluation-harness and transformers
on an export agree with the framework's own class scores and C4 perplexity.

RTE requests are the framework's (configs/tasks/rte.yaml; its test split is GLUE's validation
set): context = [EOS] + tokens(prompt) (``overtrain.data.encode``), given to lm-eval as the
text "<|endoftext|>" + prompt, which its tokenizer maps to the same ids (asserted).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from overtrain.core.checkpoint import load_model
from overtrain.core.likelihood import perplexity, windows
from overtrain.data.encode import encode_split
from overtrain.data.tasks import load_task
from overtrain.data.tokenizer import EOS_TOKEN, load_tokenizer
from overtrain.evaluate.task_metrics import class_logprobs
from overtrain.train.hf_export import export_hf
from test_hf import c4_tokens, hf_model, make_checkpoint  # noqa: E402  (also sets up transformers)

N_EXAMPLES = 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    run = make_checkpoint(root / "run", "mup", "finetune")
    export_hf(run, root / "export")
    model, spec, _ = load_model(run)
    return model, spec, root / "export"


def test_lm_eval_loglikelihoods_match_class_scores(exported, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, spec, export = exported
    task = load_task("rte")
    split = encode_split(task, "test", load_tokenizer(spec.tokenizer), spec.max_sequence_length, spec.eos_token_id)
    examples = task.examples("test")[:N_EXAMPLES]
    encoded = split.examples[:N_EXAMPLES]
    assert [e.id for e in encoded] == [e.id for e in examples]  # (a cut context would fail the token check below)
    mean, _ = class_logprobs(model, replace(split, examples=encoded), vocab_size=spec.vocab_size)

    lm = HFLM(pretrained=str(export), backend="causal", device="cpu", dtype="float32", batch_size=8)
    requests, ours = [], []
    for i, (ex, enc) in enumerate(zip(examples, encoded)):
        for c, (text, ids) in enumerate(zip(task.choices, split.choices)):
            context = EOS_TOKEN + ex.prompt
            assert lm._encode_pair(context, text) == (enc.context, ids)  # same prompt, same tokens
            requests.append(Instance("loglikelihood", doc={}, arguments=(context, text), idx=len(requests)))
            ours.append(mean[i, c] * len(ids))  # class score = mean token log-prob
    theirs = [ll for ll, _greedy in lm.loglikelihood(requests)]
    assert len(theirs) == 2 * N_EXAMPLES
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    assert np.std(ours) > 0.1  # scores that differ between requests: the match is not trivial


def test_c4_perplexity_matches_transformers(exported):
    model, spec, export = exported
    seq_len, tokens = 128, c4_tokens(10)[: 8 * 128 + 1]
    ours = perplexity(model, tokens, seq_len, batch_size=4, vocab_size=spec.vocab_size)

    theirs = hf_model(export)
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in torch.tensor(windows(tokens, seq_len)).split(4):
            logits = theirs(w[:, :-1]).logits.double()  # the export's vocabulary is the real one
            nll += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
            count += w[:, 1:].numel()
    assert count == ours["tokens"] == 8 * 128
    ppl = math.exp(nll / count)
    assert abs(ours["ppl"] - ppl) / ppl < 1e-4
