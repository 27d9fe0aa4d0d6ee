"""``overtrain lm-eval``: lm-evaluation-harness on a checkpoint in-process, no export.

A custom lm-eval task YAML over the local GLUE RTE dev set (overtrain's RTE test split) with
overtrain's default RTE prompt scores the same token sequences as ``overtrain evaluate``: its
per-example log-likelihoods equal our class scores (choices are one token each, so sum = mean)
and its accuracy equals our class-likelihood accuracy (``evaluate.task_metrics``) exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from overtrain.cli import main as cli
from overtrain.core.checkpoint import load_model
from overtrain.core.paths import data_root
from overtrain.data.encode import encode_split
from overtrain.data.tasks import load_task
from overtrain.data.tokenizer import load_tokenizer
from overtrain.evaluate import lm_eval as lm_eval_mod
from overtrain.evaluate.lm_adapter import make_lm
from overtrain.evaluate.report.lm_eval_rows import lm_eval_points
from overtrain.evaluate.task_metrics import class_logprobs, task_metrics
from test_hf import make_checkpoint  # noqa: E402

pytest.importorskip("lm_eval")

RTE_YAML = """\
task: rte_overtrain_local
dataset_path: csv
dataset_kwargs:
  data_files: {{test: "{dev}"}}
  delimiter: "\\t"
  quoting: 3
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{sentence1}}}}\\nQuestion: {{{{sentence2}}}} Yes or no?\\nAnswer:"
doc_to_choice: ["yes", "no"]
doc_to_target: "{{{{0 if label == 'entailment' else 1}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("lm_eval_cli") / "run", "mup", "pretrain", steps=6)


