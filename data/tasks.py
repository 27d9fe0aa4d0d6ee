"""Fine-tuning tasks as data: ``configs/tasks/<name>.yaml`` -> ``Task`` -> rendered ``Example``s.

A task YAML says where the data is (``source.local`` files, preferred when they exist, and/or a
Hugging Face ``source.hub`` dataset), which columns are the input text and the label or target,
the classes and their label texts, and the prompt templates. Every task is loaded the same way:

1. read each file-backed split (JSON / JSONL / CSV / TSV / arrow / one-file-per-class lines /
   TREC ``LABEL:fine text`` lines, or ``datasets.load_dataset``) and rename columns;
2. check every record: inputs non-empty, label one of the declared classes; a bad record is a
   ``DataError`` naming the file, record and field (empty records are skipped and counted
   instead only when the YAML says ``skip_empty: true``);
3. carve missing splits as seeded hold-outs (``validation: {carve_from: train, size: 500}``);
4. drop from train (and validation) every example whose input text also occurs in a later split,
   so nothing evaluated on is ever trained on (counted);
5. apply the seeded ``max_examples`` caps, render prompts and completions with the template.

``Task.split_info`` records all of it (JSON-ready; it goes into results rows), and
``Task.source`` says in one line which source was read and why: ``KIND:WHAT (why it was chosen,
when not the preferred one) (the YAML's note)``, e.g. ``hub:google/boolq (the paper's source: ...)``
or ``local:arrow (hub google/boolq unreachable: ...) (OFFLINE DEMO ONLY: ...)`` (the rows' ``task_source``). Adding a
task is one YAML file: the dataclasses in ``task_spec`` are the schema, configs/tasks/rte.yaml an
annotated example, DESIGN.md ("Tasks") the interface.

Choosing the source (``source.prefer``: local, hub, or hub_or_local = the hub unless it cannot be
reached, then local) is ``data.task_source``.

Carving (``validation: {carve_from: train, size: ...}``): ``carve_by: shuffle`` (default) shuffles
the parent's records with the data seed and hands out slices; ``carve_by: id_hash`` puts record r
in the hold-out when ``u(r)`` = the first 8 bytes of sha256(seed:parent:id) / 2^64 falls in its fraction's interval, so a
record's split depends only on its own id (a file's relative path for Python source): adding or
removing files moves no other file between splits.

Multiple choice with per-example answers (``choice_fields`` or ``choices_field``): each record's
own answer texts are its choices, rendered with the completion template (" {answer}"); the label
is the index of the correct one. ``Example.choices`` holds them; fine-tuning trains on the correct
answer text (``Example.completion``), evaluation scores every answer text (``evaluate.task_metrics``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..core.config import load_config, resolve_config_path
from ..core.errors import ConfigError, DataError
from ..core.paths import CONFIG_ROOT
from .task_files import python_files_summary, read_split, resolve_data_path
from .task_source import choose_source
from .task_spec import TASK_SPLITS, SplitSpec, TaskSpec, split_specs

# ----------------------------------------------------------------------------- the task object


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    completion: str  # classification: choices[label]
    label: int | None  # class index (classification), None (lm)
    choices: tuple[str, ...] | None = None  # per-example answer texts (multiple choice), else None


@dataclass(frozen=True)
class _Record:
    """A checked record before rendering: the input texts and the label index or target."""

    id: str
    fields: dict
    label: int | None
    target: str | None
    key: str  # normalized input text: what the overlap check compares
    choices: tuple[str, ...] | None = None  # per-example answer texts


class Task:
    """A loaded task. Data is read on first use of ``examples`` / ``split_info``, then kept."""

    def __init__(self, spec: TaskSpec, template: str, base: Path):
        self.spec = spec
        self.name = spec.name
        self.type = spec.type
        self.template = template
        self._tpl = spec.templates[template]
        self._base = base  # relative data paths are relative to the task YAML's folder
        self.choices = [self._tpl.completion.format(answer=t) for t in spec.classes.values()]  # [] if per-example
        self.per_example_choices = bool(spec.choice_fields or spec.choices_field)
        self.loss_span = spec.loss_span
        self.long_documents = spec.long_documents
        self.has_prompt = bool(self._tpl.prompt)  # False: whole documents (the prompt is empty by design)
        self._examples: dict[str, list[Example]] | None = None
        self._info: dict | None = None

    def examples(self, split: str) -> list[Example]:
        if split not in TASK_SPLITS:
            raise ConfigError(f"task {self.name}: unknown split '{split}' (splits: {', '.join(TASK_SPLITS)})")
        self._load()
        return list(self._examples[split])

    @property
    def split_info(self) -> dict:
        """Per split: source, file, records read, skips, carving (seed), overlap removed, cap, count."""
        self._load()
        return json.loads(json.dumps(self._info))  # a copy the caller may keep or change

    @property
    def source(self) -> str:
        """Which source was read and why, one line (the rows' ``task_source``)."""
        self._load()
        return self._source

    def __repr__(self) -> str:
        return f"Task({self.name!r}, type={self.type!r}, template={self.template!r})"

    def _load(self) -> None:
        if self._examples is not None:
            return
        records, info, self._source = _build_splits(self.spec, self._base)
        rendered = {}
        for split, rows in records.items():
            rendered[split] = [self._render(r) for r in rows]
            info[split]["examples"] = len(rendered[split])
        self._examples, self._info = rendered, info

    def _render(self, r: _Record) -> Example:
        prompt = self._tpl.prompt.format_map(r.fields)
        if r.choices is not None:
            choices = tuple(self._tpl.completion.format(answer=c) for c in r.choices)
            return Example(r.id, prompt, choices[r.label], r.label, choices)
        if r.label is not None:
            return Example(r.id, prompt, self.choices[r.label], r.label)
        return Example(r.id, prompt, self._tpl.completion.format_map({**r.fields, "answer": r.target}), None)


def list_tasks() -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / "tasks").glob("*.yaml"))


