"""The plan of a pre-training run: its configs, and every number derived from them before any work starts.

``PretrainConfig`` (with ``DataConfig``, ``OptimConfig``, ``EvalConfig``, ``CheckpointConfig``) is
what ``overtrain pretrain`` reads; ``plan_run`` resolves it into a ``Plan`` (the model spec, steps,
LR schedule, token-mark steps, epochs, the checkpoint to resume) and refuses bad input, naming the
file and field, before anything is written:

    tokens_per_step = global_batch_size x seq_len
    steps           = round(budget_tokens / tokens_per_step), ties up, at least 1 (``steps_for``)
    mark step       = steps_for(t, tokens_per_step) for each checkpoint.at_tokens t
    epochs          = steps x global_batch_size / n_windows,  n_windows = (train tokens - 1) // seq_len

Imports go one way: this module <- ``overtrain.train.pretrain_run`` (the loop runs a ``Plan``) <-
``overtrain.train.pretrain`` (the command: run directory, then the loop). It reads files only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.checkpoint import resume_checkpoint
from ..core.config import from_dict, read_yaml, to_dict
from ..core.dist import FSDPConfig
from ..core.errors import ConfigError, DataError
from ..core.identity import no_result, no_result_keys
from ..core.memory import Setup, check_fits, olmo_shape, setup_of
from ..core.model_spec import ModelSpec, load_model_spec
from ..core.paths import expand_path
from ..core.schedule import Schedule, ScheduleConfig
from ..core.tracker import check_trackers
from ..data.c4 import open_for_model
from .metrics_log import LogConfig

# The run directory's files besides metrics.jsonl (``overtrain.train.metrics_log.METRICS_FILE``).
SUMMARY_FILE = "summary.json"  # written last: its presence means the run finished
CONFIG_FILE = "config.yaml"  # the resolved config; a resume must match it (RESUMABLE_CHANGES aside)

# ---------------------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    dir: str = ""  # a prepared C4 directory (overtrain prepare-data): train.npy, val.npy, meta.json


@dataclass
class OptimConfig:
    # Peak LR at the muP base width (MuAdamW divides it by width_mult for hidden matrices).
    # The paper's value is unknown; see configs/pretrain/*.yaml.
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)  # Adam moment decays
    eps: float = 1e-8  # Adam epsilon
    # Decoupled AdamW decay at the base width; MuAdamW multiplies it by width_mult where it
    # divides the LR, so lr x weight_decay (the actual shrink per step) is width-independent.
    weight_decay: float = 0.1
    # OLMo's default: no decay on the input embedding (rows of rare tokens would only shrink).
    # The readout is a hidden-size matrix like any other and is decayed.
    decay_embeddings: bool = False
    grad_clip: float = 1.0  # global gradient-norm clip (0 = none)


@dataclass
class EvalConfig:
    every_steps: int = no_result(1000)  # C4 validation perplexity every N steps (0 = only at the end)
    val_tokens: int = 1_048_576  # predicted tokens: a fixed prefix of the validation split
    batch_size: int = no_result(16)  # sequences per evaluation forward


@dataclass
class CheckpointConfig:
    every_steps: int = no_result(1000)  # periodic checkpoints (0 = none), pruned to the newest keep_last
    keep_last: int = no_result(2)  # periodic checkpoints kept (the latest is what a resume needs)
    # Token marks for intermediate-checkpoint studies: a checkpoint at the step where a run with
    # that budget would end (same rounding as budget_tokens). Never pruned (nor is the final one).
    at_tokens: list[int] = no_result(factory=list)


@dataclass
class PretrainConfig:
    model: str = "tiny"  # a name in configs/models/ or a YAML path
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelSpec fields, e.g. {d_model: 512}
    parametrization: Literal["mup", "sp"] | None = None  # None = the model config's
    data: DataConfig = field(default_factory=DataConfig)
    run_dir: str = no_result("")  # where config.yaml, metrics.jsonl, checkpoints/ and summary.json go
    budget_tokens: int = 0  # accepts 4B, 512M, 100K
    global_batch_size: int = 256  # sequences per optimizer step, whatever the number of processes
    micro_batch_size: int = no_result(32)  # sequences per forward/backward on one process
    seq_len: int | None = None  # None = the model's context length
    seed: int = 0  # model init and data order
    device: str = no_result("auto")  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = no_result(False)  # torch.compile the model
    # Under torchrun: ddp replicates the model on every rank; fsdp shards parameters, gradients and
    # optimizer states over the ranks per block (core.dist; checkpoints' optimizer state in optim/).
    # Either reorders float sums only (fsdp.param_dtype auto computes in the run's precision).
    parallel: Literal["ddp", "fsdp"] = no_result("ddp")
    fsdp: FSDPConfig = no_result(factory=FSDPConfig)
    activation_checkpointing: bool = no_result(False)  # recompute each block's activations in the backward
    memory_gb: float | None = no_result(None)  # one GPU's memory: refuse a run whose estimate (core.memory) won't fit
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = no_result(factory=LogConfig)

    def validate(self) -> None:
        if not self.data.dir:
            raise ValueError("data.dir is not set (a prepared C4 directory from `overtrain prepare-data`)")
        if not self.run_dir:
            raise ValueError("run_dir is not set (e.g. run_dir=runs/my-run on the command line)")
        if self.budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive (e.g. budget_tokens=4B)")
        for key in ("global_batch_size", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        if self.optim.lr <= 0:
            raise ValueError("optim.lr must be positive")
        if self.checkpoint.keep_last < 1:
            raise ValueError("checkpoint.keep_last must be >= 1 (the latest checkpoint is what a resume needs)")
        if min(self.eval.every_steps, self.checkpoint.every_steps) < 0:
            raise ValueError("eval.every_steps and checkpoint.every_steps must be >= 0")
        if self.eval.val_tokens < 1 or self.eval.batch_size < 1:
            raise ValueError("eval.val_tokens and eval.batch_size must be >= 1")


# Keys that may differ between a run directory's config.yaml and the command resuming it: the
# fields marked ``no_result`` (``core.identity``), which change where/how fast the run goes or what
# is logged, not the trajectory of the weights (a new micro_batch_size or number of processes only
# reorders float sums; anything else stays exact): run_dir, device, compile, parallel, fsdp,
# activation_checkpointing, micro_batch_size, log,
# eval.every_steps, eval.batch_size, checkpoint.every_steps, checkpoint.keep_last, checkpoint.at_tokens.
RESUMABLE_CHANGES = no_result_keys(PretrainConfig)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key != "model_overrides":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, new: dict) -> dict[str, tuple]:
    """Dotted keys whose values differ (ignoring RESUMABLE_CHANGES): key -> (saved, new)."""
    a, b = _flatten(saved), _flatten(new)
    allowed = lambda k: any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)  # noqa: E731
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if not allowed(k) and a.get(k) != b.get(k)}


# ------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """Everything derived from the config, checked before any work starts."""

    cfg: PretrainConfig
    spec: ModelSpec
    seq_len: int
    tokens_per_step: int
    steps: int
    schedule: Schedule
    mark_steps: dict[int, int]  # completed step -> token mark
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    n_windows: int
    epochs: float
    resume_from: Path | None
    world_size: int

    @property
    def realized_tokens(self) -> int:
        return self.steps * self.tokens_per_step


def steps_for(tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps for a token budget: round to nearest (ties up), at least 1."""
    return max(1, int(math.floor(tokens / tokens_per_step + 0.5)))


