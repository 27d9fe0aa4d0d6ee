"""``overtrain alpaca-eval MODEL [key=value ...]``: AlpacaEval win rates of a suite member through the
``alpaca-eval`` package (0.6.6; the field's implementation, not a re-implementation).

    overtrain alpaca-eval runs/grid/instruct/step20000-tokens84B_hh results=runs/alpaca.jsonl   # AlpacaEval 2, GPT-4 judge
    overtrain alpaca-eval runs/sft/1K instructions=eval.json judge=runs/judge-model out=runs/ae/1K  # a local judge

Order of work: every check before any generation (the member loads: ``core.suite``; pre-training
tokens known; every instruction record has ``instruction`` and ``output`` text, else one DataError
naming file:record; the judge resolves and, when it calls an API, its key is set: one ConfigError
naming the environment variable; the length-controlled model's data is reachable), then:

1. generation: the member answers every instruction, rendered as one user turn with its chat template
   (the tokenizer's own, else TULU's, ``data.chat``; ``chat_template_sha256`` recorded), greedy,
   ``max_new_tokens`` new tokens at most (capped by the context), stopped at EOS; left-padded batches
   of ``batch_size`` (greedy: the same tokens as one at a time, up to float rounding of near-ties);
2. judging: the package's ``PairwiseAnnotator.annotate_head2head(reference, model)`` with the judge's
   annotator config: the package's prompt template, its random swap of the two outputs' positions
   (seeded by the instruction), its completion parser;
3. metrics: the package's ``metrics.get_winrate`` and ``get_length_controlled_winrate`` (the GLM of
   Dubois et al. 2024, ``length_controlled_v1``). With p_i in [0, 1] the judge's preference for the
   member's output on instruction i (``preference - 1``: 0 the reference wins, 1 the member wins,
   0.5 a tie; weighted judges give the probability), over the n annotated instructions:

       win_rate = (1/n) sum_i p_i        win_rate_se = sd(p) / sqrt(n)      (the package's sem)
       lc_win_rate = (1/n) sum_i g_i     g_i = the GLM's preference at zero length difference

   Rows hold fractions in [0, 1] (the package prints percent). ``outputs.json`` and
   ``annotations.json`` (the package's per-instruction records) are written to ``out``; one
   ``alpaca_eval`` row (``core.rows.AlpacaEvalRow``) is appended to ``results``, with the per-instruction
   arrays ``alpaca_eval.TASK.{index,win_rate,lc_win_rate,length}`` in its scores file
   (``core.rows.write_scores``; an instruction the judge left unannotated counts 0.5 there, a tie, and
   in ``n_missing``), so the suite report bootstraps and pairs them over instructions
   (``evaluate.report.suite_part``: win rate against pre-training tokens, the same verdict as its tasks).
   TASK is ``alpaca_eval/JUDGE``: curves of different judges are never pooled.

Judges (``judge=``):

- an annotator config of the package by name (``weighted_alpaca_eval_gpt4_turbo``, AlpacaEval 2's
  default, the paper's kind of judge: a GPT-4 model through the OpenAI API), or a path to an
  evaluators-configs style ``configs.yaml`` (or its folder). Its decoder's key must be set
  (``API_KEYS``; for OpenAI also a client config file, ``OPENAI_CLIENT_CONFIG_PATH``);
- a local transformers model directory: AlpacaEval 2's own annotator recipe (the prompt
  ``alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt``, ``logprob_parser`` over the identifiers m/M,
  unbinarized) with the API decoder replaced by ``local_logprob_completions``, written by us as an
  evaluators-configs YAML (``out/judge/configs.yaml``) and registered with the package's decoder
  lookup for the annotation only. It renders the package's ChatML prompt with the judge's chat
  template and returns the next-token log-probabilities in the OpenAI shape the parser reads (the
  top ``top_logprobs`` tokens plus m and M themselves, so a weak judge never yields "no annotation").
  A prompt longer than the judge's context keeps its end (the question and the identifiers), counted
  in the row's ``judge_prompts_cut``: a judge that saw part of the answers only (the tests' 128-token
  judge sees only the prompt's fixed end, so its preferences differ only by the outputs' positions).

Why not the package's ``huggingface_local_completions`` for the local judge: (1) on a machine without
CUDA it passes ``load_in_8bit=False`` to ``from_pretrained``, which transformers >= 5 hands to the model
constructor (``TypeError: OlmoForCausalLM.__init__() got an unexpected keyword argument
'load_in_8bit'``), so it cannot run offline on CPU; (2) it returns generated text only, no
log-probabilities, so AlpacaEval 2's weighted annotator cannot use it, and a small judge's free text
rarely matches a parser. Everything else (prompt, swap, parsing, win rates, GLM) is the package's.

The length-controlled win rate needs the package's hub files of ``tatsu-lab/alpaca_eval``
(``df_gamed.csv``: the gamed baselines' annotations and the instructions' difficulty), downloaded by
the package; ``lc_data=DIR`` serves them from a local folder instead (offline), and
``length_controlled=false`` leaves ``lc_win_rate`` out. The GLM indexes the difficulty by the
instruction's position in AlpacaEval's 805: ``limit=N`` keeps the first N, so positions stay true.

Instructions (``instructions=``): ``tatsu-lab/alpaca_eval`` (the hub dataset's ``REFERENCE.json``,
``reference=alpaca_eval_gpt4_baseline``: AlpacaEval 2's GPT-4 Turbo reference outputs), or a local
``.json`` list / ``.jsonl`` of the same records: ``instruction``, ``output`` (the reference answer),
``generator`` (the reference's name), ``dataset``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import yaml
from huggingface_hub import hf_hub_download

from ..core.atomic import atomic_write_text
from ..core.config import to_dict
from ..core.errors import ConfigError, DataError
from ..core.hf_compat import hide_broken_torchvision
from ..core.identity import no_result, no_result_keys
from ..core.jsonl import append_record
from ..core.paths import expand_path
from ..core.rows import AlpacaEvalRow, write_scores
from ..core.suite import check_loadable, parse_member, resolve_with_provenance
from ..data.chat import chat_template_of, template_sha256
from .generalist import is_model_dir, weights_sha256

ROW_KIND = AlpacaEvalRow.KIND
HUB = "tatsu-lab/alpaca_eval"
DEFAULT_JUDGE = "weighted_alpaca_eval_gpt4_turbo"  # the package's AlpacaEval 2 annotator
LOCAL_DECODER = "overtrain_local_logprob_completions"  # the name our YAML gives fn_completions
LABELS = ("m", "M")  # AlpacaEval 2's model identifiers: m = output_1, M = output_2
# decoder -> the environment variables that can hold its key (any one)
API_KEYS = {
    "openai_completions": ("OPENAI_API_KEY", "OPENAI_API_KEYS"),
    "anthropic_completions": ("ANTHROPIC_API_KEY",),
    "google_completions": ("GOOGLE_API_KEY",),
    "cohere_completions": ("COHERE_API_KEY",),
    "huggingface_api_completions": ("HUGGINGFACEHUB_API_TOKEN",),
    "replicate_completions": ("REPLICATE_API_TOKEN",),
    "jina_chat_completions": ("JINA_CHAT_API_KEY",),
}


@dataclass
class AlpacaEvalConfig:
    instructions: str = HUB  # the hub dataset, or a local .json/.jsonl of {instruction, output, generator, dataset}
    reference: str = "alpaca_eval_gpt4_baseline"  # the hub dataset's file of reference outputs (AlpacaEval 2's)
    limit: int | None = None  # evaluate only the first N instructions (their AlpacaEval positions are kept)
    judge: str = DEFAULT_JUDGE  # the package's annotator config name, a configs.yaml path, or a local model dir
    length_controlled: bool = True  # also the length-controlled win rate (the package's GLM; needs lc_data offline)
    lc_data: str = ""  # a folder with the hub dataset's df_gamed.csv (offline); "": the package downloads it
    max_new_tokens: int = 2048  # per answer, capped by the context (marked choice: AlpacaEval's HF model configs)
    batch_size: int = no_result(8)  # answers generated at once (left-padded; greedy tokens unchanged)
    seed: int = 0  # the annotator's seed (which judge of a pool; the package seeds the output swap by instruction)
    revision: str | None = None  # hub revision of MODEL (or MODEL as repo@revision)
    tokens: int | None = None  # pre-training tokens of MODEL; None: its provenance / name
    device: str = no_result("auto")  # auto | cpu | cuda | cuda:N (the member and a local judge)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 weights on CUDA, fp32 elsewhere
    out: str = no_result("")  # folder for outputs.json, annotations.json, the judge config; "": MODEL/alpaca_eval
    results: str | None = no_result(None)  # append one 'alpaca_eval' row here

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit}: expected >= 1")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


NOT_RESULT = no_result_keys(AlpacaEvalConfig)  # settings left out of the row's ``settings``


# ------------------------------------------------------------------------------ instructions


def load_instructions(cfg: AlpacaEvalConfig) -> list[dict]:
    """The instruction records (module doc), the first ``limit``; each checked (DataError naming where)."""
    source = expand_path(cfg.instructions)
    if Path(source).exists() or source.endswith((".json", ".jsonl")):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"instructions={cfg.instructions}: no such file")
        text = path.read_text()
        try:
            if path.suffix == ".jsonl":
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not readable JSON: {e}") from None
        where = str(path)
    else:
        try:
            file = hf_hub_download(source, f"{cfg.reference}.json", repo_type="dataset")
        except Exception as e:  # offline, unknown repository or file
            raise ConfigError(
                f"instructions={source}: cannot read {cfg.reference}.json from the hub ({type(e).__name__}); "
                "give a local JSON of the records (instruction, output, generator, dataset)"
            ) from None
        rows, where = json.loads(Path(file).read_text()), f"{source}/{cfg.reference}.json"
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{where}: expected a non-empty list of records")
    rows = rows[: cfg.limit] if cfg.limit else rows
    for i, r in enumerate(rows):
        for key in ("instruction", "output"):
            if not isinstance(r, dict) or not isinstance(r.get(key), str) or not r[key].strip():
                raise DataError(f"{where}: record {i}: '{key}' must be a non-empty string")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):  # the package pairs the two outputs by instruction text
        if seen.setdefault(r["instruction"], i) != i:
            raise DataError(f"{where}: record {i}: the same instruction as record {seen[r['instruction']]}")
    return [
        {
            "instruction": r["instruction"],
            "output": r["output"],
            "generator": str(r.get("generator") or "reference"),
            "dataset": str(r.get("dataset") or ""),
        }
        for r in rows
    ]


# ------------------------------------------------------------------------------ judges


@dataclass
class Judge:
    config: Path  # the annotator config (configs.yaml) the package reads
    label: str  # the judge's name in the row's task (``alpaca_eval/LABEL``)
    sha256: str  # of the config's text (and a local judge's weights)
    local: bool


def package(module: str = "alpaca_eval"):
    """A module of the alpaca-eval package, imported on first use (not at our import: it takes seconds,
    and its annotators module sets the root logger to INFO, undone here)."""
    level = logging.getLogger().level
    try:
        return importlib.import_module(module)
    finally:
        logging.getLogger().setLevel(level)


def _package_configs() -> Path:
    return Path(package().__file__).parent / "evaluators_configs"


def check_keys(config: Path, annotators: dict) -> None:
    """One ConfigError naming the variable when an annotator's API decoder has no key set."""
    for name, a in annotators.items():
        fn = a.get("fn_completions", "openai_completions") if isinstance(a, dict) else None
        keys = API_KEYS.get(fn, ())
        if not keys or any(os.environ.get(k) for k in keys):
            continue
        client = os.environ.get("OPENAI_CLIENT_CONFIG_PATH")
        if fn == "openai_completions" and client and Path(client).is_file():
            continue
        also = " (or a client config file in OPENAI_CLIENT_CONFIG_PATH)" if fn == "openai_completions" else ""
        raise ConfigError(
            f"judge {config}: annotator {name!r} calls {fn}, which needs an API key: set {' or '.join(keys)}{also}, "
            "or give judge=A_LOCAL_MODEL_DIR"
        )


