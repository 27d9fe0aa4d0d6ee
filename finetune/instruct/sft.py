"""``overtrain sft MODEL data=... out=... [key=value ...]``: instruction-tune one suite member (SFT).

    overtrain sft allenai/OLMo-1B-hf revision=step20000-tokens84B data=allenai/tulu-v2-sft-mixture out=runs/sft/84B
    overtrain sft runs/suite/step5-tokens1K data='${OVERTRAIN_DATA}/gsm8k/train.jsonl' max_examples=32 out=runs/sft/1K

MODEL is a suite member (``core.suite``): a local transformers directory, or a hub repository with
``revision=`` (or ``repo@revision``). The model runs as itself through transformers
(``AutoModelForCausalLM``, any size), not through the muP wrapper. Order of work:

1. check everything before any work: the config, the member (missing directory / unknown revision /
   architecture transformers cannot load: ``core.suite.check_loadable``), the chat data (every record,
   ``data.chat``: a record without an assistant turn is one error naming file:line), the output;
2. render the records (the tokenizer's chat template, else TULU's), loss on assistant tokens only;
3. train with THE step core (``core.step.train_step``) and ``sft_loss``: summed cross-entropy over the
   assistant tokens from the model's logits, divided by the global count of assistant tokens per step;
   AdamW, warmup then linear (or cosine) decay to 0 (``core.schedule.Schedule``);
4. save model + tokenizer (``save_pretrained``) and ``overtrain_suite.json`` (``core.suite``) in a
   temporary directory, then rename it to ``out`` (atomic); append one ``kind: sft`` row to ``results``.
   The training stats (``sft_stats``, in the row and in every lm-eval row of the tuned model) hold
   ``chat_template_sha256``: the template the records were rendered with (``data.chat.template_sha256``),
   so runs with different templates are never pooled as seeds of one setting.

A run stopped midway (SIGTERM / SIGUSR1: a Slurm preemption, exit 75; or killed) resumes when the same
command runs again, on any number of ranks: checkpoints every ``checkpoint_every`` steps, every
``checkpoint_minutes`` and on a stop, in ``OUT.checkpoints`` beside ``out``, removed once ``out`` is
written (``finetune.instruct.sft_checkpoint``).

``out`` holding ``overtrain_suite.json`` with an ``sft`` config is finished: a rerun with the same
settings is skipped ("already done"; it appends the results row if that is missing), other settings
are an error, ``overwrite=true`` replaces it. A member's pre-training tokens must be known (parsed or
``tokens=``): a row without them cannot be placed on the tokens axis. Deterministic given ``seed``
(batch order from numpy's generator, torch seeded): bit-identical on CPU; on CUDA up to the
nondeterministic kernels.

Several processes (data parallel, ``core.dist``: nccl on CUDA, gloo on CPU; the grid's
``instruct.gpus``)::

    python -m torch.distributed.run --standalone --nproc_per_node=8 -m overtrain sft MODEL data=... out=...

Every rank checks the input, loads the model and draws the same batch order; rank r trains on its
contiguous share of every global batch (``batch_shares``: ``batch_size`` records split into
``world`` parts that differ by at most one record), in micro-batches of ``micro_batch_size``; the
step core all-reduces the global count of assistant tokens and the gradients (DDP, once per step),
so a step is the 1-process step up to the order of float additions (tests/test_sft_ddp.py). A rank
whose share is empty (the last batch of an epoch, smaller than ``world``) runs one fully masked
token, so every rank joins every all-reduce. Only rank 0 logs and writes ``out`` and the row.

Memory (fp32 master weights, AdamW: 16 bytes per parameter for weights + gradients + two moments,
plus activations): OLMo-1B (1.18B parameters) needs ~19 GB before activations, so a full fine-tune
fits one 80 GB GPU. Activations, estimated (not measured: no GPU in our tests) for OLMo-1B under
``precision=auto`` (bf16 autocast on CUDA): ~3.5 GB per 2048-token record (16 layers x ~40 bytes x
2048 per token, plus the logits over 50K words), so the default micro-batch of 8 x 2048 tokens
(~30 GB) fits beside the states; ``gradient_checkpointing=true`` (transformers' activation
checkpointing, non-reentrant) keeps only each layer's input (~1.5 GB per record, most of it the
logits) and recomputes the rest in the backward (~1/3 more compute), for longer sequences or larger
micro-batches. DDP replicates the whole model and optimizer on every GPU, so it adds throughput,
never memory: a 7B model (~112 GB of states) does not fit any single 80 GB GPU. ``parallel=fsdp``
shards it (torch's FSDP2 per decoder layer, ``core.dist.shard``: 1/world of the states per rank, a
layer's parameters gathered for its forward and backward, gradients reduce-scattered in fp32; every
rank runs as many micro-batches, idle ones added); the whole weights are gathered on rank 0 to save
(tests/test_sft_ddp.py: equal to one process).

Defaults (marked choices): Amuro & Char fine-tune OLMo-1B checkpoints on TULU with 5 epochs, batch 8,
LR 2e-6, which we take; the catastrophic-overtraining paper's own SFT table is not in our sources.
Warmup 3% and linear decay, AdamW (0.9, 0.999) without weight decay, clip 1.0 and max_seq_len 2048 are
open-instruct's TULU defaults as we know them, not checked against the papers.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...core import dist
from ...core.atomic import replace_dir
from ...core.config import to_dict
from ...core.dist import FSDPConfig
from ...core.errors import ConfigError
from ...core.hf_compat import hide_broken_torchvision
from ...core.identity import no_result, no_result_keys
from ...core.jsonl import append_record, read_records
from ...core.memory import Setup, check_fits, hf_shape, setup_of
from ...core.optim import build_optimizer
from ...core.paths import expand_path
from ...core.preempt import stop_requested
from ...core.schedule import Schedule, ScheduleConfig
from ...core.suite import (
    PROVENANCE_FILE,
    check_loadable,
    parse_member,
    read_provenance,
    resolve_with_provenance,
    write_provenance,
)
from ...data.chat import ChatEncoding, chat_template_of, encode_chat, load_chat, template_sha256
from ...train.trainer import Hook, SingleRun, StepEvent, Trainer
from ..training import batch_plan
from .sft_checkpoint import Resumed, SFTCheckpoints

ROW_KIND = "sft"


@dataclass
class SFTConfig:
    data: str = (
        ""  # chat data: a .jsonl/.json file (TULU messages, Anthropic-HH chosen, question/answer) or hub NAME[:SPLIT]
    )
    out: str = no_result("")  # the transformers directory to write (model, tokenizer, overtrain_suite.json)
    data_name: str = ""  # a short name for data in rows and the report (a grid's instruct.datasets key); "": data
    revision: str | None = None  # hub revision of MODEL (or write MODEL as repo@revision); None for a local directory
    tokens: int | None = None  # pre-training tokens of MODEL; None: parsed from the revision / directory name
    lr: float = 2e-6  # peak LR (marked choice: Amuro & Char's OLMo-1B TULU SFT)
    epochs: int = 5  # passes over the chat records (marked choice: Amuro & Char)
    batch_size: int = 8  # records per optimizer step (marked choice: Amuro & Char)
    micro_batch_size: int = 8  # records per forward (gradient accumulation; same result up to float rounding)
    max_seq_len: int = 2048  # tokens per record, longer ones cut (capped at the model's max_position_embeddings)
    max_examples: int | None = None  # use only the first N records of data
    warmup: float = 0.03  # warmup as a fraction of the steps (marked choice: open-instruct's TULU default)
    schedule: Literal["linear", "cosine"] = "linear"  # decay to 0 after warmup (marked choice: linear)
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices (marked choice: none)
    optimizer: Literal["adamw"] = "adamw"  # torch AdamW, betas (0.9, 0.999), eps 1e-8 (marked choice)
    grad_clip: float = 1.0  # global gradient-norm clip (0 = none)
    seed: int = 0  # batch order and torch's RNG
    device: str = no_result("auto")  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: fp32 weights, bf16 autocast on CUDA
    # recompute activations in the backward (less memory, ~1/3 more compute)
    gradient_checkpointing: bool = no_result(False)
    # under torchrun: replicate (ddp) or shard per decoder layer (fsdp)
    parallel: Literal["ddp", "fsdp"] = no_result("ddp")
    fsdp: FSDPConfig = no_result(factory=FSDPConfig)  # reshard_after_forward, param_dtype (core.dist)
    memory_gb: float | None = no_result(None)  # one GPU's memory: refuse a run whose estimate (core.memory) won't fit
    results: str | None = no_result(None)  # append one 'sft' row (provenance + training stats) to this results.jsonl
    overwrite: bool = no_result(False)  # replace a finished out (else a finished out is skipped)
    log_every: int = no_result(10)  # a progress line every N steps (0 = none)
    # mid-run checkpoints beside out (OUT.checkpoints, finetune.instruct.sft_checkpoint): every N steps (0 = by time only)
    checkpoint_every: int = no_result(0)
    # ... and once this many minutes passed since the last (0 = never by time; marked choice: at most 30 min lost)
    checkpoint_minutes: float = no_result(30.0)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("data= is required (a chat JSONL/JSON file or a hub dataset name)")
        if not self.out:
            raise ValueError("out= is required (the directory to write)")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("lr must be > 0; epochs, batch_size and micro_batch_size >= 1")
        if self.max_seq_len < 2 or (self.max_examples is not None and self.max_examples < 1):
            raise ValueError("max_seq_len must be >= 2 and max_examples >= 1")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup must be in [0, 1); weight_decay and grad_clip >= 0")
        if self.checkpoint_every < 0 or self.checkpoint_minutes < 0:
            raise ValueError("checkpoint_every and checkpoint_minutes must be >= 0 (0 = off)")


# Settings that change no result (fields marked ``core.identity.no_result``): left out of the
# recorded config that a rerun is compared with.
NOT_RESULT = no_result_keys(SFTConfig)


def recorded_config(model: str, cfg: SFTConfig) -> dict:
    """The ``sft`` entry of the provenance: MODEL and every setting that changes the result."""
    return {"model": model, **{k: v for k, v in to_dict(cfg).items() if k not in NOT_RESULT}}


def finished(out: Path) -> dict | None:
    """The provenance of a finished SFT output ``out``, or None when there is none."""
    if not (out / PROVENANCE_FILE).is_file():
        return None
    prov = read_provenance(out)
    return prov if prov.get("sft") else None


def check_out(out: Path, recorded: dict, overwrite: bool) -> dict | None:
    """The provenance when ``out`` is finished with these settings (skip); raise if it holds anything else."""
    if overwrite or not out.exists():
        return None
    prov = finished(out)
    if prov is None:
        raise ConfigError(f"out={out}: exists and is not a finished SFT output; overwrite=true replaces it")
    diff = sorted(k for k in set(recorded) | set(prov["sft"]) if recorded.get(k) != prov["sft"].get(k))
    if diff:
        changes = ", ".join(f"{k}: {prov['sft'].get(k)!r} -> {recorded.get(k)!r}" for k in diff)
        raise ConfigError(f"out={out}: finished with other settings ({changes}); overwrite=true replaces it")
    return prov


def sft_loss(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over targets y >= 0, their count) from a transformers causal LM's logits.

    Like ``core.likelihood.lm_loss``; x is right-padded (a causal model's earlier positions never
    see the padding, so no attention mask is needed). fp32 softmax whatever the autocast dtype.
    """
    logits = model(input_ids=x, use_cache=False).logits  # training: no KV cache
    mask = y >= 0
    loss = F.cross_entropy(logits[mask].float(), y[mask], reduction="sum")
    return loss, mask.sum()


