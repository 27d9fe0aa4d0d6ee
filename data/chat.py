"""Chat (instruction-tuning) data: records of turns, rendered into token ids with loss on assistant turns only.

Sources (``load_chat``): a local ``.jsonl`` / ``.json`` file (optionally ``.gz``), or a hub dataset
``NAME`` / ``NAME:SPLIT`` (default split ``train``) read with ``datasets.load_dataset`` (which also
takes a local dataset directory, e.g. one holding ``train.jsonl``). Each record is
one of (detected per record):

- Anthropic-HH: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."}``, split at the
  ``Human:`` / ``Assistant:`` markers into user/assistant turns;
- TULU, or plain chat JSONL: ``{"messages": [{"role": ..., "content": ...}, ...]}``;
- a question/answer pair ``{"question": ..., "answer": ...}`` (GSM8k) as one user and one
  assistant turn (``gsm8k_chat`` builds the offline test set from the real GSM8k files).

Roles are ``system``, ``user``, ``assistant``. A record without an assistant turn with text, or
with an empty/unknown role, is one DataError naming ``file:line`` (hub: ``name[split] record i``),
raised while loading, before any training.

Rendering (``render``): the tokenizer's own chat template (``apply_chat_template``) when it has one,
else ``DEFAULT_CHAT_TEMPLATE``, the TULU format that OLMo's SFT used::

    <|system|>\\n{content}\\n  <|user|>\\n{content}\\n  <|assistant|>\\n{content}{eos}\\n

Label mask: let R(k) be the rendered text of the first k turns, and G(k) the same with the
generation prompt (``add_generation_prompt``). Assistant turn k spans the characters
[len(G(k)), len(R(k+1))) of R(n): its content, the EOS closing it and what the template writes
up to the next turn (TULU: one newline). A token carries a label when its characters overlap an
assistant span; every other label is -100. A token's characters are [min(start, previous end), end)
(``token_spans``), not its offsets alone: a byte-level tokenizer trims leading whitespace from the
offsets, so an indentation token ("    " in code) has empty offsets, e.g. (46, 46), and would be
matched by no span (by its start offset, the former rule, it got no label inside an answer). The template must render prefixes as prefixes
(checked; one DataError otherwise). Truncation: the token ids are cut to their first
``max_seq_len`` (the model reads ids[:-1] and predicts ids[1:]); a record left without any
labelled token is dropped and counted (``ChatEncoding.dropped``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.atomic import atomic_write_text
from ..core.errors import DataError
from ..core.paths import data_root, expand_path

ROLES = ("system", "user", "assistant")

# TULU / open-instruct's format (OLMo's SFT): the fallback for tokenizers without a chat template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)

_HH_MARKER = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class ChatRecord:
    messages: list[dict]  # [{"role": "user"|"assistant"|"system", "content": str}, ...]
    where: str  # 'file:line' or 'name[split] record i', for error messages


# ------------------------------------------------------------------------------------------- parsing


def hh_turns(text: str, where: str) -> list[dict]:
    """An Anthropic-HH dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...") as turns."""
    parts = _HH_MARKER.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: 'chosen' does not start with '\\n\\nHuman:' (found {parts[0][:40]!r})")
    return [{"role": _HH_ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def record_messages(row: dict, where: str) -> list[dict]:
    """The turns of one raw record in any supported format, validated (see module doc)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list):
            raise DataError(f"{where}: 'messages' must be a list of {{role, content}}, got {type(messages).__name__}")
    elif isinstance(row.get("chosen"), str):
        messages = hh_turns(row["chosen"], where)
    elif isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
        messages = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
    else:
        raise DataError(
            f"{where}: unknown chat record (keys {sorted(row)}); expected 'messages' (TULU), "
            "'chosen' (Anthropic-HH) or 'question'+'answer'"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be an object with a string 'content', got {m!r:.80}")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}].role={role!r} is empty or unknown (expected one of {ROLES})")
        out.append({"role": role, "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise DataError(f"{where}: no assistant turn with text (nothing to train on)")
    return out


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _local_rows(path: Path, limit: int | None):
    """(where, raw record) of a .jsonl or .json file (JSON: an array of records)."""
    stem = path.name.removesuffix(".gz")
    try:
        with _open_text(path) as f:
            if stem.endswith(".json"):
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(rows, list):
                    raise DataError(f"{path}: expected a JSON array of chat records")
                yield from ((f"{path} record {i}", r) for i, r in enumerate(rows[:limit]))
                return
            n = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if limit is not None and n >= limit:
                    return
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                n += 1
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _hub_rows(name: str, limit: int | None):
    import datasets  # heavy: datasets (~1 s), only hub chat data

    path, _, split = name.partition(":")
    split = split or "train"
    try:
        ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # offline, no such dataset or split
        raise DataError(f"{name}: cannot load hub dataset {path!r} split {split!r}: {type(e).__name__}: {e}") from None
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        yield f"{path}[{split}] record {i}", dict(ds[i])


def load_chat(source: str | os.PathLike, max_examples: int | None = None) -> list[ChatRecord]:
    """Every record of ``source`` (first ``max_examples``), validated; a file path or a hub ``NAME[:SPLIT]``."""
    text = expand_path(source)
    path = Path(text)
    folder = path.is_dir() or Path(text.rpartition(":")[0] or text).is_dir()  # a local dataset dir[:SPLIT]
    local = path.is_file() or (
        not folder and (text.endswith((".jsonl", ".json", ".gz")) or text.startswith(("/", ".", "~")))
    )
    if local and not path.is_file():
        raise DataError(f"{path}: no such chat data file")
    rows = _local_rows(path, max_examples) if local else _hub_rows(text, max_examples)
    records = [ChatRecord(record_messages(row, where), where) for where, row in rows]
    if not records:
        raise DataError(f"{source}: no chat records")
    return records


def gsm8k_chat(n: int = 32, split: str = "train") -> list[ChatRecord]:
    """The offline SFT test set: the first ``n`` real GSM8k question/answer pairs as user/assistant turns."""
    return load_chat(data_root() / "gsm8k" / f"{split}.jsonl", max_examples=n)


def write_chat_jsonl(records: list[ChatRecord], path: str | os.PathLike) -> Path:
    """Records as plain ``{"messages": [...]}`` JSONL (atomic)."""
    atomic_write_text(path, "".join(json.dumps({"messages": r.messages}) + "\n" for r in records))
    return Path(path)


# ----------------------------------------------------------------------------------------- rendering


@dataclass
class ChatEncoding:
    ids: list[list[int]]  # token ids per record (truncated to max_seq_len)
    labels: list[list[int]]  # = ids on assistant tokens, -100 elsewhere
    dropped: int = 0  # records with no assistant token left after truncation
    truncated: int = 0  # records cut to max_seq_len
    where: list[str] = field(default_factory=list)


def chat_template_of(tokenizer) -> str:
    """The template ``render`` uses: the tokenizer's own, else ``DEFAULT_CHAT_TEMPLATE``."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def template_sha256(template: str) -> str:
    """A chat template's identity in rows: sha256 of its text, first 16 hex digits."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def _text(tokenizer, template: str, messages: list[dict], generation_prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as e:  # a template that refuses these turns (jinja raise_exception, a role it lacks)
        raise DataError(f"{where}: the chat template cannot render this record: {type(e).__name__}: {e}") from None


def assistant_spans(tokenizer, messages: list[dict], where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans of the assistant turns in it); see the module doc."""
    template = chat_template_of(tokenizer)
    full = _text(tokenizer, template, messages, False, where)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _text(tokenizer, template, messages[: k + 1], False, where)
        # G(0) (no turns yet) is not renderable by every template: an opening assistant turn starts at its content
        start = len(_text(tokenizer, template, messages[:k], True, where)) if k else max(prefix.rfind(m["content"]), 0)
        if not full.startswith(prefix) or start > len(prefix):
            raise DataError(f"{where}: the chat template does not render the first {k + 1} turns as a prefix")
        spans.append((start, len(prefix)))
    return full, spans


def token_spans(offsets) -> list[tuple[int, int]]:
    """Each token's characters [lo, hi), the whitespace its offsets leave out included (module doc):
    lo = min(start, the previous token's end), hi = end."""
    out, prev = [], 0
    for start, end in offsets:
        out.append((min(start, prev), end))
        prev = max(prev, end)
    return out


def render(tokenizer, record: ChatRecord, max_seq_len: int) -> tuple[list[int], list[int], bool]:
    """(ids, labels, truncated) of one record: labels = ids on assistant tokens, -100 elsewhere."""
    text, spans = assistant_spans(tokenizer, record.messages, record.where)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(enc["input_ids"])
    labels = [
        tok if any(lo < b and a < hi for a, b in spans) else -100
        for tok, (lo, hi) in zip(ids, token_spans(enc["offset_mapping"]))
    ]
    truncated = len(ids) > max_seq_len
    return ids[:max_seq_len], labels[:max_seq_len], truncated


def encode_chat(tokenizer, records: list[ChatRecord], max_seq_len: int) -> ChatEncoding:
    """Render every record (see ``render``); drop those without a labelled target after the first token."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("chat rendering needs a fast tokenizer (character offsets); this one is not")
    if not getattr(tokenizer, "chat_template", None) and tokenizer.eos_token is None:
        raise DataError(
            "the tokenizer has neither a chat template nor an EOS token (the default template ends turns with it)"
        )
    out = ChatEncoding([], [])
    for r in records:
        ids, labels, truncated = render(tokenizer, r, max_seq_len)
        out.truncated += truncated
        if all(t < 0 for t in labels[1:]):  # position 0 is never a target
            out.dropped += 1
            continue
        out.ids.append(ids)
        out.labels.append(labels)
        out.where.append(r.where)
    if not out.ids:
        raise DataError(f"no chat record has an assistant token within max_seq_len={max_seq_len}")
    return out
