"""``overtrain pretrain CONFIG [key=value ...]``: pre-train a model for an exact token budget.

    overtrain pretrain configs/pretrain/olmo-30m-8B.yaml run_dir=runs/olmo-30m-8B
    torchrun --standalone --nproc_per_node=8 -m overtrain pretrain olmo-30m-8B run_dir=...

Steps = round(budget_tokens / tokens_per_step) to the nearest integer (ties up), where
tokens_per_step = global_batch_size x seq_len; the realized token count (steps x tokens_per_step)
is what checkpoints and summary.json report as ``tokens``. The LR warms up, then decays to
``schedule.final_lr`` (0) exactly at the last step (``overtrain.core.schedule``). The batch order
depends only on the seed and the step (``overtrain.data.loader``), so rerunning the same command
on a run directory resumes from ``checkpoints/latest`` and reproduces an uninterrupted run.

Run directory: ``config.yaml`` (resolved config), ``metrics.jsonl``, ``checkpoints/step-*/``,
and ``summary.json`` (written last: its presence means the run finished).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..core import dist
from ..core.checkpoint import (
    latest_checkpoint,
    load_model,
    prune_checkpoints,
    remove_stale_temps,
    rng_state,
    save_model_checkpoint,
    set_rng_state,
    step_dir_name,
)
from ..core.config import (
    CheckpointError,
    ConfigError,
    DataError,
    atomic_write_text,
    expand_path,
    from_dict,
    read_yaml,
    resolve_config_path,
    save_config,
    to_dict,
)
from ..core.likelihood import lm_loss, perplexity
from ..core.model import ModelSpec, build_model, count_params, flops_per_token, load_model_spec
from ..core.optim import build_optimizer as core_build_optimizer
from ..core.schedule import Schedule, ScheduleConfig
from ..core.step import train_step, use_fused_adam
from ..data.loader import Prefetcher, WindowLoader
from .tracking import METRICS_FILE, LogConfig, MetricsLogger, check_backends, peak_flops, truncate_after

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


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
    every_steps: int = 1000  # C4 validation perplexity every N steps (0 = only at the end)
    val_tokens: int = 1_048_576  # predicted tokens: a fixed prefix of the validation split
    batch_size: int = 16  # sequences per evaluation forward


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # periodic checkpoints (0 = none), pruned to the newest keep_last
    keep_last: int = 2  # periodic checkpoints kept (the latest is what a resume needs)
    # Token marks for intermediate-checkpoint studies: a checkpoint at the step where a run with
    # that budget would end (same rounding as budget_tokens). Never pruned (nor is the final one).
    at_tokens: list[int] = field(default_factory=list)


@dataclass
class PretrainConfig:
    model: str = "tiny"  # a name in configs/models/ or a YAML path
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelSpec fields, e.g. {d_model: 512}
    parametrization: Literal["mup", "sp"] | None = None  # None = the model config's
    data: DataConfig = field(default_factory=DataConfig)
    run_dir: str = ""  # where config.yaml, metrics.jsonl, checkpoints/ and summary.json go
    budget_tokens: int = 0  # accepts 4B, 512M, 100K
    global_batch_size: int = 256  # sequences per optimizer step, whatever the number of processes
    micro_batch_size: int = 32  # sequences per forward/backward on one process
    seq_len: int | None = None  # None = the model's context length
    seed: int = 0  # model init and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the model
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

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


# Keys that may differ between a run directory's config.yaml and the command resuming it: they
# change where/how fast the run goes or what is logged, not the trajectory of the weights (a new
# micro_batch_size or number of processes only reorders float sums; anything else stays exact).
RESUMABLE_CHANGES = (
    "run_dir",
    "device",
    "compile",
    "micro_batch_size",
    "log",
    "eval.every_steps",
    "eval.batch_size",
    "checkpoint.every_steps",
    "checkpoint.keep_last",
    "checkpoint.at_tokens",
)


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


# ------------------------------------------------------------------------------------------ data


def open_data(cfg: PretrainConfig, spec: ModelSpec):
    from ..data.c4 import open_prepared

    data = open_prepared(cfg.data.dir)
    data.check_vocab(spec)
    return data


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


def plan_run(cfg: PretrainConfig, world_size: int = 1, overwrite: bool = False, where: str = "config") -> Plan:
    """Resolve and check the config, data and run directory; raise an OvertrainError naming the
    file and field for anything wrong. Reads files only (safe on every rank)."""
    spec = resolve_spec(cfg, where)
    seq_len = cfg.seq_len or spec.max_sequence_length
    if seq_len > spec.max_sequence_length:
        raise ConfigError(f"{where}: seq_len={seq_len} exceeds model '{spec.name}' context {spec.max_sequence_length}")
    cfg = replace(cfg, seq_len=seq_len)
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
    check_backends(cfg.log, where)

    data = open_data(cfg, spec)
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
    return latest_checkpoint(run_dir / "checkpoints")


# ------------------------------------------------------------------------------------- optimizer


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The pre-training MuAdamW (``core.optim.build_optimizer``) from the ``optim`` config."""
    return core_build_optimizer(
        model.named_parameters(), cfg.lr, tuple(cfg.betas), cfg.eps, cfg.weight_decay, True, cfg.decay_embeddings
    )