def resolve_judge(cfg: AlpacaEvalConfig, out: Path) -> Judge:
    """The judge's annotator config, checked (keys set; a local judge loadable), before any generation."""
    given = expand_path(cfg.judge)
    if is_model_dir(given):  # a local transformers judge: AlpacaEval 2's recipe with a local decoder
        model = Path(given).resolve()
        check_loadable(model)
        config, recipe = write_local_judge(model, out / "judge" / "configs.yaml", cfg.device)
        sha = hashlib.sha256((json.dumps(recipe, sort_keys=True) + weights_sha256(model)).encode()).hexdigest()
        return Judge(config, f"local-{model.name}", sha, True)
    path = Path(given)
    if not path.exists() and not any(c in given for c in "/\\") and not given.endswith((".yaml", ".yml")):
        path = _package_configs() / given
        if not path.exists():
            names = sorted(p.name for p in _package_configs().iterdir() if p.is_dir())
            hint = difflib.get_close_matches(given, names, n=3)
            raise ConfigError(
                f"judge={cfg.judge!r}: not an annotator config of alpaca_eval, a configs.yaml or a model directory"
                + (f" (did you mean {', '.join(hint)}?)" if hint else "")
            )
    config = path / "configs.yaml" if path.is_dir() else path
    if not config.is_file():
        raise ConfigError(f"judge={cfg.judge!r}: {config}: no such annotator config")
    annotators = yaml.safe_load(config.read_text())
    if not isinstance(annotators, dict) or not annotators:
        raise ConfigError(f"judge={cfg.judge!r}: {config}: expected a mapping of annotator name -> config")
    check_keys(config, annotators)
    label = config.parent.name if config.name == "configs.yaml" else config.stem
    return Judge(config.resolve(), label, hashlib.sha256(config.read_bytes()).hexdigest(), False)


