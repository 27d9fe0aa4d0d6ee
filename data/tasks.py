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

``Task.split_info`` records all of it (JSON-ready; it goes into results rows). Adding a task is
one YAML file: the dataclasses below are the schema, configs/tasks/rte.yaml an annotated
example, DESIGN.md ("Tasks") the interface.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..core.config import (
    CONFIG_ROOT,
    ConfigError,
    DataError,
    load_config,
    resolve_config_path,
)
from .task_files import read_split, resolve_data_path
from .task_spec import TASK_SPLITS, HubTaskSource, LocalTaskSource, SplitSpec, TaskSpec, split_specs

# ----------------------------------------------------------------------------- the task object


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    completion: str  # classification: choices[label]
    label: int | None  # class index (classification), None (lm)


@dataclass(frozen=True)
class _Record:
    """A checked record before rendering: the input texts and the label index or target."""

    id: str
    fields: dict
    label: int | None
    target: str | None
    key: str  # normalized input text: what the overlap check compares


class Task:
    """A loaded task. Data is read on first use of ``examples`` / ``split_info``, then kept."""

    def __init__(self, spec: TaskSpec, template: str, base: Path):
        self.spec = spec
        self.name = spec.name
        self.type = spec.type
        self.template = template
        self._tpl = spec.templates[template]
        self._base = base  # relative data paths are relative to the task YAML's folder
        self.choices = [self._tpl.completion.format(answer=t) for t in spec.classes.values()]
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

    def __repr__(self) -> str:
        return f"Task({self.name!r}, type={self.type!r}, template={self.template!r})"

    def _load(self) -> None:
        if self._examples is not None:
            return
        records, info = _build_splits(self.spec, self._base)
        rendered = {}
        for split, rows in records.items():
            rendered[split] = [self._render(r) for r in rows]
            info[split]["examples"] = len(rendered[split])
        self._examples, self._info = rendered, info

    def _render(self, r: _Record) -> Example:
        prompt = self._tpl.prompt.format_map(r.fields)
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


def _build_splits(spec: TaskSpec, base: Path) -> tuple[dict[str, list[_Record]], dict]:
    kind, src, note = _choose_source(spec, base)
    specs = split_specs(src)
    records: dict[str, list[_Record]] = {}
    info: dict[str, dict] = {}
    for split, ss in specs.items():
        if ss.carve_from:
            continue
        segments = read_split(kind, src, ss, base)
        records[split], skipped = _check_records(spec, segments, split)
        info[split] = {
            "source": kind,
            "from": " + ".join(where for where, _ in segments),
            "records": sum(len(rows) for _, rows in segments),
            "skipped_empty": skipped,
        }
        if note:
            info[split]["note"] = note
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
    return records, {s: info[s] for s in TASK_SPLITS}


def _choose_source(spec: TaskSpec, base: Path) -> tuple[str, LocalTaskSource | HubTaskSource, str]:
    src = spec.source
    if src.local is not None and not (src.prefer == "hub" and src.hub is not None):
        missing = [p for p in _local_paths(src.local, base) if not p.exists()]
        if not missing:
            return "local", src.local, ""
        if src.hub is None:
            raise DataError(f"task {spec.name}: {missing[0]}: no such file (source.local)")
        return "hub", src.hub, f"local data missing ({missing[0]}), loaded from the hub"
    return "hub", src.hub, ""


def _local_paths(src: LocalTaskSource, base: Path) -> list[Path]:
    paths = []
    for ss in split_specs(src).values():
        for text in [ss.path, ss.labels, *ss.files.values()]:
            if text:
                paths.append(resolve_data_path(text, base))
    return paths


def _carve(specs: dict[str, SplitSpec], records: dict, info: dict, seed: int) -> None:
    """Seeded hold-outs: shuffle the parent's indices once, hand out slices in TASK_SPLITS order."""
    for parent in TASK_SPLITS:
        children = [(s, ss) for s, ss in specs.items() if ss.carve_from == parent]
        if not children:
            continue
        pool = records[parent]
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


def _check_records(spec: TaskSpec, segments: list[tuple[str, list[dict]]], split: str) -> tuple[list[_Record], int]:
    """Map raw rows to records; a bad row is a DataError naming file, record (1-based) and field."""
    out, skipped, seen_ids, n = [], 0, set(), -1
    class_index = {name: i for i, name in enumerate(spec.classes)}
    wanted = list(spec.inputs) + [spec.label_field if spec.type == "classification" else spec.target_field]
    for where, rows in segments:
        for i, row in enumerate(rows):
            n += 1  # record number over the whole split: default ids stay unique across files
            values = {}
            for col in wanted:
                if col not in row:
                    raise DataError(f"{where}: record {i + 1}: no field '{col}' (fields: {', '.join(map(str, row))})")
                v = row[col]
                v = "" if v is None else v if isinstance(v, str) else str(v)
                values[col] = v.strip() if spec.strip else v
            empty = [col for col in wanted if not values[col].strip()]
            if empty:
                if spec.skip_empty:
                    skipped += 1
                    continue
                raise DataError(
                    f"{where}: record {i + 1}: field '{empty[0]}' is empty (set skip_empty: true to skip such records)"
                )
            fields = {col: values[col] for col in spec.inputs}
            label = target = None
            if spec.type == "classification":
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
            out.append(_Record(rid, fields, label, target, key))
    return out, skipped
