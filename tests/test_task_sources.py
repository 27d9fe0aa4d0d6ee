"""The paper's tasks as the paper ran them (issue 16, item 5): which source a task reads and why
(recorded in split_info and the rows' task_source), the Python-source fallback for Starcoder-Python
(dedup by content hash, split by a hash of the path), per-example multiple-choice answers scored
as the answer texts (against a brute-force loop), the loss span, long-document windows, and the hub
fallbacks that load with the pinned datasets (no loading scripts)."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from overtrain.core.errors import ConfigError, DataError
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.paths import CONFIG_ROOT
from overtrain.core.rows import FinetuneRow, encoding_counts, parse_row
from overtrain.data import task_source as tasks_mod
from overtrain.data.encode import collate, encode_split, training_pair
from overtrain.data.task_files import PY_EXCLUDED_DIRS, _capped, read_python_files
from overtrain.data.task_spec import TASK_SPLITS
from overtrain.data.tasks import id_hash_unit, list_tasks, load_task
from overtrain.data.tokenizer import check_tokenizer
from overtrain.evaluate.task_metrics import class_logprobs, task_metrics
from tolerances import loglik_rtol

SPEC = load_model_spec("tiny")
TOK = check_tokenizer(SPEC, "tiny")
V = SPEC.vocab_size
RTOL = loglik_rtol(SPEC)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Hermetic: hub_or_local tasks (boolq, python_code) read their local source on any machine."""
    monkeypatch.setenv("OVERTRAIN_OFFLINE", "1")


# ----------------------------------------------------------------------------- Python source fallback


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_python_files_dedup_by_content_skip_excluded_and_undecodable(tmp_path):
    write_tree(
        tmp_path,
        {
            "a.py": b"x = 1\n",
            "pkg/b.py": b"x = 1\n",  # same bytes as a.py: dropped (a.py comes first in path order)
            "pkg/c.py": b"def f():\n    return 2\n",
            "latin.py": "s = 'caf\xe9'\n".encode("latin-1"),  # not UTF-8: dropped, counted
            "site-packages/d.py": b"y = 3\n",  # installed packages and test suites are not read
            "test/test_e.py": b"z = 4\n",
            "notes.txt": b"not python\n",
        },
    )
    rows, summary = read_python_files(tmp_path)
    assert [r["path"] for r in rows] == ["a.py", "pkg/c.py"]
    assert rows[1]["content"] == "def f():\n    return 2\n"
    assert summary["files"] == 4 and summary["kept"] == 2
    assert summary["duplicates"] == 1 and summary["undecodable"] == 1
    assert {"site-packages", "test"} <= set(summary["excluded_dirs"]) == set(PY_EXCLUDED_DIRS)
    with pytest.raises(DataError, match=r"nope: not a folder"):
        read_python_files(tmp_path / "nope")


def split_paths(task) -> dict[str, set[str]]:
    return {s: {e.id.split(":", 1)[1] for e in task.examples(s)} for s in TASK_SPLITS}


def test_starcoder_offline_fallback_is_the_stdlib_split_by_path_hash():
    """Offline (no hub here), python_code reads this Python's standard library: deterministic,
    disjoint splits, each file's split given by the hash of its own path, never HumanEval."""
    task = load_task("python_code")
    info = task.split_info
    stdlib = sysconfig.get_paths()["stdlib"]
    assert task.source.startswith("local:python_files") and "unreachable" in task.source
    assert "offline stand-in for Starcoder-Python" in task.source
    assert info["train"]["from"] == stdlib and info["train"]["python_files"]["root"] == stdlib
    assert info["train"]["python_files"]["kept"] == info["train"]["records"] > 300
    paths = split_paths(task)
    assert not (
        paths["train"] & paths["validation"] or paths["train"] & paths["test"] or paths["validation"] & paths["test"]
    )
    for split, lo, hi in (("validation", 0.0, 0.1), ("test", 0.1, 0.2)):
        assert all(lo <= id_hash_unit(1234, "train", p) < hi for p in paths[split])
        assert info[split]["carve_by"] == "id_hash" and 0.05 < len(paths[split]) / info["train"]["records"] < 0.15
    assert all(not lo <= id_hash_unit(1234, "train", p) < 0.2 for p in paths["train"])
    assert paths == split_paths(load_task("python_code"))  # deterministic
    texts = [e.completion for s in TASK_SPLITS for e in task.examples(s)]
    assert len(set(texts)) == len(texts)  # deduplicated
    assert not any("HumanEval" in p or "humaneval" in p.lower() for s in paths.values() for p in s)
    assert all(not set(Path(p).parts[:-1]) & PY_EXCLUDED_DIRS for s in paths.values() for p in s)
    e = task.examples("test")[0]
    assert e.prompt == "" and e.completion == (Path(stdlib) / e.id.split(":", 1)[1]).read_text()  # whitespace kept