def label_tokens(tokenizer) -> list[int]:
    """The judge's token id of each identifier in ``LABELS``: one token that decodes to it, else ConfigError."""
    ids = []
    for label in LABELS:
        tok = tokenizer.encode(label, add_special_tokens=False)
        if len(tok) != 1 or tokenizer.decode(tok) != label:
            raise ConfigError(f"judge tokenizer: {label!r} is not one token ({tok}); a local judge needs m and M")
        ids.append(tok[0])
    return ids


def write_local_judge(model: Path, config: Path, device: str = "auto") -> tuple[Path, dict]:
    """Our evaluators-configs YAML for a local judge (module doc): the package's AlpacaEval 2 recipe
    (``weighted_alpaca_eval_gpt4_turbo``) with ``LOCAL_DECODER`` instead of the OpenAI API. Returns the
    file and the recipe without the device (the judge's identity)."""
    hide_broken_torchvision()
    from transformers import AutoTokenizer  # after hide_broken_torchvision

    label_tokens(AutoTokenizer.from_pretrained(str(model)))  # checked before any generation
    recipe = yaml.safe_load((_package_configs() / DEFAULT_JUDGE / "configs.yaml").read_text())[DEFAULT_JUDGE]
    recipe["prompt_template"] = str(_package_configs() / recipe["prompt_template"])  # absolute: read from anywhere
    recipe["fn_completions"] = LOCAL_DECODER
    recipe["completions_kwargs"] = {"model_name": str(model), "top_logprobs": 5}
    recipe["pretty_name"] = f"local judge {model.name} (AlpacaEval 2 recipe)"
    kwargs = {**recipe, "completions_kwargs": {**recipe["completions_kwargs"], "device": device}}
    atomic_write_text(config, yaml.safe_dump({f"local_{model.name}": kwargs}, sort_keys=False))
    return config, recipe