def load_task(name_or_path: str | os.PathLike, overrides=(), template: str | None = None) -> Task:
    """A task from configs/tasks/<name>.yaml or a YAML path, with dotted overrides (``seed=3``)."""
    path = resolve_config_path(str(name_or_path), "tasks")
    spec = load_config(TaskSpec, path, overrides)
    spec.name = spec.name or path.stem
    template = template or spec.template
    if template not in spec.templates:
        raise ConfigError(f"{path}: template '{template}' is not defined (templates: {', '.join(spec.templates)})")
    return Task(spec, template, path.resolve().parent)


# ----------------------------------------------------------------------------- building the splits


def _build_splits(spec: TaskSpec, base: Path) -> tuple[dict[str, list[_Record]], dict, str]:
    kind, src, note = choose_source(spec, base)
    source = f"{kind}:" + (src.path if kind == "hub" else (src.format if src.format != "auto" else "files"))
    source += "".join(f" ({t})" for t in (note, src.note) if t)
    specs = split_specs(src)
    records: dict[str, list[_Record]] = {}
    info: dict[str, dict] = {}
    for split, ss in specs.items():
        if ss.carve_from:
            continue
        try:
            segments = read_split(kind, src, ss, base)
        except DataError as e:
            if spec.source.prefer != "hub_or_local" or kind != "hub" or note:
                raise
            raise DataError(
                f"{e}. The hub is reachable, so task {spec.name} does not fall back to its local source: fix the "
                f"access (e.g. HF_TOKEN after accepting a gated dataset's terms), or set source.prefer=local "
                f"(or OVERTRAIN_OFFLINE=1) to use it ({spec.source.local.note or 'source.local'})"
            ) from None
        records[split], skipped = _check_records(spec, segments, split)
        info[split] = {
            "source": kind,
            "from": " + ".join(where for where, _ in segments),
            "records": sum(len(rows) for _, rows in segments),
            "skipped_empty": skipped,
        }
        if note:
            info[split]["note"] = note
        if kind == "local" and src.format == "python_files":
            info[split]["python_files"] = python_files_summary(resolve_data_path(ss.path, base))
    _carve(specs, records, info, spec.seed)
    later: set[str] = set()
    for split in reversed(TASK_SPLITS):  # test keeps everything; validation loses test texts; train both
        before = len(records[split])
        if spec.dedup:
            records[split] = [r for r in records[split] if r.key not in later]
            later.update(r.key for r in records[split])
        info[split]["removed_overlap"] = before - len(records[split])
    for split, cap in spec.max_examples.items():
        rows = records[split]
        if len(rows) > cap:
            keep = sorted(random.Random(f"{spec.seed}:cap:{split}").sample(range(len(rows)), cap))
            records[split] = [rows[i] for i in keep]
            info[split]["capped_from"] = len(rows)
    for split, rows in records.items():
        if not rows:
            raise DataError(f"task {spec.name}: split '{split}' is empty after loading ({info[split]})")
    return records, {s: info[s] for s in TASK_SPLITS}, source