def resolve_spec(cfg: PretrainConfig, where: str) -> ModelSpec:
    spec = load_model_spec(cfg.model)
    over = dict(cfg.model_overrides)
    if cfg.parametrization is not None:
        over["parametrization"] = cfg.parametrization
    if over:
        try:
            spec = from_dict(ModelSpec, {**to_dict(spec), **over}, where="model_overrides")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return spec


# How a memory refusal names the settings that would make the run fit (core.memory.remedy).
MEMORY_SETTINGS = {
    "parallel": "parallel",
    "checkpointing": "activation_checkpointing",
    "micro_batch_size": "micro_batch_size",
    "gpus": "torchrun --nproc_per_node",
}


def memory_setup(cfg: PretrainConfig, world_size: int) -> Setup:
    """What the memory of one rank of this run depends on besides the model (``cfg.seq_len`` resolved)."""
    return setup_of(cfg, cfg.seq_len, world_size, MEMORY_SETTINGS)


def check_memory(cfg: PretrainConfig, spec: ModelSpec, world_size: int, where: str) -> None:
    """With ``memory_gb``: refuse (``ConfigError``, naming the setting that fits) a run that will not fit."""
    check_fits(
        olmo_shape(spec),
        memory_setup(cfg, world_size),
        cfg.memory_gb,
        f"{where}: pretrain {spec.name}",
        MEMORY_SETTINGS,
    )