def test_id_hash_split_is_stable_when_files_come_and_go(tmp_path):
    """Adding files moves no existing file between splits (a shuffle-carve would reshuffle them)."""
    files = {f"m{i:03d}.py": f"v = {i}\n".encode() for i in range(120)}
    write_tree(tmp_path / "src", files)
    spec = CONFIG_ROOT / "tasks" / "python_code.yaml"
    body = yaml.safe_load(spec.read_text())
    body["source"] = {"local": {**body["source"]["local"], "train": "src"}}
    (tmp_path / "py.yaml").write_text(yaml.safe_dump(body))
    before = split_paths(load_task(tmp_path / "py.yaml"))
    write_tree(tmp_path / "src", {f"n{i:03d}.py": f"w = {i}\n".encode() for i in range(40)})
    after = split_paths(load_task(tmp_path / "py.yaml"))
    for split in TASK_SPLITS:
        assert {p for p in after[split] if p.startswith("m")} == before[split]
    assert sum(map(len, after.values())) == 160


# ----------------------------------------------------------------------------- which source, recorded


def test_boolq_offline_is_the_demo_copy_and_says_so():
    task = load_task("boolq")
    assert task.source.startswith("local:arrow") and "OFFLINE DEMO ONLY" in task.source
    assert "google/boolq unreachable" in task.source
    assert "unreachable" in task.split_info["train"]["note"]
    spec = yaml.safe_load((CONFIG_ROOT / "tasks" / "boolq.yaml").read_text())
    assert spec["source"]["prefer"] == "hub_or_local" and spec["source"]["hub"]["train"] == "train"


HUB_TASK = """
type: classification
source:
  prefer: hub_or_local
  local: {{format: csv, note: "offline copy", train: d.csv, validation: {{carve_from: train, size: 2}},
          test: {{carve_from: train, size: 2}}}}
  hub: {{path: csv, data_files: {{train: d.csv}}, cache_dir: hf_cache, note: "the real thing", {extra}
        train: train, validation: {{carve_from: train, size: 2}}, test: {{carve_from: train, size: 2}}}}
inputs: [review]
classes: {{pos: " great", neg: " bad"}}
templates: {{default: {{prompt: "Review: {{review}}\\nIt was"}}}}
"""


