"""Chat data (data.chat): the three record formats, errors naming file:line before any work, rendering
with the tokenizer's template or TULU's default, and a label mask that covers exactly the assistant
turns; on real GSM8k records and the framework's real tokenizer."""

from __future__ import annotations

import json

import pytest
from overtrain.core.errors import DataError
from overtrain.data.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatRecord,
    encode_chat,
    gsm8k_chat,
    hh_turns,
    load_chat,
    render,
    write_chat_jsonl,
)
from overtrain.data.tokenizer import EOS_TOKEN, tokenizer_path

EOS = EOS_TOKEN
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_path()), eos_token=EOS, pad_token="<|padding|>")


def write_jsonl(path, rows, blank_after=None):
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_formats(tmp_path):
    hh = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6."
    tulu = {
        "dataset": "oasst",
        "id": "x",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        + [{"role": "assistant", "content": "Hello!"}],
    }
    rows = [{"chosen": hh, "rejected": "..."}, tulu, {"question": "1+1?", "answer": "2\n#### 2"}]
    got = load_chat(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert [r.messages for r in got] == [
        hh_turns(hh, "x"),
        tulu["messages"],
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2\n#### 2"}],
    ]
    assert got[0].messages == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6."},
    ]
    assert [r.where for r in got] == [f"{tmp_path / 'mixed.jsonl'}:{i}" for i in (1, 2, 3)]
    # a JSON array reads the same; max_examples keeps the first records
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert [r.messages for r in load_chat(tmp_path / "a.json", max_examples=2)] == [g.messages for g in got[:2]]
    # round trip through the plain {"messages": [...]} JSONL
    again = load_chat(write_chat_jsonl(got, tmp_path / "plain.jsonl"))
    assert [r.messages for r in again] == [r.messages for r in got]


def test_dataset_names_go_through_datasets(tmp_path):
    """A name that is not a file goes to ``datasets.load_dataset`` (offline: a local dataset directory)."""
    folder = tmp_path / "chatset"
    folder.mkdir()
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(3)
    ]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:1])
    got = load_chat(str(folder), max_examples=2)
    assert [r.messages for r in got] == [r["messages"] for r in rows[:2]] and got[
        1
    ].where == f"{folder}[train] record 1"
    assert len(load_chat(f"{folder}:test")) == 1
    with pytest.raises(DataError, match=f"{folder}:nope: cannot load hub dataset"):
        load_chat(f"{folder}:nope")


def test_gsm8k_chat_is_real_data():
    records = gsm8k_chat(32)
    assert len(records) == 32 and all(len(r.messages) == 2 for r in records)
    first = records[0].messages
    assert first[0]["content"].startswith("Natalia sold clips to 48 of her friends")
    assert first[1]["content"].endswith("#### 72") and records[0].where.endswith("gsm8k/train.jsonl:1")


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn with text"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}, "no assistant turn"),
        ({"chosen": "\n\nHuman: only a question"}, "no assistant turn with text"),
        ({"messages": [{"role": "bot", "content": "Hi"}]}, r"messages\[0\].role='bot' is empty or unknown"),
        ({"messages": [{"role": "", "content": "Hi"}]}, r"messages\[0\].role='' is empty or unknown"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\] must be an object with a string 'content'"),
        ({"messages": "Hi"}, "'messages' must be a list"),
        ({"chosen": "Human: no leading blank line\n\nAssistant: x"}, "'chosen' does not start with"),
        ({"prompt": "x", "completion": "y"}, r"unknown chat record \(keys \['completion', 'prompt'\]\)"),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, bad, needle):
    good = {"question": "q", "answer": "a"}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad], blank_after=1)  # the bad record is on line 4
    with pytest.raises(DataError, match=f"{path}:4: {needle}"):
        load_chat(path)