def plan_run(cfg: PretrainConfig, world_size: int = 1, overwrite: bool = False, where: str = "config") -> Plan:
    """Resolve and check the config, data and run directory; raise an OvertrainError naming the
    file and field for anything wrong. Reads files only (safe on every rank)."""
    spec = resolve_spec(cfg, where)
    seq_len = cfg.seq_len or spec.max_sequence_length
    if seq_len > spec.max_sequence_length:
        raise ConfigError(f"{where}: seq_len={seq_len} exceeds model '{spec.name}' context {spec.max_sequence_length}")
    cfg = replace(cfg, seq_len=seq_len)
    check_memory(cfg, spec, world_size, where)  # before any data is read
    if cfg.global_batch_size % (world_size * cfg.micro_batch_size):
        raise ConfigError(
            f"{where}: global_batch_size={cfg.global_batch_size} is not divisible by world_size x micro_batch_size "
            f"= {world_size} x {cfg.micro_batch_size}"
        )
    tps = cfg.global_batch_size * seq_len
    if cfg.budget_tokens < tps:
        raise ConfigError(
            f"{where}: budget_tokens={cfg.budget_tokens:,} is smaller than one step "
            f"(global_batch_size x seq_len = {cfg.global_batch_size} x {seq_len} = {tps:,} tokens)"
        )
    steps = steps_for(cfg.budget_tokens, tps)
    try:
        schedule = Schedule.build(cfg.schedule, steps, tps, cfg.optim.lr)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    marks: dict[int, int] = {}
    for t in cfg.checkpoint.at_tokens:
        s = steps_for(t, tps)  # the same rounding as a budget: where a run of t tokens would end
        if t <= 0 or s > steps:
            raise ConfigError(f"{where}: checkpoint.at_tokens: {t:,} is outside this run's (0, {steps * tps:,}] tokens")
        marks[s] = t
    check_trackers(cfg.log, where)

    data = open_for_model(cfg.data.dir, spec)
    train, val = data.tokens("train"), data.tokens("val")
    n_windows = (len(train) - 1) // seq_len
    if n_windows < 1:
        raise DataError(f"{cfg.data.dir}: train split has {len(train)} tokens, fewer than one window of {seq_len + 1}")
    if len(val) < seq_len + 1:
        raise DataError(
            f"{cfg.data.dir}: val split has {len(val)} tokens, fewer than one evaluation window of {seq_len + 1}"
        )

    resume = _check_run_dir(cfg, overwrite, where)
    return Plan(
        cfg,
        spec,
        seq_len,
        tps,
        steps,
        schedule,
        marks,
        train,
        val,
        n_windows,
        steps * cfg.global_batch_size / n_windows,
        resume,
        world_size,
    )


def _check_run_dir(cfg: PretrainConfig, overwrite: bool, where: str) -> Path | None:
    """The checkpoint to resume from (None = fresh start); errors for finished/mismatched runs."""
    run_dir = Path(expand_path(cfg.run_dir))
    if overwrite or not run_dir.exists():
        return None
    if not run_dir.is_dir():
        raise ConfigError(f"{where}: run_dir={run_dir} exists and is not a directory")
    if (run_dir / SUMMARY_FILE).exists():
        raise ConfigError(
            f"{run_dir / SUMMARY_FILE}: this run already finished; pass overwrite=true to train it again from scratch"
        )
    saved_path = run_dir / CONFIG_FILE
    if saved_path.exists():
        diff = config_differences(read_yaml(saved_path), to_dict(cfg))
        if diff:
            lines = "; ".join(f"{k}: {a!r} (saved) vs {b!r} (now)" for k, (a, b) in diff.items())
            raise ConfigError(
                f"{saved_path}: the run directory holds a different run ({lines}); "
                "use another run_dir, or overwrite=true to discard it"
            )
    return resume_checkpoint(run_dir / "checkpoints")  # the newest intact one
