"""``overtrain lm-eval CHECKPOINT tasks=...``: lm-evaluation-harness on any checkpoint, in-process.

    overtrain lm-eval runs/x@tokens=4B tasks=hellaswag,arc_easy [num_fewshot=0] [limit=500] [results=FILE]
    overtrain lm-eval runs/x/sweep/.../weights tasks=my_tasks/rte_local.yaml     # a custom task YAML
    overtrain lm-eval path/to/hf_model_dir tasks=generalist results=FILE         # a transformers directory

CHECKPOINT is anything ``resolve_checkpoint`` takes (a pre-trained run, ``RUN@tokens=N``, saved
fine-tuned weights), or a transformers model directory, which lm-eval's own ``HFLM`` evaluates
(``evaluate.generalist``: the offline ``generalist`` task set, the directory's provenance in the
rows). An overtrain checkpoint is not exported: ``evaluate.lm_adapter.make_lm`` wraps it as an
lm-eval ``LM`` (its request types and context rule: that module's docstring).

Tasks are lm-eval task or group names, or paths to task YAML files / directories of them (custom
tasks over local files: ``dataset_path: csv`` + ``dataset_kwargs.data_files``); the shipped offline
set (``configs/lm_eval/generalist``: ``generalist`` = ``ot_arc_challenge``, ..., ``ot_hellaswag``)
is always on the index. Every name is checked against lm-eval's task index before the checkpoint
is loaded. ``results=FILE`` appends one row per task (``kind: "lm_eval"``) with the checkpoint
provenance of every other row (``core.checkpoint.checkpoint_provenance``; a transformers directory:
``generalist.model_provenance``), the split scored (``eval_split``), and lm-eval's metrics as keys
(``acc``, ``acc_stderr``, ``acc_norm``; a metric under a filter other than "none" is
``metric/filter``), so ``overtrain report`` draws every one of them against pre-training tokens
(``evaluate.report.lm_eval_rows``); per-document scores go to the row's ``scores`` file
(``generalist.example_scores``: arrays ``lm_eval.TASK.doc_id``, ``lm_eval.TASK.acc``, ...).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..core.checkpoint import checkpoint_provenance, load_model, resolve_checkpoint
from ..core.dist import resolve_device
from ..core.errors import ConfigError
from ..core.hf_compat import hide_broken_torchvision
from ..core.suite import member_provenance, parse_member, resolve_member
from ..data.tokenizer import check_tokenizer
from .generalist import (
    append_rows,
    check_model_dir,
    eval_split,
    is_model_dir,
    make_hflm,
    model_provenance,
    resolve_tasks,
)
from .lm_adapter import make_lm

INSTALL = "pip install 'lm-eval[hf]==0.4.13' (or the project's extra: pip install -e '.[hf]')"


def _require_lm_eval():
    hide_broken_torchvision()
    try:
        import lm_eval  # heavy: lm_eval (optional extra [hf])
    except ImportError:
        raise ConfigError(f"lm-eval is not installed: {INSTALL}") from None
    return lm_eval


# ------------------------------------------------------------------------------------ the tasks


def flatten_results(task_results: dict) -> dict:
    """lm-eval's {"acc,none": x, "acc_stderr,none": s, "alias": ..} -> {"acc": x, "acc_stderr": s}."""
    row = {}
    for key, value in task_results.items():
        metric, _, filt = key.partition(",")
        if not filt or isinstance(value, str):
            continue
        value = None if isinstance(value, float) and math.isnan(value) else value
        row[metric if filt == "none" else f"{metric}/{filt}"] = value
    return row


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class LmEvalConfig:
    tasks: list[str] = field(
        default_factory=list
    )  # lm-eval task/group names or task YAML paths, e.g. hellaswag,arc_easy; generalist: the offline eight
    include: list[str] = field(default_factory=list)  # extra directories of lm-eval task YAMLs
    num_fewshot: int | None = None  # few-shot examples (None: each task's default)
    limit: float | None = None  # examples per task (a fraction if < 1); None: all
    batch_size: int = 32  # sequences per forward
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA (HF dir: bf16 weights), else fp32
    eos_prefix: bool | None = None  # contexts start with EOS as overtrain's do (None: yes; an HF dir: no)
    seed: int = 1234  # lm-eval's seeds (few-shot sampling)
    member: bool = False  # the model is a checkpoint-suite member (a local revision dir; REPO@REVISION always is)
    pretrain_tokens: int | None = None  # a suite member's pre-training tokens (default: parsed from its revision)
    results: str | None = None  # append one row per task to this results.jsonl
    json: bool = False  # print the results as JSON

    def validate(self) -> None:
        if not self.tasks:
            raise ValueError("no tasks: give tasks=NAME[,NAME] (lm-eval task names or task YAML paths)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")