# ------------------------------------------------------------------------------------ the run


class DataRepeatWarning(UserWarning):
    """The budget needs more than one pass over the training tokens."""


def _say(info: dist.DistInfo, *parts) -> None:
    if info.is_main:
        print(*parts, file=sys.stderr, flush=True)


def _clean_run_dir(run_dir: Path) -> None:
    """overwrite=true: remove what a previous run left (only files this trainer writes)."""
    for name in (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "tensorboard"):
        if (run_dir / name).exists():
            trash = run_dir / f".trash-{name}-{os.getpid()}"
            os.replace(run_dir / name, trash)
            shutil.rmtree(trash)


def pretrain(cfg: PretrainConfig, overwrite: bool = False, where: str = "config") -> dict:
    """Run (or resume) one pre-training run; returns the summary dict (on every rank)."""
    info = dist.env_info()
    plan = plan_run(cfg, info.world_size, overwrite, where)  # every rank checks, before any process group
    cfg = plan.cfg
    try:
        device = dist.resolve_device(cfg.device, info)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    dist.init(info, device)
    try:
        return _train(plan, info, device, overwrite)
    finally:
        dist.shutdown()


def _train(plan: Plan, info: dist.DistInfo, device: torch.device, overwrite: bool) -> dict:
    cfg, spec = plan.cfg, plan.spec
    run_dir = Path(expand_path(cfg.run_dir))
    ckpt_root = run_dir / "checkpoints"
    t_start = time.time()

    if info.is_main:
        if overwrite and run_dir.exists():
            _clean_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(ckpt_root)
        save_config(cfg, run_dir / CONFIG_FILE)
    dist.barrier()

    # Model, optimizer and trainer state (fresh or from the latest checkpoint).
    start_step, train_before, wall_before, resumes, resumed_meta = 0, 0.0, 0.0, 0, {}
    if plan.resume_from is not None:
        model, _, resumed_meta = load_model(plan.resume_from, device, expect=spec)
        start_step = int(resumed_meta["step"])
        state = torch.load(plan.resume_from / "state.pt", map_location="cpu", weights_only=True)
        if state["steps_total"] != plan.steps or state["tokens_per_step"] != plan.tokens_per_step:
            raise CheckpointError(
                f"{plan.resume_from / 'state.pt'}: planned for {state['steps_total']} steps of "
                f"{state['tokens_per_step']} tokens, the config now gives {plan.steps} x {plan.tokens_per_step}"
            )
        train_before, wall_before = float(state["train_time_s"]), float(state["wall_time_s"])
        resumes = int(state["resumes"]) + 1
    else:
        model = build_model(spec, device=device, seed=cfg.seed)
    opt = build_optimizer(model, cfg.optim)
    if plan.resume_from is not None:
        opt.load_state_dict(torch.load(plan.resume_from / "optim.pt", map_location=device, weights_only=True))
        rngs = state["rng"]
        set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
    if info.is_main:
        truncate_after(run_dir / METRICS_FILE, start_step)

    if device.type == "cuda":
        use_fused_adam(opt)  # one kernel per step instead of several per parameter list
    train_model = torch.compile(model) if cfg.compile else model
    # Compiling the loss too fuses the 50K-way cross-entropy: no fp32 logits are materialized.
    loss_fn = torch.compile(lm_loss) if cfg.compile else None
    train_model = dist.wrap(train_model, info, device)
    loader = WindowLoader(
        plan.train_tokens,
        plan.seq_len,
        cfg.global_batch_size,
        cfg.micro_batch_size,
        cfg.seed,
        info.rank,
        info.world_size,
        source=cfg.data.dir,
    )
    prefetch = Prefetcher(loader, plan.steps, device)  # next step's batch is read while this one trains

    params = count_params(spec)
    fpt = flops_per_token(spec, plan.seq_len)
    peak = peak_flops(device, cfg.log.peak_flops)
    _say(
        info,
        f"pretrain: {spec.name} ({params['non_embedding_params']:,} non-embedding params, {spec.parametrization}) "
        f"on {info.world_size} x {device}; {plan.steps:,} steps x {plan.tokens_per_step:,} tokens = "
        f"{plan.realized_tokens:,} tokens (budget {cfg.budget_tokens:,}); warmup {plan.schedule.warmup_steps} steps, "
        f"{plan.schedule.decay} decay to {cfg.schedule.final_lr:g}",
    )
    if plan.resume_from is not None:
        _say(info, f"pretrain: resuming from {plan.resume_from} (step {start_step:,})")
        missed = [
            t for s, t in plan.mark_steps.items() if s <= start_step and not (ckpt_root / step_dir_name(s)).is_dir()
        ]
        if missed and info.is_main:
            warnings.warn(
                f"checkpoint.at_tokens {missed} lie before the resumed step {start_step:,}: not saved", stacklevel=2
            )
    if plan.epochs > 1 and info.is_main:
        warnings.warn(
            f"{cfg.data.dir}: the budget needs {plan.epochs:.2f} epochs over the training split "
            f"({plan.n_windows:,} windows of {plan.seq_len + 1} tokens); each epoch is reshuffled",
            DataRepeatWarning,
            stacklevel=2,
        )

    logger = MetricsLogger(run_dir, cfg.log, info.is_main, run_name=run_dir.name, config=to_dict(cfg))

    def evaluate(step: int) -> dict:
        r = perplexity(
            model,
            plan.val_tokens,
            plan.seq_len,
            batch_size=cfg.eval.batch_size,
            max_tokens=cfg.eval.val_tokens,
            device=device,
            precision=cfg.precision,
            vocab_size=spec.vocab_size,
            distributed=True,
        )
        row = {
            "step": step,
            "tokens": step * plan.tokens_per_step,
            "c4_val_loss": r["loss"],
            "c4_val_ppl": r["ppl"],
            "c4_val_tokens": r["tokens"],
        }
        logger.log(row)
        return row

    def checkpoint(step: int, reasons: list[str]) -> None:
        rngs = [None] * info.world_size
        if info.distributed:
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if info.is_main:
            meta = {
                "step": step,
                "tokens": step * plan.tokens_per_step,
                "budget_tokens": cfg.budget_tokens,
                "final": step == plan.steps,
                "lr_decayed": plan.schedule.decayed_after(step),
                "kind": "pretrain",
                "run_dir": str(run_dir),
                "seed": cfg.seed,
                "reasons": reasons,
                "model": spec.name,
                "non_embedding_params": params["non_embedding_params"],
                "lr_factor": plan.schedule(step - 1),
                "steps_total": plan.steps,
            }
            state = {
                "step": step,
                "steps_total": plan.steps,
                "tokens_per_step": plan.tokens_per_step,
                "samples_seen": step * cfg.global_batch_size,
                "rng": rngs,
                "config": to_dict(cfg),
                "train_time_s": train_before + train_time,
                "wall_time_s": wall_before + time.time() - t_start,
                "resumes": resumes,
                "world_size": info.world_size,
            }
            if last_eval is not None and last_eval["step"] == step:
                meta.update({k: last_eval[k] for k in ("c4_val_loss", "c4_val_ppl", "c4_val_tokens")})
            save_model_checkpoint(
                ckpt_root, step, model, spec, meta, extra={"optim.pt": opt.state_dict(), "state.pt": state}
            )
            if "periodic" in reasons:
                prune_checkpoints(ckpt_root, cfg.checkpoint.keep_last)
        dist.barrier()

    # ------------------------------------------------------------------------------- the loop
    from tqdm.auto import tqdm

    bar = tqdm(
        total=plan.steps,
        initial=start_step,
        unit="step",
        dynamic_ncols=True,
        disable=not info.is_main or not sys.stderr.isatty(),
    )
    # Without a terminal (log files, batch jobs), about 100 plain progress lines per run instead.
    print_every = 0 if not bar.disable else max(cfg.log.every_steps, plan.steps // 100)
    last_eval = None
    train_time = 0.0  # seconds spent in training steps this session
    window_t, window_tokens = 0.0, 0
    for step in range(start_step, plan.steps):
        t0 = time.perf_counter()
        batches = prefetch.micro_batches(step)
        factor = plan.schedule(step)
        stats = train_step(train_model, opt, batches, factor, cfg.optim.grad_clip, cfg.precision, loss_fn=loss_fn)
        dt = time.perf_counter() - t0  # stats.loss is a .item(): the step is finished on the device
        train_time += dt
        window_t += dt
        window_tokens += stats.tokens
        done = step + 1
        bar.update(1)
        if not math.isfinite(stats.loss):
            raise RuntimeError(f"pretrain: loss is {stats.loss} at step {done}; stopping (last checkpoint kept)")
        if done % cfg.log.every_steps == 0 or done == plan.steps or done == start_step + 1:
            tps = window_tokens / max(window_t, 1e-9)
            row = {
                "step": done,
                "tokens": done * plan.tokens_per_step,
                "lr": cfg.optim.lr * factor,
                "lr_factor": factor,
                "loss": stats.loss,
                "grad_norm": stats.grad_norm,
                "tokens_per_sec": tps,
            }
            if peak:
                row["mfu"] = fpt * tps / (peak * info.world_size)
            logger.log(row)
            bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{row['lr']:.2e}")
            if print_every and (done % print_every == 0 or done == plan.steps):
                mfu = f" | mfu {row['mfu']:.1%}" if "mfu" in row else ""
                _say(
                    info,
                    f"step {done:,}/{plan.steps:,} | loss {stats.loss:.4f} | lr {row['lr']:.3e} | "
                    f"grad norm {stats.grad_norm:.3f} | {tps:,.0f} tokens/s{mfu}",
                )
            window_t, window_tokens = 0.0, 0
        if done == plan.steps or (cfg.eval.every_steps and done % cfg.eval.every_steps == 0):
            last_eval = evaluate(done)  # before the checkpoint, whose meta records it
            bar.set_postfix(loss=f"{stats.loss:.3f}", val_ppl=f"{last_eval['c4_val_ppl']:.1f}")
            if print_every:
                _say(info, f"step {done:,}/{plan.steps:,} | C4 val ppl {last_eval['c4_val_ppl']:.2f}")
        reasons = []
        if cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0:
            reasons.append("periodic")
        if done in plan.mark_steps:
            reasons.append("token_mark")
        if done == plan.steps:
            reasons.append("final")
        if reasons:
            checkpoint(done, reasons)
    bar.close()
    prefetch.close()

    if last_eval is None:  # resumed after the final checkpoint: its meta holds the final evaluation
        last_eval = {k: resumed_meta[k] for k in ("c4_val_loss", "c4_val_ppl", "c4_val_tokens")}
    final = last_eval
    summary = {
        "model": spec.name,
        "parametrization": spec.parametrization,
        "non_embedding_params": params["non_embedding_params"],
        "total_params": params["total_params"],
        "budget_tokens": cfg.budget_tokens,
        "tokens_seen": plan.realized_tokens,
        "tokens_per_step": plan.tokens_per_step,
        "steps": plan.steps,
        "epochs": plan.epochs,
        "seed": cfg.seed,
        "peak_lr": cfg.optim.lr,
        "final_lr": cfg.optim.lr * plan.schedule(plan.steps - 1),
        "c4_val_loss": final["c4_val_loss"],
        "c4_val_ppl": final["c4_val_ppl"],
        "c4_val_tokens": final["c4_val_tokens"],
        "train_time_s": train_before + train_time,
        "wall_time_s": wall_before + time.time() - t_start,
        "world_size": info.world_size,
        "resumes": resumes,
        "final_checkpoint": str(ckpt_root / step_dir_name(plan.steps)),
    }
    if info.is_main:
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        _say(
            info, f"pretrain: done: {plan.realized_tokens:,} tokens, C4 val ppl {final['c4_val_ppl']:.2f} -> {run_dir}"
        )
    logger.close()
    dist.barrier()
    return summary


# ------------------------------------------------------------------------------------------- CLI


KIND = "pretrain"  # `overtrain pretrain CONFIG [key=value ...]`: CONFIG is configs/pretrain/NAME.yaml or a path
CONFIG = PretrainConfig


@dataclass
class PretrainOptions:
    overwrite: bool = False  # discard a finished (or different) run in run_dir and start over


OPTIONS = PretrainOptions


def run(args) -> int:
    pretrain(args.config, overwrite=args.overwrite, where=str(resolve_config_path(args.config_path, KIND)))
    return 0