def _carve(specs: dict[str, SplitSpec], records: dict, info: dict, seed: int) -> None:
    """Seeded hold-outs: shuffle the parent's indices once, hand out slices in TASK_SPLITS order."""
    for parent in TASK_SPLITS:
        children = [(s, ss) for s, ss in specs.items() if ss.carve_from == parent]
        if not children:
            continue
        pool = records[parent]
        if children[0][1].carve_by == "id_hash":
            _carve_by_hash(parent, children, records, info, seed)
            continue
        if any(ss.carve_by == "id_hash" for _, ss in children):
            raise ConfigError(f"carve_by: the hold-outs of '{parent}' must all use the same carve_by")
        order = list(range(len(pool)))
        random.Random(f"{seed}:carve:{parent}").shuffle(order)
        start = 0
        for child, ss in children:
            n = int(ss.size) if ss.size >= 1 else max(1, round(ss.size * len(pool)))
            if start + n >= len(pool):
                raise DataError(
                    f"{info[parent]['from']}: cannot carve {n} examples for '{child}' out of '{parent}' "
                    f"({len(pool)} examples, {start} already carved): nothing would be left"
                )
            records[child] = [pool[i] for i in sorted(order[start : start + n])]
            info[child] = {"source": info[parent]["source"], "carved_from": parent, "size": n, "seed": seed}
            start += n
        records[parent] = [pool[i] for i in sorted(order[start:])]
        info[parent]["carved_out"] = {child: info[child]["size"] for child, _ in children}