def test_unreadable_sources(tmp_path):
    with pytest.raises(DataError, match="no such chat data file"):
        load_chat(tmp_path / "missing.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    with pytest.raises(DataError, match=f"{tmp_path / 'broken.jsonl'}:2: not valid JSON"):
        load_chat(tmp_path / "broken.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no chat records"):
        load_chat(tmp_path / "empty.jsonl")


def labelled_runs(ids, labels):
    """The contiguous runs of labelled positions, as lists of token ids."""
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab >= 0:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_default_template_masks_exactly_the_assistant_turns(tok):
    assert tok.chat_template is None  # a base model's tokenizer: the TULU default applies
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Natalia sold 48 clips. How many?"},
        {"role": "assistant", "content": "She sold 48.\n#### 48"},
        {"role": "user", "content": "And half of that?"},
        {"role": "assistant", "content": "24"},
    ]
    ids, labels, truncated = render(tok, ChatRecord(msgs, "t"), 4096)
    assert not truncated
    text = tok.decode(ids)
    assert text == (
        "<|system|>\nYou are terse.\n<|user|>\nNatalia sold 48 clips. How many?\n"
        f"<|assistant|>\nShe sold 48.\n#### 48{EOS}\n<|user|>\nAnd half of that?\n<|assistant|>\n24{EOS}\n"
    )
    runs = [tok.decode(r) for r in labelled_runs(ids, labels)]
    assert runs == [f"She sold 48.\n#### 48{EOS}\n", f"24{EOS}\n"]  # the turns, each with its EOS
    # and every other token is unlabelled: the labelled count is exactly the turns' tokens
    assert sum(lab >= 0 for lab in labels) == sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in runs)


@pytest.mark.parametrize("template", [None, CHATML])
def test_code_answers_keep_their_indentation_labelled(tok, template):
    """A code answer's indentation tokens have empty (trimmed) offsets in the real OLMo tokenizer;
    labelled by character overlap they are assistant tokens: the labelled run is the whole answer."""
    code = "def f(x):\n    if x:\n        return 1\n    return 2"
    msgs = [{"role": "user", "content": "Write f."}, {"role": "assistant", "content": code}]
    t = tok if template is None else tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token=EOS)
    t.chat_template = template
    enc = t(code, add_special_tokens=False, return_offsets_mapping=True)
    assert any(a == b for a, b in enc["offset_mapping"])  # the tokenizer trims whitespace tokens' offsets
    ids, labels, _ = render(t, ChatRecord(msgs, "t"), 4096)
    (run,) = labelled_runs(ids, labels)
    end = f"{EOS}\n" if template is None else "<|im_end|>\n"
    assert t.decode(run) == code + end
    spaces = [i for i in ids if t.decode([i]).strip() == "" and "\n" not in t.decode([i])]
    assert len(spaces) == 3 and all(lab >= 0 for i, lab in zip(ids, labels) if i in spaces)


def test_own_chat_template_is_used(tok):
    own = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token=EOS)
    own.chat_template = CHATML
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend."}]
    ids, labels, _ = render(own, ChatRecord(msgs, "t"), 4096)
    assert own.decode(ids) == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello, friend.<|im_end|>\n"
    assert [own.decode(r) for r in labelled_runs(ids, labels)] == ["Hello, friend.<|im_end|>\n"]
    assert own.chat_template != DEFAULT_CHAT_TEMPLATE


def test_template_errors_name_the_record(tok):
    strict = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token=EOS)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(DataError, match="f.jsonl:3: the chat template cannot render this record: .*no system role"):
        render(strict, ChatRecord(msgs, "f.jsonl:3"), 64)


def test_truncation_and_dropping(tok):
    records = gsm8k_chat(8)
    full = encode_chat(tok, records, 4096)
    assert full.truncated == 0 and full.dropped == 0 and len(full.ids) == 8
    lengths = [len(i) for i in full.ids]
    prompt_lengths = [next(i for i, x in enumerate(labels) if x >= 0) for labels in full.labels]
    cut = min(prompt_lengths)  # every assistant turn starts at or after this: all dropped
    with pytest.raises(DataError, match=f"no chat record has an assistant token within max_seq_len={cut}"):
        encode_chat(tok, records, cut)
    mid = sorted(prompt_lengths)[4]  # half the records have their whole assistant turn beyond it
    part = encode_chat(tok, records, mid)
    assert part.truncated == sum(n > mid for n in lengths)
    assert part.dropped == sum(p >= mid for p in prompt_lengths)  # no label left
    assert 0 < part.dropped < part.truncated  # the cut drops some records and shortens others
    assert all(len(i) <= mid for i in part.ids) and len(part.ids) == 8 - part.dropped
    for ids, labels, where in zip(part.ids, part.labels, part.where):  # a prefix of the untruncated rendering
        k = [r.where for r in records].index(where)
        assert ids == full.ids[k][: len(ids)] and labels == full.labels[k][: len(ids)]
