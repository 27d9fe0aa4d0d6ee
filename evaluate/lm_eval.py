"""``overtrain lm-eval CHECKPOINT tasks=...``: lm-evaluation-harness on any checkpoint, in-process.

    overtrain lm-eval runs/x@tokens=4B tasks=hellaswag,arc_easy [num_fewshot=0] [limit=500] [results=FILE]
    overtrain lm-eval runs/x/sweep/.../weights tasks=my_tasks/rte_local.yaml     # a custom task YAML
    overtrain lm-eval path/to/hf_model_dir tasks=generalist results=FILE         # a transformers directory

CHECKPOINT is anything ``resolve_checkpoint`` takes (a pre-trained run, ``RUN@tokens=N``, saved
fine-tuned weights), or a transformers model directory, which lm-eval's own ``HFLM`` evaluates
(``evaluate.generalist``: the offline ``generalist`` task set, the directory's provenance in the
rows). An overtrain checkpoint is not exported: ``OvertrainLM`` wraps it as an lm-eval ``LM`` on
the checkpoint's device and precision (bf16 autocast on CUDA, as every overtrain evaluation),
with the softmax over the real vocabulary (padded rows masked). Its three request types:

    loglikelihood(ctx, cont)  = sum_t log p(cont_t | ctx, cont_<t); greedy = every cont_t is the argmax
    loglikelihood_rolling(s)  = the sum over lm-eval's disjoint rolling windows of the model's context
    generate_until(ctx, kw)   = greedy decoding (``evaluate.generate``), cut at the first stop string

A context longer than the model's is cut from the left (as lm-eval's HF model does). With
``eos_prefix`` (default) every context starts with EOS, the document separator of pre-training and
the first token of overtrain's own task contexts (``data.encode``): an lm-eval task built from the
same prompt then scores exactly the same token sequences as ``overtrain evaluate``.

Tasks are lm-eval task or group names, or paths to task YAML files / directories of them (custom
tasks over local files: ``dataset_path: csv`` + ``dataset_kwargs.data_files``); the shipped offline
set (``configs/lm_eval/generalist``: ``generalist`` = ``ot_arc_challenge``, ..., ``ot_hellaswag``)
is always on the index. Every name is checked against lm-eval's task index before the checkpoint
is loaded. ``results=FILE`` appends one row per task (``kind: "lm_eval"``) with the checkpoint
provenance of every other row (``core.checkpoint.checkpoint_provenance``; a transformers directory:
``generalist.model_provenance``), the split scored (``eval_split``), and lm-eval's metrics as keys
(``acc``, ``acc_stderr``, ``acc_norm``; a metric under a filter other than "none" is
``metric/filter``), so ``overtrain report`` draws every one of them against pre-training tokens
(``lm_eval_figures``); per-document scores go to the row's ``scores`` file
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

import torch

from ..core.checkpoint import checkpoint_provenance, load_model, resolve_checkpoint
from ..core.dist import resolve_device
from ..core.errors import ConfigError
from ..core.hf_compat import hide_broken_torchvision
from ..core.likelihood import autocast_for, pad_batch, readout_at
from ..core.suite import member_provenance, resolve_member
from ..data.tokenizer import check_tokenizer
from .generalist import (  # noqa: F401  (resolve_tasks: also used by launch.spec)
    append_rows,
    check_model_dir,
    eval_split,
    is_model_dir,
    make_hflm,
    model_provenance,
    resolve_tasks,
)
from .generate import generate

INSTALL = "pip install 'lm-eval[hf]==0.4.13' (or the project's extra: pip install -e '.[hf]')"


def _require_lm_eval():
    hide_broken_torchvision()
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(f"lm-eval is not installed: {INSTALL}") from None
    return lm_eval


# ------------------------------------------------------------------------------------ the model


def make_lm(model, spec, tokenizer, batch_size: int = 32, precision: str = "auto", eos_prefix: bool = True):
    """An lm-eval ``LM`` over an overtrain model (the class is built here: lm-eval is optional)."""
    hide_broken_torchvision()
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class OvertrainLM(TemplateLM):
        def __init__(self):
            super().__init__()
            self.model, self.spec, self.tok = model, spec, tokenizer
            self.batch_size, self.precision, self.eos_prefix = batch_size, precision, eos_prefix
            self.max_length = spec.max_sequence_length
            self._device = next(model.parameters()).device

        @property
        def eot_token_id(self) -> int:
            return self.spec.eos_token_id

        @property
        def device(self):
            return self._device

        @property
        def tokenizer_name(self) -> str:
            return self.spec.tokenizer

        def get_model_info(self) -> dict:
            return {"model": self.spec.name, "precision": self.precision, "eos_prefix": self.eos_prefix}

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            ids = self.tok.encode(string).ids
            return [self.eot_token_id] + ids if self.eos_prefix and add_special_tokens is not False else ids

        def tok_decode(self, ids) -> str:
            return self.tok.decode(list(ids))

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            return score_pairs(
                self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size, self.precision, self.spec
            )

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for req in requests:
                ids = self.tok_encode(req.args[0], add_special_tokens=False)
                wins = get_rolling_token_windows(ids, self.eot_token_id, self.max_length, context_len=1)
                pairs = [make_disjoint_window(w) for w in wins]
                out.append(sum(ll for ll, _ in score_pairs(self.model, pairs, self.batch_size, self.precision, spec)))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for req in requests:
                context, kw = req.args
                until = kw.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kw.get("max_gen_toks", 256))
                ids = self.tok_encode(context)[-max(1, self.max_length - max_new) :]
                new = generate(
                    self.model, ids, max_new, self.spec.vocab_size, stop_ids=[self.eot_token_id], precision=precision
                )
                text = self.tok_decode([i for i in new if i != self.eot_token_id])
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out.append(text)
            return out

    return OvertrainLM()


@torch.no_grad()
def score_pairs(model, pairs, batch_size: int, precision: str, spec) -> list[tuple[float, bool]]:
    """(sum log p(cont | ctx), whether every cont token is the argmax) per (ctx_ids, cont_ids) pair.

    Sequences longer than the model's context keep their last ``max_sequence_length + 1`` tokens.
    Batched by length (results in input order); only the continuation positions reach the readout.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seqs = []
    for ctx, cont in pairs:
        seq = (list(ctx) + list(cont))[-(spec.max_sequence_length + 1) :]
        seqs.append((seq, min(len(cont), len(seq) - 1)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(seqs)
    with autocast_for(device, precision):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            inputs = pad_batch([seqs[i][0][:-1] for i in idx], spec.pad_token_id).to(device)
            targets = torch.full_like(inputs, -100)
            for row, i in enumerate(idx):
                seq, n = seqs[i]
                targets[row, len(seq) - 1 - n : len(seq) - 1] = torch.as_tensor(seq[len(seq) - n :])
            mask = targets >= 0
            with readout_at(model, mask):
                logp = torch.log_softmax(model(inputs).logits[0, :, : spec.vocab_size].float(), dim=-1)
            tgt = targets[mask]
            ll = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double().cpu()
            greedy = (logp.argmax(-1) == tgt).cpu()
            at = 0
            for i in idx:  # the mask is row-major: each row's continuation is one contiguous run
                n = seqs[i][1]
                out[i] = (float(ll[at : at + n].sum()), bool(greedy[at : at + n].all()))
                at += n
    model.train(was_training)
    return out


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


METRIC_SKIP = ("_stderr",)  # row keys that are not metrics to plot (their error bars)
ROW_KEYS = {"num_fewshot", "limit", "n_examples", "seconds", "time", "pretrain_tokens", "budget_tokens"}


def lm_eval_points(rows, metric: str) -> dict[tuple[str, str, bool], list[tuple[float, float]]]:
    """{(model, task, lr_decayed): [(pretrain_tokens, mean metric)]} of kind "lm_eval" rows, by tokens.

    Intermediate checkpoints (``lr_decayed: false``) are their own curves, as in the report."""
    acc: dict[tuple[str, str, bool, float], list[float]] = {}
    for row in rows:
        value, tokens = row.get(metric), row.get("pretrain_tokens")
        if row.get("kind") == "lm_eval" and isinstance(value, (int, float)) and tokens is not None:
            key = (str(row.get("model")), str(row.get("task")), row.get("lr_decayed") is not False, float(tokens))
            acc.setdefault(key, []).append(float(value))
    out: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    for (model, task, decayed, tokens), vals in sorted(acc.items()):
        out.setdefault((model, task, decayed), []).append((tokens, sum(vals) / len(vals)))
    return out


def lm_eval_figures(rows, out: Path) -> list[Path]:
    """One PNG per (lm-eval task, metric): the metric against pre-training tokens, a line per model
    (dotted with hollow markers: intermediate checkpoints). Used by ``overtrain report``."""
    rows = [r for r in rows if r.get("kind") == "lm_eval"]
    metrics = sorted(
        {k for r in rows for k, v in r.items() if isinstance(v, float) and k not in ROW_KEYS and "_stderr" not in k}
    )
    if not rows or not metrics:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.atomic import atomic_savefig

    paths = []
    for metric in metrics:
        curves = lm_eval_points(rows, metric)
        for task in sorted({t for _, t, _ in curves}):
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for (model, t, decayed), pts in curves.items():
                if t == task:
                    style = {"marker": "o"} if decayed else {"marker": "o", "linestyle": ":", "mfc": "none"}
                    label = model if decayed else f"{model} (not decayed)"
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
            ax.set_xscale("log")
            ax.set_xlabel("pre-training tokens")
            ax.set_ylabel(f"lm-eval {metric}")
            ax.set_title(f"{task}: {metric}", fontsize=10)
            ax.legend(fontsize=8)
            slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{task}_{metric}")
            paths.append(atomic_savefig(fig, out / f"lm_eval_{slug}.png", dpi=110, bbox_inches="tight"))
            plt.close(fig)
    return paths


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


CONFIG = LmEvalConfig


def add_arguments(p):
    p.add_argument(
        "checkpoint",
        help="a checkpoint step dir, checkpoints/ dir, run dir, RUN@tokens=N, or a transformers model directory",
    )


def suite_member(checkpoint: str, cfg: LmEvalConfig):
    """The ``core.suite.SuiteMember`` that ``checkpoint`` names, or None for an overtrain checkpoint
    (``RUN@tokens=N``) or a plain model directory (unless ``member=true``)."""
    from ..core.suite import parse_member

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


def run(args) -> int:
    rows, out = lm_eval_checkpoint(args.checkpoint, args.config)
    if args.json:
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