def write_hub_task(tmp_path, extra=""):
    rows = [(f"review number {i}", "pos" if i % 2 else "neg") for i in range(12)]
    (tmp_path / "d.csv").write_text("review,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    (tmp_path / "t.yaml").write_text(HUB_TASK.format(extra=extra))
    return tmp_path / "t.yaml"


def test_hub_or_local_reads_the_hub_when_reachable_and_records_it(tmp_path, monkeypatch):
    path = write_hub_task(tmp_path)
    monkeypatch.setattr(tasks_mod, "hub_unreachable", lambda: "")
    task = load_task(path)
    assert task.source == "hub:csv (the real thing)" and task.split_info["train"]["source"] == "hub"
    enc = {s: encode_split(task, s, TOK, 64, SPEC.eos_token_id) for s in TASK_SPLITS}
    counts = encoding_counts(enc)
    assert counts["task_source"] == "hub:csv (the real thing)" and counts["loss_span"] is None
    row = FinetuneRow(task="t", **counts)
    d = row.to_dict()
    assert d["task_source"] == "hub:csv (the real thing)" and "loss_span" not in d
    assert parse_row(d).to_dict() == d
    old = {k: v for k, v in d.items() if k != "task_source"}  # rows written before the key still load
    assert parse_row(old).task_source is None


def test_hub_or_local_falls_back_to_local_when_unreachable(tmp_path, monkeypatch):
    path = write_hub_task(tmp_path)
    monkeypatch.setattr(tasks_mod, "hub_unreachable", lambda: "no connection (test)")
    task = load_task(path)
    assert task.source == "local:csv (hub csv unreachable: no connection (test)) (offline copy)"
    # HF offline mode: the hub's cached copy is tried first (the csv builder needs no network)
    monkeypatch.setattr(tasks_mod, "hub_unreachable", lambda: "HF_HUB_OFFLINE is set")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert load_task(path).source.startswith("hub:csv (HF offline mode: the cached copy)")


def test_a_reachable_hub_that_fails_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    path = write_hub_task(tmp_path)
    monkeypatch.setattr(tasks_mod, "hub_unreachable", lambda: "")
    with pytest.raises(DataError, match=r"does not fall back to its local source.*source\.prefer=local.*offline copy"):
        load_task(path, ["source.hub.data_files.train=gone.csv"]).examples("train")


def test_hub_unreachable_probe(monkeypatch):
    monkeypatch.delenv("OVERTRAIN_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert tasks_mod.hub_unreachable().startswith("no connection to 127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in tasks_mod.hub_unreachable()
    monkeypatch.setenv("OVERTRAIN_OFFLINE", "1")
    assert tasks_mod.hub_unreachable() == "OVERTRAIN_OFFLINE is set"


def test_hub_streaming_reads_a_capped_head(tmp_path, monkeypatch):
    path = write_hub_task(tmp_path, "streaming: true, max_records: 8,")
    task = load_task(path, ["source.prefer=hub"])
    info = task.split_info
    assert info["train"]["records"] == 8 and [len(task.examples(s)) for s in TASK_SPLITS] == [4, 2, 2]
    assert {e.prompt for e in task.examples("train")} | {
        e.prompt for s in ("validation", "test") for e in task.examples(s)
    } == {f"Review: review number {i}\nIt was" for i in range(8)}
    rows = [{"t": "abcd"}, {"t": "efgh"}, {"t": "ij"}]
    assert _capped(rows, 0, 9) == rows[:2] and _capped(rows, 1, 0) == rows[:1] and _capped(rows, 0, 0) == rows
    with pytest.raises(ConfigError, match=r"streaming: give max_records"):
        load_task(path, ["source.prefer=hub", "source.hub.max_records=0"])


SCRIPT_DATASETS = {"allenai/social_i_qa", "CogComp/trec", "social_i_qa", "trec"}  # loading scripts only


@pytest.mark.parametrize("name", list_tasks())
def test_hub_fallbacks_need_no_loading_script(name):
    """datasets 4.0 refuses script datasets: every hub source is a parquet/json repo, or the
    parquet conversion (refs/convert/parquet) of a script dataset."""
    hub = yaml.safe_load((CONFIG_ROOT / "tasks" / f"{name}.yaml").read_text())["source"].get("hub")
    if hub:
        assert hub["path"] not in SCRIPT_DATASETS or hub.get("revision") == "refs/convert/parquet", name


def test_every_paper_task_says_what_it_reads():
    """paper.yaml's tasks: each source that can be read says what it is (and why, if not the paper's)."""
    grid = yaml.safe_load((CONFIG_ROOT / "grids" / "paper.yaml").read_text())
    for name in grid["finetune"]["tasks"]:
        source = yaml.safe_load((CONFIG_ROOT / "tasks" / f"{name}.yaml").read_text())["source"]
        used = ["local"] if source.get("prefer", "local") == "local" and "local" in source else ["hub"]
        used += ["local"] if source.get("prefer") == "hub_or_local" else []
        for kind in used:
            assert source[kind].get("note", "").strip(), (name, kind)


# ----------------------------------------------------------------------------- per-example choices


@pytest.fixture(scope="module")
def model():
    m = build_model(SPEC, seed=0)
    with torch.no_grad():
        m.transformer.ff_out.weight.mul_(40.0)  # sharpen, so choices score clearly apart
    return m.eval()


@torch.no_grad()
def brute_logprobs(model, context, completion):
    ids = torch.tensor([context + completion])
    logits = model(ids).logits[0].double()[:, :V]
    logsm = torch.log_softmax(logits, dim=-1)
    return np.array([logsm[len(context) - 1 + j, t].item() for j, t in enumerate(completion)])


@pytest.mark.parametrize("name", ["siqa", "arc_easy"])
def test_per_example_choices_are_the_answer_texts_and_match_brute_force(model, name):
    task = load_task(name, ["max_examples.test=6"])
    split = encode_split(task, "test", TOK, SPEC.max_sequence_length, SPEC.eos_token_id)
    assert split.choices == [] and len(split.examples) == 6
    raw = {e.id: e for e in task.examples("test")}
    nll, correct = [], []
    for ex in split.examples:
        texts = raw[ex.id].choices
        assert ex.choices == [TOK.encode(t).ids for t in texts]  # the answers' texts, not letters
        assert ex.completion == ex.choices[ex.label] and texts[ex.label] == raw[ex.id].completion
        scores = [brute_logprobs(model, ex.context, c).mean() for c in ex.choices]
        z = math.log(sum(math.exp(s) for s in scores))
        nll.append(z - scores[ex.label])
        correct.append(ex.choices[int(np.argmax(scores))] == ex.choices[ex.label])  # the same answer text
    got = task_metrics(model, split, batch_size=5, vocab_size=V)
    assert got["acc"] == float(np.mean(correct)) and got["n"] == 6
    assert got["id_nll"] == pytest.approx(np.mean(nll), rel=RTOL)
    np.testing.assert_array_equal(got["examples"]["correct"], correct)
    np.testing.assert_array_equal(got["examples"]["n_choices"], [len(ex.choices) for ex in split.examples])
    mean, _ = class_logprobs(model, split, batch_size=3, vocab_size=V)
    for i, ex in enumerate(split.examples):  # padding beyond an example's own choices never wins
        assert np.isneginf(mean[i, len(ex.choices) :]).all() and np.isfinite(mean[i, : len(ex.choices)]).all()


def test_a_repeated_answer_text_is_right_whichever_copy_wins(model, monkeypatch):
    from overtrain.data.encode import EncodedExample, EncodedSplit

    ctx = [SPEC.eos_token_id] + TOK.encode("Where is the cat?").ids
    same, other = TOK.encode(" on the mat").ids, TOK.encode(" in the box").ids
    ex = EncodedExample("x", ctx, same, 1, [same, same, other])  # gold: the second copy
    split = EncodedSplit("t", "test", "classification", [ex])
    mean, _ = class_logprobs(model, split, vocab_size=V)
    got = task_metrics(model, split, vocab_size=V)
    assert mean[0, 0] == pytest.approx(mean[0, 1], rel=RTOL)
    assert got["acc"] == float(mean[0, 2] < max(mean[0, 0], mean[0, 1]))  # right unless the other answer wins
    # scores with the tie broken towards the first copy (np.argmax: the lowest index): still right
    import overtrain.evaluate.task_metrics as tm

    tie = np.array([[-1.0, -1.0, -3.0]])
    monkeypatch.setattr(tm, "class_logprobs", lambda *a, **k: (tie, tie))
    assert tm.task_metrics(model, split, vocab_size=V)["acc"] == 1.0


def test_per_example_training_loss_is_on_the_correct_answer_text():
    task = load_task("siqa", ["max_examples.train=4"])
    split = encode_split(task, "train", TOK, SPEC.max_sequence_length, SPEC.eos_token_id)
    for ex in split.examples:
        inp, tgt = training_pair(ex)
        n_ctx = len(ex.context) - 1
        assert tgt[:n_ctx] == [-100] * n_ctx and tgt[n_ctx:] == ex.choices[ex.label]


def test_bad_per_example_choice_configs_and_labels(tmp_path):
    base = CONFIG_ROOT / "tasks" / "arc_easy.yaml"
    with pytest.raises(ConfigError, match=r"fixed classes or per-example choices"):
        load_task(base, ["classes={a: x, b: y}"])
    with pytest.raises(ConfigError, match=r"choice_fields \(one column per answer\) or choices_field"):
        load_task(base, ["choice_fields=[a, b]"])
    with pytest.raises(ConfigError, match=r"carve_by id_hash takes a fraction"):
        load_task(base, ["source.local.test.carve_by=id_hash"])
    with pytest.raises(ConfigError, match=r"label_map: maps to \['answerD'\]"):
        load_task("siqa", ["label_map={'1': answerD}"])
    (tmp_path / "mc.jsonl").write_text(
        '{"q": "sky?", "a": "blue", "b": "green", "label": "a"}\n{"q": "grass?", "a": "red", "b": "green", "label": "c"}\n'
    )
    (tmp_path / "mc.yaml").write_text(
        "source: {local: {train: mc.jsonl, test: mc.jsonl}}\ninputs: [q]\nchoice_fields: [a, b]\n"
        'templates: {default: {prompt: "{q}"}}\n'
    )
    with pytest.raises(DataError, match=r"mc\.jsonl: record 2: field 'label' = 'c' does not name one of its 2 choices"):
        load_task(tmp_path / "mc.yaml").examples("test")


# ----------------------------------------------------------------------------- loss span and windows


def test_loss_span_masks_answer_or_whole_sequence():
    ans = encode_split(load_task("gsm8k", ["max_examples.test=3"]), "test", TOK, 256, SPEC.eos_token_id)
    seq_task = load_task("gsm8k", ["max_examples.test=3", "loss_span=sequence"])
    seq = encode_split(seq_task, "test", TOK, 256, SPEC.eos_token_id)
    assert ans.loss_span == "answer" and seq.loss_span == "sequence"
    assert encoding_counts({"test": seq})["loss_span"] == "sequence"
    for a, s in zip(ans.examples, seq.examples):
        assert a.context + a.completion == s.context + s.completion  # the same tokens: only the mask moves
        _, ta = training_pair(a)
        _, ts = training_pair(s)
        n_prompt = len(a.context) - 1
        assert ta[:n_prompt] == [-100] * n_prompt and ta[n_prompt:] == a.completion
        assert -100 not in ts and ts == (a.context + a.completion)[1:]  # every token after the first
    _, y = collate(seq.examples, SPEC.pad_token_id)
    assert int((y >= 0).sum()) == sum(len(ex.context) + len(ex.completion) - 1 for ex in seq.examples)
    with pytest.raises(ConfigError, match=r"loss_span: only lm tasks"):
        load_task("rte", ["loss_span=sequence"])


def test_long_documents_windows_cover_every_token_once(model, tmp_path):
    write_tree(tmp_path / "src", {"big.py": ("def f(x):\n    return x + 1\n" * 60).encode(), "s.py": b"a = 1\n"})
    body = yaml.safe_load((CONFIG_ROOT / "tasks" / "python_code.yaml").read_text())
    local = {**body["source"]["local"], "train": "src", "validation": "src", "test": "src"}
    body["source"] = {"local": {k: v for k, v in local.items() if v is not None}}
    body["dedup"] = False
    (tmp_path / "py.yaml").write_text(yaml.safe_dump(body))
    task = load_task(tmp_path / "py.yaml")
    split = encode_split(task, "test", TOK, 64, SPEC.eos_token_id)
    big = next(e for e in task.examples("test") if e.id.endswith("big.py"))
    want = TOK.encode(big.completion).ids
    windows = [ex for ex in split.examples if ex.group == big.id]
    assert split.split_windows == 1 and len(windows) == math.ceil((len(want) - 64) / 63) + 1
    assert sum((ex.completion for ex in windows), []) == want  # every token a target exactly once
    assert all(len(ex.context) + len(ex.completion) - 1 <= 64 for ex in split.examples)
    assert all(
        ex.context == [want[sum(len(w.completion) for w in windows[:k]) - 1]] for k, ex in enumerate(windows) if k
    )
    got = task_metrics(model, split, batch_size=4, vocab_size=V)
    assert got["n"] == 2 and got["tokens"] == len(want) + len(TOK.encode("a = 1\n").ids)
    nll = -sum(brute_logprobs(model, ex.context, ex.completion).sum() for ex in windows)
    assert sorted(got["examples"]["tokens"]) == sorted([len(want), got["tokens"] - len(want)])
    i = int(np.argmax(got["examples"]["tokens"]))
    assert got["examples"]["nll"][i] == pytest.approx(nll, rel=RTOL)
    cut = encode_split(load_task(tmp_path / "py.yaml", ["long_documents=truncate"]), "test", TOK, 64, SPEC.eos_token_id)
    assert cut.completion_truncated == 1 and len(cut.examples) == 2