def micro_batches(
    enc: ChatEncoding, order: np.ndarray, micro: int, pad_id: int, device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) per micro-batch of the records ``order``: x = ids[:-1], y = labels[1:], right-padded."""
    out = []
    for i in range(0, len(order), micro):
        rows = order[i : i + micro]
        width = max(len(enc.ids[r]) for r in rows) - 1
        x = torch.full((len(rows), width), pad_id, dtype=torch.long)
        y = torch.full((len(rows), width), -100, dtype=torch.long)
        for j, r in enumerate(rows):
            ids, labels = enc.ids[r], enc.labels[r]
            x[j, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[j, : len(ids) - 1] = torch.tensor(labels[1:])
        out.append((x.to(device), y.to(device)))
    return out


def batch_shares(batch: np.ndarray, world: int) -> list[np.ndarray]:
    """Each rank's contiguous share of one global batch (sizes differ by at most one; a share may be empty)."""
    return np.array_split(batch, world)


def idle_micro_batch(pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One padding token with no target: the micro-batch of a rank whose share is empty. Its loss
    is 0 and every parameter gets a zero gradient, so the rank joins DDP's all-reduce."""
    return torch.full((1, 1), pad_id, dtype=torch.long, device=device), torch.full(
        (1, 1), -100, dtype=torch.long, device=device
    )


def train_sft(
    model,
    tokenizer,
    enc: ChatEncoding,
    cfg: SFTConfig,
    device,
    log=None,
    info: dist.DistInfo | None = None,
    checkpoints: SFTCheckpoints | None = None,
) -> dict:
    """Train ``model`` in place over ``cfg.epochs`` passes of ``enc``; returns the training stats (global,
    the same on every rank). Under torchrun (``info`` distributed) this rank trains on its share of
    every batch through DDP (module doc). The one loop (``train.trainer.Trainer``): a ``SingleRun``
    with ``sft_loss`` (the chat-masked step), a non-finite loss raises (``Diverged``). With
    ``checkpoints`` (``sft_checkpoint``, prepared): resumed from its checkpoint, if any, and saved
    mid-run; a SIGTERM / SIGUSR1 saves one and raises ``core.preempt.Preempted``."""
    info = info or dist.DistInfo()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n = len(enc.ids)
    per_epoch, total = batch_plan(n, cfg.batch_size, cfg.epochs)  # an epoch's last batch may be smaller
    schedule = Schedule.build(ScheduleConfig(warmup_fraction=cfg.warmup, decay=cfg.schedule), total, 1, cfg.lr)
    resumed = checkpoints.load_weights(model, enc, total) if checkpoints else Resumed()  # before any sharding
    # DDP / FSDP (sharded in place, per decoder layer) under torchrun; the model itself otherwise
    train_model = dist.prepare(model, info, device, cfg.parallel, cfg.fsdp, decoder_layers(model), cfg.precision)
    opt = build_optimizer(model.named_parameters(), cfg.lr, weight_decay=cfg.weight_decay, mup=False)
    if checkpoints:
        checkpoints.load_optimizer(model, opt)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # padded inputs are never targets
    # Under FSDP every forward is a collective: every rank runs as many micro-batches (idle ones added).
    sharded = dist.is_sharded(train_model)
    orders = [rng.permutation(n) for _ in range(cfg.epochs)]  # epoch e's record order, drawn in turn

    def batches(step: int):
        epoch, b = divmod(step, per_epoch)
        batch = orders[epoch][b * cfg.batch_size : (b + 1) * cfg.batch_size]
        share = batch_shares(batch, info.world_size)[info.rank]
        mbs = micro_batches(enc, share, cfg.micro_batch_size, pad_id, device) or [idle_micro_batch(pad_id, device)]
        if sharded:
            most = math.ceil(math.ceil(len(batch) / info.world_size) / cfg.micro_batch_size)
            mbs += [idle_micro_batch(pad_id, device) for _ in range(most - len(mbs))]
        return mbs, sum(len(enc.ids[r]) - 1 for r in batch)

    stepper = SingleRun(train_model, opt, cfg.grad_clip, cfg.precision, sft_loss, weights=model)
    record = SFTLog(per_epoch, total, cfg.log_every, log)
    record.load(resumed.log)
    t0 = time.perf_counter()
    # Without checkpoints a signal stops the process as it always did: nothing would be saved.
    with stop_requested() if checkpoints else contextlib.nullcontext() as stop:
        if checkpoints:
            checkpoints.attach(model, opt, record, total, stop)
        hooks = [record, checkpoints] if checkpoints else [record]
        Trainer(stepper, batches, [schedule], total, hooks, "raise", "sft").run(resumed.step)
    wall = resumed.wall_s + time.perf_counter() - t0
    return {
        "steps": total,
        "examples": n,
        "dropped": enc.dropped,
        "truncated": enc.truncated,
        "target_tokens": record.tokens,
        "input_tokens": record.inputs,
        "loss_first": record.losses[0],
        "loss_last": record.losses[-1],
        "epoch_losses": [s / max(t, 1) for s, t in record.epoch_sums],
        "wall_s": wall,
        "input_tokens_per_s": record.inputs / wall if wall > 0 else None,
        "world_size": info.world_size,
        "resumes": resumed.resumes,  # sessions that resumed from a checkpoint (sft_checkpoint)
    }


class SFTLog(Hook):
    """SFT's hook on the loop: its losses, token counts and per-epoch (token-weighted) loss, and a
    progress line every ``log_every`` steps and at the last."""

    def __init__(self, per_epoch: int, total: int, log_every: int, log=None):
        self.per_epoch, self.total, self.log_every, self.log = per_epoch, total, log_every, log
        self.losses: list[float] = []
        self.epoch_sums: list[tuple[float, int]] = []  # per epoch: (sum of loss x tokens, tokens)
        self.tokens = self.inputs = 0

    def state(self) -> dict:
        """What a checkpoint keeps of the log (``load`` restores it): the row's sums so far."""
        return {"losses": self.losses, "epoch_sums": self.epoch_sums, "tokens": self.tokens, "inputs": self.inputs}

    def load(self, state: dict | None) -> None:
        if state:
            self.losses, self.tokens, self.inputs = list(state["losses"]), state["tokens"], state["inputs"]
            self.epoch_sums = [(float(s), int(t)) for s, t in state["epoch_sums"]]

    def after_step(self, ev: StepEvent) -> None:
        (stats,) = ev.stats
        epoch, step = ev.step // self.per_epoch, ev.step + 1
        if epoch == len(self.epoch_sums):
            self.epoch_sums.append((0.0, 0))
        s, t = self.epoch_sums[epoch]
        self.epoch_sums[epoch] = (s + stats.loss * stats.tokens, t + stats.tokens)
        self.losses.append(stats.loss)
        self.tokens += stats.tokens
        self.inputs += ev.input_tokens
        if self.log and self.log_every and (step % self.log_every == 0 or step == self.total):
            self.log(f"step {step}/{self.total} | epoch {epoch + 1} | loss {stats.loss:.4f} | lr {stats.lr:.3g}")


MEMORY_SETTINGS = {
    "parallel": "parallel",
    "checkpointing": "gradient_checkpointing",
    "micro_batch_size": "micro_batch_size",
    "gpus": "torchrun --nproc_per_node",
}


def memory_setup(config: dict, cfg: SFTConfig, world_size: int) -> Setup:
    """What one rank's memory depends on besides the model: ``max_seq_len`` capped at the model's context."""
    seq = min(cfg.max_seq_len, config.get("max_position_embeddings") or cfg.max_seq_len)
    return setup_of(cfg, seq, world_size, MEMORY_SETTINGS)


def check_memory(path: Path, cfg: SFTConfig, world_size: int, what: str) -> None:
    """With ``memory_gb``: refuse (``ConfigError``, naming the setting that fits) a run that will not fit."""
    if cfg.memory_gb is None:
        return
    config = json.loads((Path(path) / "config.json").read_text())
    check_fits(hf_shape(config), memory_setup(config, cfg, world_size), cfg.memory_gb, f"sft {what}", MEMORY_SETTINGS)


def decoder_layers(model) -> list[torch.nn.Module]:
    """A transformers causal LM's decoder layers (FSDP's units): the ModuleList of config.num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return list(module)
    raise ConfigError(f"{type(model).__name__}: no list of {n} decoder layers to shard; use parallel=ddp")


def enable_checkpointing(model) -> None:
    """transformers' activation (gradient) checkpointing, non-reentrant (the variant DDP supports)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (gradient_... is its deprecated alias)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _row(out: Path, prov: dict) -> dict:
    return {"kind": ROW_KIND, "out": str(out), **prov}


def _ensure_row(results: str | None, out: Path, prov: dict) -> bool:
    """Append the row of ``out`` unless ``results`` already has one (a rerun after a kill between save and row)."""
    if not results:
        return False
    if Path(results).exists() and any(
        r.get("kind") == ROW_KIND and r.get("out") == str(out) for r in read_records(results, warn=False)
    ):
        return False
    append_record(results, _row(out, prov))
    return True


def run_sft(model_ref: str, cfg: SFTConfig, log=print) -> dict:
    """The command as a function: returns the provenance written to ``cfg.out`` (or found there).

    Under torchrun every rank runs it (module doc); only rank 0 logs, writes ``out`` and the row."""
    info = dist.env_info()
    if not info.is_main:
        log = _quiet
    member = parse_member(model_ref, tokens=cfg.tokens, revision=cfg.revision)
    out = Path(expand_path(cfg.out)).absolute()
    results = expand_path(cfg.results) if cfg.results else None
    recorded = recorded_config(member.ref, cfg)
    done = check_out(out, recorded, cfg.overwrite)
    checkpoints = SFTCheckpoints(out, recorded, info, cfg.checkpoint_every, cfg.checkpoint_minutes, log)
    if done is not None:
        if info.is_main:
            _ensure_row(results, out, done)
            checkpoints.remove()  # left by a run killed after writing out
        log(f"sft: {out} already done (overwrite=true redoes it)")
        return done
    if cfg.batch_size < info.world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is smaller than the {info.world_size} processes: every step would leave "
            "some idle; use fewer processes or a larger batch"
        )
    path, prov = resolve_with_provenance(member, cfg.tokens)
    check_memory(path, cfg, info.world_size, member.ref)  # from config.json, before any weight is read
    records = load_chat(cfg.data, cfg.max_examples)  # every record checked before any work
    device = dist.resolve_device(cfg.device, info)

    dist.init(info, device)
    try:
        checkpoints.prepare(device, cfg.overwrite)  # the checkpoint to resume from, its settings checked
        model, tokenizer, stats = _load_and_train(
            path,
            records,
            cfg,
            device,
            info,
            log,
            f"{member.ref} ({prov['pretrain_tokens']} pre-training tokens)",
            checkpoints,
        )
        prov.update(sft_data=cfg.data, sft=recorded, sft_stats=stats)
        weights = dist.full_state_dict(model, info) if dist.is_sharded(model) else None  # gathered on rank 0
        if info.is_main:
            save_tuned(model, tokenizer, prov, out, weights)
            _ensure_row(results, out, prov)
            checkpoints.remove()  # the tuned model is saved: the run will not resume again
            log(f"sft: loss {stats['loss_first']:.4f} -> {stats['loss_last']:.4f} in {stats['steps']} steps -> {out}")
        dist.barrier()  # every rank returns once out is written
    finally:
        dist.shutdown()
    return prov