def suite_member(checkpoint: str, cfg: LmEvalConfig):
    """The ``core.suite.SuiteMember`` that ``checkpoint`` names, or None for an overtrain checkpoint
    (``RUN@tokens=N``) or a plain model directory (unless ``member=true``)."""
    hub = "@" in checkpoint and not Path(checkpoint).expanduser().exists() and "=" not in checkpoint.split("@", 1)[1]
    if not (hub or cfg.member):
        return None
    m = parse_member(checkpoint, tokens=cfg.pretrain_tokens)
    if m.tokens is None:
        raise ConfigError(f"{checkpoint}: no pre-training token count in its revision name: give pretrain_tokens=N")
    return m


def lm_eval_checkpoint(checkpoint: str, cfg: LmEvalConfig, log_samples: bool = False) -> tuple[list[dict], dict]:
    """(one row per task, lm-eval's full results) for ``checkpoint`` (an overtrain checkpoint or a
    transformers model directory); rows are appended to cfg.results, each with its scores file.

    ``log_samples`` keeps lm-eval's per-example records (``out["samples"]``)."""
    lm_eval = _require_lm_eval()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the model and every task name are checked before any model is loaded: bad input costs nothing
    member = suite_member(checkpoint, cfg)
    if member is not None:  # REPO@REVISION (fetched to the HF cache) or a local revision directory
        checkpoint = str(resolve_member(member))
    hf_dir = Path(checkpoint).expanduser() if is_model_dir(checkpoint) else None
    hf_config = check_model_dir(hf_dir) if hf_dir else None
    step_dir = None if hf_dir else resolve_checkpoint(checkpoint)
    if hf_dir and cfg.eos_prefix:
        raise ConfigError(
            "eos_prefix=true: only for overtrain checkpoints (a transformers model gets lm-eval's HF tokenization)"
        )
    tasks, manager = resolve_tasks(cfg.tasks, cfg.include)
    device = resolve_device(cfg.device)
    if hf_dir:
        lm, precision = make_hflm(hf_dir, device, cfg.precision, cfg.batch_size)
        prov, eos_prefix = model_provenance(hf_dir, hf_config), False
        if member is not None and not prov.get("suite_model"):  # a member itself, not a tuned model
            prov |= member_provenance(member, hf_dir)
            prov["model"] = prov["suite_model"]
    else:
        model, spec, meta = load_model(step_dir, device=device)
        tok = check_tokenizer(spec, str(step_dir))
        eos_prefix, precision = cfg.eos_prefix is not False, cfg.precision
        lm = make_lm(model, spec, tok, cfg.batch_size, precision, eos_prefix)
        prov = checkpoint_provenance(step_dir, spec, meta)
    t0 = time.time()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        task_manager=manager,
        log_samples=log_samples or bool(cfg.results),  # the per-example scores of the rows
        bootstrap_iters=1000,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed,
    )
    common = {
        "kind": "lm_eval",
        **prov,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "num_fewshot": cfg.num_fewshot,
        "limit": cfg.limit,
        "precision": precision,
        "eos_prefix": eos_prefix,
        "device": str(lm.device),
        "seconds": round(time.time() - t0, 3),
    }
    rows = []
    for task, res in out["results"].items():
        n = out.get("n-samples", {}).get(task, {})
        split = eval_split(out.get("configs", {}).get(task, {}))
        row = {**common, "task": task, "eval_split": split, "n_examples": n.get("effective"), **flatten_results(res)}
        rows.append({**row, "time": time.time()})
    if cfg.results:
        append_rows(cfg.results, rows, out.get("samples", {}))
    if not log_samples:
        out.pop("samples", None)
    return rows, out


def run(config: LmEvalConfig, checkpoint: str) -> int:
    rows, out = lm_eval_checkpoint(checkpoint, config)
    if config.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if rows:
        r = rows[0]
        print(f"{r['checkpoint']}  ({r['model']}, {r['pretrain_tokens']} tokens, lr_decayed={r['lr_decayed']})")
    for r in rows:
        metrics = {k: v for k, v in flatten_results(out["results"][r["task"]]).items() if "_stderr" not in k}
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        print(f"  {r['task']:>24}  {shown}  n={r['n_examples']}")
    return 0