def id_hash_unit(seed: int, parent: str, rid: str) -> float:
    """u in [0, 1) from sha256(seed:parent:id): the record's place in an id_hash carve."""
    digest = hashlib.sha256(f"{seed}:{parent}:{rid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _carve_by_hash(parent: str, children: list, records: dict, info: dict, seed: int) -> None:
    """Hold-outs by hash of the record id: child k takes u in [sum of earlier fractions, + its fraction)."""
    if any(ss.carve_by != "id_hash" for _, ss in children):
        raise ConfigError(f"carve_by: the hold-outs of '{parent}' must all use the same carve_by")
    pool = records[parent]
    units = [id_hash_unit(seed, parent, r.id.split(":", 1)[1]) for r in pool]
    lo, taken = 0.0, set()
    for child, ss in children:
        hi = lo + ss.size
        pick = [i for i, u in enumerate(units) if lo <= u < hi]
        records[child] = [pool[i] for i in pick]
        taken.update(pick)
        info[child] = {
            "source": info[parent]["source"],
            "carved_from": parent,
            "carve_by": "id_hash",
            "fraction": ss.size,
            "size": len(pick),
            "seed": seed,
        }
        lo = hi
    if lo >= 1:
        raise DataError(f"{info[parent]['from']}: hold-out fractions of '{parent}' sum to {lo}: nothing would be left")
    records[parent] = [r for i, r in enumerate(pool) if i not in taken]
    info[parent]["carved_out"] = {child: info[child]["size"] for child, _ in children}


def _check_records(spec: TaskSpec, segments: list[tuple[str, list[dict]]], split: str) -> tuple[list[_Record], int]:
    """Map raw rows to records; a bad row is a DataError naming file, record (1-based) and field."""
    out, skipped, seen_ids, n = [], 0, set(), -1
    class_index = {name: i for i, name in enumerate(spec.classes)}
    wanted = list(spec.inputs) + [spec.label_field if spec.type == "classification" else spec.target_field]
    wanted += [c for c in spec.choice_fields if c not in wanted]
    for where, rows in segments:
        for i, row in enumerate(rows):
            n += 1  # record number over the whole split: default ids stay unique across files
            values = {}
            for col in wanted:
                if col not in row:
                    raise DataError(f"{where}: record {i + 1}: no field '{col}' (fields: {', '.join(map(str, row))})")
                values[col] = _text(row[col], spec.strip)
            choices = None
            if spec.choices_field:
                choices = [_text(c, spec.strip) for c in _list_field(row, spec.choices_field, where, i)]
            elif spec.choice_fields:
                choices = [values[c] for c in spec.choice_fields]
            empty = [col for col in wanted if not values[col].strip()]
            if choices is not None and not empty and any(not c.strip() for c in choices):
                empty = [spec.choices_field or "choices"]
            if empty:
                if spec.skip_empty:
                    skipped += 1
                    continue
                raise DataError(
                    f"{where}: record {i + 1}: field '{empty[0]}' is empty (set skip_empty: true to skip such records)"
                )
            fields = {col: values[col] for col in spec.inputs}
            label = target = None
            if choices is not None:
                label = _choice_index(spec, row, values[spec.label_field], len(choices), where, i)
            elif spec.type == "classification":
                raw = values[spec.label_field]
                name = spec.label_map.get(raw, raw)
                if name not in class_index:
                    mapped = f" (label_map: {spec.label_map})" if spec.label_map else ""
                    raise DataError(
                        f"{where}: record {i + 1}: field '{spec.label_field}' = {raw!r} is not one of the "
                        f"declared classes {list(spec.classes)}{mapped}"
                    )
                label = class_index[name]
            else:
                target = values[spec.target_field]
            if spec.id_field and spec.id_field not in row:
                raise DataError(f"{where}: record {i + 1}: no field '{spec.id_field}' (id_field)")
            rid = f"{split}:{row[spec.id_field] if spec.id_field else n}"
            if rid in seen_ids:
                raise DataError(f"{where}: record {i + 1}: field '{spec.id_field}' repeats id {rid!r}")
            seen_ids.add(rid)
            text = [fields[c] for c in spec.inputs] or [target]
            key = "\n".join(" ".join(t.split()).casefold() for t in text)
            out.append(_Record(rid, fields, label, target, key, tuple(choices) if choices is not None else None))
    return out, skipped


def _text(v, strip: bool) -> str:
    v = "" if v is None else v if isinstance(v, str) else str(v)
    return v.strip() if strip else v


def _list_field(row: dict, dotted: str, where: str, i: int) -> list:
    """A list-valued field, ``a.b`` reaching into nested records (ARC's ``choices.text``)."""
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: record {i + 1}: no field '{dotted}'")
        value = value[part]
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise DataError(
            f"{where}: record {i + 1}: field '{dotted}' must be a list of at least 2 answers, got {value!r:.80}"
        )
    return list(value)


def _choice_index(spec: TaskSpec, row: dict, raw: str, n: int, where: str, i: int) -> int:
    """The index of the correct answer among a record's per-example choices (task_spec: label rules)."""
    mapped = spec.label_map.get(raw, raw)
    if spec.choice_fields:
        if mapped in spec.choice_fields:
            return spec.choice_fields.index(mapped)
        allowed = sorted(spec.label_map) or spec.choice_fields
    elif spec.choice_labels_field:
        labels = [str(x) for x in _list_field(row, spec.choice_labels_field, where, i)]
        if len(labels) != n:
            raise DataError(f"{where}: record {i + 1}: {len(labels)} choice labels for {n} choices")
        if mapped in labels:
            return labels.index(mapped)
        allowed = labels
    else:
        if mapped.isdigit() and int(mapped) < n:
            return int(mapped)
        allowed = [str(k) for k in range(n)]
    raise DataError(
        f"{where}: record {i + 1}: field '{spec.label_field}' = {raw!r} does not name one of its {n} choices "
        f"(expected one of {allowed})"
    )