def _quiet(_msg: str) -> None:
    pass


def _load_and_train(path: Path, records, cfg: SFTConfig, device, info: dist.DistInfo, log, what: str, checkpoints=None):
    """(model, tokenizer, training stats): the member loaded from ``path`` in fp32 and trained on ``records``."""
    hide_broken_torchvision()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers (optional extra [hf])

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    max_len = min(cfg.max_seq_len, getattr(model.config, "max_position_embeddings", None) or cfg.max_seq_len)
    enc = encode_chat(tokenizer, records, max_len)
    log(
        f"sft: {what} on {len(enc.ids)} records of {cfg.data} x {cfg.epochs} epochs, lr {cfg.lr:g}, "
        f"on {info.world_size} x {device}"
    )
    stats = train_sft(model, tokenizer, enc, cfg, device, log, info, checkpoints)
    stats["max_seq_len"] = max_len
    stats["chat_template_sha256"] = template_sha256(chat_template_of(tokenizer))
    return model, tokenizer, stats


def save_tuned(model, tokenizer, prov: dict, out: Path, weights: dict | None = None, causal_lm: bool = True) -> None:
    """Model (``weights``: its whole state dict, gathered from FSDP's shards), tokenizer and provenance
    in a temporary directory, checked (``causal_lm``: loadable as a suite member), then renamed to ``out``
    (atomic). SFT and multimodal tuning (a LLaVA model: not a causal LM) both save through it."""
    tmp = out.with_name(f".{out.name}.tmp-{np.random.default_rng().integers(1 << 32):08x}")
    try:
        model.save_pretrained(str(tmp), state_dict=weights)
        tokenizer.save_pretrained(str(tmp))
        write_provenance(tmp, prov)
        if causal_lm:
            check_loadable(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run(config: SFTConfig, model: str) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr if msg.startswith("step ") else sys.stdout, flush=True)

    run_sft(model, config, log)
    return 0