_JUDGES: dict[tuple, tuple] = {}  # (model dir, device) -> (model, tokenizer): loaded once per process


@torch.no_grad()
def local_logprob_completions(
    prompts, model_name: str, top_logprobs: int = 5, device: str = "auto", **kwargs
) -> dict[str, list]:
    """A decoder for the package's annotators (its contract: prompts -> ``completions`` and per-example
    price and time): the local judge's next-token log-probabilities after each ChatML prompt, rendered
    with the judge's chat template, in the OpenAI shape ``logprob_parser`` reads (module doc)."""
    hide_broken_torchvision()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # after hide_broken_torchvision

    prompt_to_chatml = package("alpaca_eval.utils").prompt_to_chatml

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if (model_name, str(dev)) not in _JUDGES:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32).to(dev).eval()
        _JUDGES[model_name, str(dev)] = (model, tokenizer)
    model, tokenizer = _JUDGES[model_name, str(dev)]
    labels = label_tokens(tokenizer)
    t0, completions, alls = time.perf_counter(), [], []
    for prompt in prompts:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt_to_chatml(prompt)]
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template_of(tokenizer), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cut, ids = max(len(ids) - _context(model), 0), ids[-_context(model) :]  # a long prompt keeps its end
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids], device=dev)).logits[0, -1].float(), -1)
        top = torch.topk(logp, top_logprobs).indices.tolist()
        shown = top + [t for t in labels if t not in top]
        entries = [{"token": tokenizer.decode([t]), "logprob": float(logp[t])} for t in shown]
        completions.append(entries[0]["token"])
        alls.append({"logprobs": {"content": [{**entries[0], "top_logprobs": entries}]}, "prompt_tokens_cut": cut})
    per = (time.perf_counter() - t0) / max(len(prompts), 1)
    n = len(prompts)
    return {"completions": completions, "completions_all": alls, "price_per_example": [0.0] * n,
            "time_per_example": [per] * n}  # fmt: skip