@pytest.fixture(scope="module")
def rte_yaml(tmp_path_factory):
    """One task directory for the module: lm-eval's task index is built once per directory set."""
    path = tmp_path_factory.mktemp("tasks") / "rte_overtrain_local.yaml"
    path.write_text(RTE_YAML.format(dev=data_root() / "rte" / "dev.tsv"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield path


def test_custom_rte_yaml_equals_class_likelihood_accuracy(run, rte_yaml, tmp_path):
    results = tmp_path / "results.jsonl"
    cfg = lm_eval_mod.LmEvalConfig(tasks=[str(rte_yaml)], device="cpu", results=str(results))
    rows, out = lm_eval_mod.lm_eval_checkpoint(str(run), cfg, log_samples=True)

    model, spec, _ = load_model(run)
    task = load_task("rte")
    split = encode_split(task, "test", load_tokenizer(spec.tokenizer), spec.max_sequence_length, spec.eos_token_id)
    assert len(split.examples) == 277 and split.truncated == 1  # both cut it to the last 257 tokens
    mean, _ = class_logprobs(model, split, vocab_size=spec.vocab_size)
    ours = task_metrics(model, split, 32, vocab_size=spec.vocab_size, pad_id=spec.pad_token_id)

    samples = sorted(out["samples"]["rte_overtrain_local"], key=lambda s: s["doc_id"])
    assert len(samples) == 277
    theirs = np.array([[ll for ll, _greedy in s["filtered_resps"]] for s in samples])
    lengths = np.array([len(c) for c in split.choices])
    assert list(lengths) == [1, 1]
    np.testing.assert_allclose(theirs, mean * lengths, rtol=0, atol=1e-4)
    assert np.std(theirs[:, 0] - theirs[:, 1]) > 0.01  # scores that differ between examples
    assert [s["target"] for s in samples] == [e.label for e in split.examples]

    (row,) = rows
    assert row["acc"] == pytest.approx(ours["acc"], abs=1e-12)
    assert row["n_examples"] == 277
    # the row carries the checkpoint provenance of every other row
    on_disk = [json.loads(line) for line in results.read_text().splitlines()]
    assert on_disk[0]["kind"] == "lm_eval" and on_disk[0]["task"] == "rte_overtrain_local"
    assert on_disk[0]["pretrain_tokens"] == 6 * 128 and on_disk[0]["lr_decayed"] is False
    assert len(on_disk[0]["checkpoint_sha256"]) == 64 and on_disk[0]["acc"] == row["acc"]
    assert lm_eval_points(on_disk, "acc") == {(spec.name, "rte_overtrain_local", False): [(768.0, row["acc"])]}
    # the report draws it against pre-training tokens
    from overtrain.evaluate.report import make_report

    _, _, figures = make_report([str(results)], tmp_path / "report")
    assert [p.name for p in figures] == ["lm_eval_rte_overtrain_local_acc.png"]


def test_cli_runs_at_a_token_mark_and_prints(run, rte_yaml, tmp_path, capsys):
    code = cli(["lm-eval", f"{run}@tokens=768", f"tasks={rte_yaml}", "limit=8", "device=cpu", "batch_size=4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "rte_overtrain_local" in out and "acc " in out and "n=8" in out


def test_unknown_task_fails_before_loading_the_model(run, rte_yaml, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lm_eval_mod, "load_model", boom)
    argv = ["lm-eval", str(run), "tasks=hellaswag,rte_overtrain_locl", f"include=[{rte_yaml.parent}]", "device=cpu"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s): rte_overtrain_locl (did you mean rte_overtrain_local" in err
    assert "hellaswag" not in err


def test_grid_lm_eval_stage(rte_yaml, tmp_path):
    from overtrain.core.errors import ConfigError
    from overtrain.core.paths import CONFIG_ROOT
    from overtrain.launch.plan import expand
    from overtrain.launch.spec import grid_fingerprint, load_grid

    demo = str(CONFIG_ROOT / "grids" / "demo.yaml")
    plain = load_grid(demo, [f"results_dir={tmp_path}", "pretrain.intermediate_tokens=[16K]"])
    stage = [f"lm_eval.tasks=[{rte_yaml}]", "lm_eval.args=[limit=50]"]
    spec = load_grid(demo, [f"results_dir={tmp_path}", "pretrain.intermediate_tokens=[16K]", *stage])
    jobs = [j for j in expand(spec) if j.kind == "lm-eval"]
    assert len(jobs) == 3 + 3  # every final checkpoint, and the 16K mark of every budget above it
    assert {tuple(j.argv[:1]) for j in jobs} == {("lm-eval",)} and f"tasks=[{rte_yaml}]" in jobs[0].argv
    assert any(j.argv[1].endswith("@tokens=16000") for j in jobs) and all("limit=50" in j.argv for j in jobs)
    assert all(j.after[0].startswith("pretrain/") for j in jobs)
    assert not any(j.kind == "lm-eval" for j in expand(plain))
    assert grid_fingerprint(plain) != grid_fingerprint(spec)
    with pytest.raises(ConfigError, match="lm_eval: tasks: unknown lm-eval task"):
        load_grid(demo, [f"results_dir={tmp_path}", f"lm_eval.tasks=[{rte_yaml.parent}, not_a_task]"])


def test_rolling_and_generation_requests(run):
    """loglikelihood_rolling = the sum of token log-probs after EOS; generate_until = greedy decoding cut at a stop."""
    import torch
    from lm_eval.api.instance import Instance
    from overtrain.core.likelihood import token_logprobs
    from overtrain.evaluate.generate import generate

    model, spec, _ = load_model(run)
    tok = load_tokenizer(spec.tokenizer)
    lm = make_lm(model, spec, tok, batch_size=4)
    text = "The quick brown fox jumps over the lazy dog. " * 30  # > 1 window of the 256-token context
    ids = tok.encode(text).ids
    assert len(ids) > spec.max_sequence_length
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    L = spec.max_sequence_length
    assert len(ids) <= 2 * L  # two windows: [EOS] + ids[:L-1] -> ids[:L]; then ids[end-L-1:end-1] -> ids[L:]
    first = torch.tensor([[spec.eos_token_id] + ids[:L]])
    second = torch.tensor([ids[len(ids) - L - 1 :]])
    with torch.no_grad():
        head = token_logprobs(model, first[:, :-1], first[:, 1:], spec.vocab_size).sum().item()
        tail = token_logprobs(model, second[:, :-1], second[:, 1:], spec.vocab_size)[0, -(len(ids) - L) :].sum().item()
    assert rolling == pytest.approx(head + tail, abs=1e-3)
    short = "Hello world, this is a test."
    (one,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0)])
    seq = torch.tensor([[spec.eos_token_id] + tok.encode(short).ids])
    with torch.no_grad():
        ref = token_logprobs(model, seq[:, :-1], seq[:, 1:], spec.vocab_size).sum().item()
    assert one == pytest.approx(ref, abs=1e-4)

    prompt = "Question: what is two plus two?\nAnswer:"
    new = generate(
        model, [spec.eos_token_id] + tok.encode(prompt).ids, 12, spec.vocab_size, stop_ids=[spec.eos_token_id]
    )
    full = tok.decode([i for i in new if i != spec.eos_token_id])
    kwargs = {"until": [full[3:6]] if len(full) > 6 else [], "max_gen_toks": 12}
    (out,) = lm.generate_until([Instance("generate_until", {}, (prompt, kwargs), 0)])
    assert out == (full.split(kwargs["until"][0])[0] if kwargs["until"] else full)