def _context(model) -> int:
    return getattr(model.config, "max_position_embeddings", None) or 2048


@contextlib.contextmanager
def local_decoder_registered():
    """The package's decoder lookup (``annotators.base.get_fn_completions``) also knowing ``LOCAL_DECODER``."""
    base = package("alpaca_eval.annotators.base")
    original = base.get_fn_completions

    def lookup(name):
        return local_logprob_completions if name == LOCAL_DECODER else original(name)

    base.get_fn_completions = lookup
    try:
        yield
    finally:
        base.get_fn_completions = original


@contextlib.contextmanager
def lc_files(folder: str):
    """The GLM's hub downloads (``metrics.glm_winrate.hf_hub_download``) served from ``folder`` (module doc)."""
    if not folder:
        yield
        return
    glm_winrate = package("alpaca_eval.metrics.glm_winrate")
    original = glm_winrate.hf_hub_download

    def local(repo_id, filename, **kwargs):
        path = Path(expand_path(folder)) / filename
        if not path.is_file():
            raise ConfigError(f"lc_data={folder}: no {filename} (a copy of the hub dataset {HUB}'s file)")
        return str(path)

    glm_winrate.hf_hub_download = local
    try:
        yield
    finally:
        glm_winrate.hf_hub_download = original


def check_lc(cfg: AlpacaEvalConfig) -> None:
    """With ``length_controlled``: the GLM's data is reachable (``lc_data`` or the hub), before generation."""
    if not cfg.length_controlled:
        return
    if cfg.lc_data:
        if not (Path(expand_path(cfg.lc_data)) / "df_gamed.csv").is_file():
            raise ConfigError(f"lc_data={cfg.lc_data}: no df_gamed.csv (a copy of the hub dataset {HUB}'s file)")
        return
    try:
        hf_hub_download(HUB, "df_gamed.csv", repo_type="dataset")
    except Exception as e:
        raise ConfigError(
            f"length_controlled=true: cannot download {HUB}/df_gamed.csv ({type(e).__name__}); give lc_data=DIR "
            "(a local copy) or length_controlled=false"
        ) from None


# ------------------------------------------------------------------------------ generation


@torch.no_grad()
def generate_answers(path: Path, instructions: list[str], cfg: AlpacaEvalConfig, device) -> tuple[list[str], dict]:
    """The member's greedy answers (module doc, step 1) and the generation settings to record."""
    hide_broken_torchvision()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # after hide_broken_torchvision

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16 if bf16 else torch.float32)
    model = model.to(device).eval()
    template = chat_template_of(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    context, prompts = _context(model), []
    for text in instructions:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        prompts.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    answers: list[str] = [""] * len(prompts)
    cut = 0
    for start in range(0, len(prompts), cfg.batch_size):
        batch = list(range(start, min(start + cfg.batch_size, len(prompts))))
        longest = max(len(prompts[i]) for i in batch)
        new = min(cfg.max_new_tokens, max(context - longest, 1))
        keep = context - new  # a prompt longer than the context keeps its end
        rows = [prompts[i][-keep:] for i in batch]
        cut += sum(len(prompts[i]) > keep for i in batch)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[j, width - len(r) :], mask[j, width - len(r) :] = torch.tensor(r), 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=new,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for j, i in enumerate(batch):
            answers[i] = tokenizer.decode(gen[j, width:], skip_special_tokens=True).strip()
    settings = {
        "greedy": True,
        "max_new_tokens": cfg.max_new_tokens,
        "context": context,
        "prompts_cut": cut,
        "chat_template_sha256": template_sha256(template),
        "dtype": "bf16" if bf16 else "fp32",
    }
    return answers, settings


# ------------------------------------------------------------------------------ judging and rows


def judge_outputs(records: list[dict], answers: list[str], name: str, judge: Judge, cfg: AlpacaEvalConfig):
    """(the package's annotations as a DataFrame, its metrics): the reference outputs against ``answers``."""
    metrics = package("alpaca_eval.metrics")
    PairwiseAnnotator = package("alpaca_eval.annotators").PairwiseAnnotator

    reference = pd.DataFrame(records)
    model = pd.DataFrame([{**r, "output": a, "generator": name} for r, a in zip(records, answers)])
    with local_decoder_registered():
        annotator = PairwiseAnnotator(annotators_config=str(judge.config), seed=cfg.seed, caching_path=None)
        annotations = annotator.annotate_head2head(outputs_1=reference, outputs_2=model)
    df = pd.DataFrame(annotations)
    if cfg.length_controlled:
        with lc_files(cfg.lc_data):  # adds the GLM's per-instruction ``glm_preference`` to df
            scores = metrics.get_length_controlled_winrate(df, save_weights_dir=None, is_warn_extreme_changes=False)
    else:
        scores = metrics.get_winrate(df)
    return df, scores


def _fraction(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x) / 100.0


def run_alpaca(model_ref: str, cfg: AlpacaEvalConfig, log=print) -> dict:
    """The command as a function: returns the row (also appended to ``results``)."""
    member = parse_member(model_ref, tokens=cfg.tokens, revision=cfg.revision)
    path, prov = resolve_with_provenance(member, cfg.tokens)
    out = Path(expand_path(cfg.out)) if cfg.out else Path(path) / "alpaca_eval"
    records = load_instructions(cfg)
    judge = resolve_judge(cfg, out)  # an API judge without its key stops here, before any generation
    check_lc(cfg)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    t0 = time.time()
    log(f"alpaca-eval: {member.ref} answers {len(records)} instructions (judge {judge.label})")
    answers, generation = generate_answers(Path(path), [r["instruction"] for r in records], cfg, device)
    name = f"{prov['suite_revision'] or Path(path).name}"
    outputs = [{**r, "output": a, "generator": name} for r, a in zip(records, answers)]
    atomic_write_text(out / "outputs.json", json.dumps(outputs, indent=1) + "\n")
    df, m = judge_outputs(records, answers, name, judge, cfg)
    text = df.to_json(orient="records", indent=1, double_precision=15)  # pandas' most digits (default: 10)
    atomic_write_text(out / "annotations.json", text + "\n")

    # per instruction, in the records' order (annotate_head2head keeps it): p_i in [0, 1], 0.5 where missing
    by = {ins: i for i, ins in enumerate(r["instruction"] for r in records)}
    win = np.full(len(records), np.nan)
    lc = np.full(len(records), np.nan)
    for _, a in df.iterrows():
        i = by[a["instruction"]]
        if a.get("preference") is not None and math.isfinite(float(a["preference"])):
            win[i] = float(a["preference"]) - 1.0
        if "glm_preference" in df.columns and a["glm_preference"] is not None:
            lc[i] = float(a["glm_preference"])
    missing = int(np.isnan(win).sum())
    raw = df["preference_raw_completion"] if judge.local and "preference_raw_completion" in df.columns else []
    judge_cut = sum(int(r.get("prompt_tokens_cut", 0) > 0) for r in raw if isinstance(r, dict)) if judge.local else None
    arrays = {
        "index": np.arange(len(records)),
        "win_rate": np.where(np.isnan(win), 0.5, win),
        "length": np.array([len(a) for a in answers]),
    }
    if cfg.length_controlled:
        arrays["lc_win_rate"] = lc
    task = f"alpaca_eval/{judge.label}"
    row = AlpacaEvalRow(
        out=str(out.resolve()),
        checkpoint=str(Path(path).resolve()),
        checkpoint_sha256=weights_sha256(Path(path)),
        **prov,
        task=task,
        instructions=cfg.instructions,
        reference=cfg.reference if not Path(expand_path(cfg.instructions)).exists() else None,
        n_instructions=len(records),
        judge=cfg.judge,
        judge_sha256=judge.sha256,
        generation=generation,
        settings={k: v for k, v in to_dict(cfg).items() if k not in NOT_RESULT},
        win_rate=_fraction(m.get("win_rate")),
        win_rate_se=_fraction(m.get("standard_error")),
        lc_win_rate=_fraction(m.get("length_controlled_winrate")),
        lc_win_rate_se=_fraction(m.get("lc_standard_error")),
        n_wins=int(m["n_wins"]),
        n_wins_base=int(m["n_wins_base"]),
        n_draws=int(m["n_draws"]),
        n_total=int(m["n_total"]),
        n_missing=missing,
        judge_prompts_cut=judge_cut,
        avg_length=float(np.mean(arrays["length"])),
        alpaca_eval_version=package().__version__,
        wall_s=time.time() - t0,
        time=time.time(),
    ).to_dict()
    if cfg.results:
        results = expand_path(cfg.results)
        rel = write_scores(results, {ROW_KIND: {task: arrays}})  # written whole before its row
        if rel:
            row["scores"] = rel
        append_record(results, row)
    lc_text = f", length-controlled {100 * row['lc_win_rate']:.1f}%" if row.get("lc_win_rate") is not None else ""
    log(
        f"alpaca-eval: {member.ref}: win rate {100 * row['win_rate']:.1f}% (se {100 * row['win_rate_se']:.1f}){lc_text}"
    )
    return row


def run(config: AlpacaEvalConfig, model: str) -> int:
    run_alpaca(model, config)
    return 0
