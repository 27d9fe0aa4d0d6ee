"""The fine-tuning config (``FinetuneConfig``, with the sweep's ``SweepConfig``) and a run's resume identity.

``overtrain finetune`` and ``overtrain sweep`` read a ``FinetuneConfig`` (configs/finetune/*.yaml,
``load_finetune_config``). A results row is identified by its resume identity, ``RESUME_KEYS``:
the row keys of the fields marked ``in_row`` (each identifies its field: the checkpoint by its
content hash, C4 by the tokens evaluated, ...) and ``config_hash``, the digest of every other field
that changes a result (fields marked ``no_result`` change none). A sweep skips an LR whose row with
the same identity exists, so a field added later is in the hash, and a renamed one is hashed under
its former name and value (``optimizer`` as ``mup_optimizer``) to keep recorded sweeps' identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..core.config import config_digest, load_config
from ..core.errors import ConfigError
from ..core.identity import identity_dict, identity_row_keys, in_row, no_result
from ..core.schedule import ScheduleConfig
from ..core.tracker import TrackConfig


@dataclass
class SweepConfig:
    min_lr: float = 4e-6  # the paper's smallest fine-tuning LR
    max_lr: float | None = None  # None: the task YAML's max_lr
    n_lrs: int = 8  # geometric grid points (the paper's grid is unknown)
    # When the tuned LR is an end of the grid, the best LR may lie beyond it: add one LR past that end
    # (the grid's own ratio there), fine-tune it, reselect; repeat while it is still an end.
    extend: bool = True  # false: the grid is what was asked (the report then flags a tuned LR at an end)
    max_extensions: int = 2  # at most this many LRs added per sweep (both ends together)


# Every field is part of a row's resume identity (``config_hash``, ``RESUME_KEYS``) unless marked:
# ``in_row(KEY, ...)``: it changes the result and the row key KEY identifies it (the checkpoint by its
# content, C4 by the tokens evaluated); ``no_result(...)``: it changes no result. A new field is in the hash.
@dataclass
class FinetuneConfig:
    checkpoint: str = in_row("checkpoint_sha256", "")  # step dir, checkpoints/ dir, run dir, or RUN@tokens=N
    task: str = in_row("task", "")  # a name in configs/tasks/ or a YAML path
    template: str | None = in_row("template", None)  # prompt template (None: the task's default)
    task_overrides: list[str] = field(default_factory=list)  # key=value for the task YAML
    model: str | None = None  # if set, the checkpoint must have this model config's architecture
    run_dir: str = no_result("runs/finetune")  # config.yaml, the training log, results.jsonl (and weights)
    c4: str | None = in_row("c4_tokens_sha256", None)  # prepared C4 dir (val.npy) for C4 perplexity; None: skip C4
    seed: int = in_row("seed", 0)  # batch order and torch's RNG (the weights come from the checkpoint)
    device: str = no_result("auto")  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA
    # optimization
    lr: float = in_row("lr", 1e-4)  # peak LR at the muP base width (MuAdamW scales hidden matrices)
    epochs: float = 3.0  # passes over the training split (fractions allowed)
    max_steps: int = 0  # > 0: exactly this many optimizer steps, overriding epochs
    batch_size: int = 8  # examples per optimizer step
    micro_batch_size: int = 8  # examples per forward (gradient accumulation)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.03, decay="linear"))
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decays
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.0  # decoupled; not on the input embedding
    grad_clip: float = 1.0  # global gradient-norm clip (0 = none)
    # MARKED CHOICE (the paper does not say which optimizer fine-tuning used): mup_adamw = muP's
    # MuAdamW, as in pre-training (hidden matrices get lr / width_mult, so `lr` is the LR at the
    # base width); adamw = plain torch AdamW, one LR for every parameter. Rows record it and the
    # effective peak LR per parameter group (`optimizer`, `lr_groups`).
    optimizer: Literal["mup_adamw", "adamw"] = (
        "mup_adamw"  # marked choice (paper silent): MuAdamW as pre-training, or plain AdamW
    )
    mup_optimizer: bool | None = no_result(None)  # the former spelling of `optimizer`: true = mup_adamw, false = adamw
    l2_to_pretrained: float = 0.0  # lambda of lambda * ||theta - theta_0||^2, added to each step's loss
    # data
    max_examples: dict[str, int] = field(default_factory=dict)  # per split cap (seeded subset)
    cap_seed: int = 0  # seed of the max_examples subsets
    # evaluation
    eval_batch_size: int = 32  # examples per evaluation forward
    c4_max_tokens: int = 1_048_576  # predicted C4 validation tokens (a fixed prefix)
    eval_before: bool = True  # evaluate the checkpoint before fine-tuning too (the *_before metrics)
    save_weights: bool = no_result(False)  # save the fine-tuned weights in run_dir/checkpoints/
    log_every: int = no_result(10)  # a training-log line every N steps
    log: TrackConfig = no_result(factory=TrackConfig)  # wandb / TensorBoard per run (finetune.run_tracker)
    # sweep (overtrain sweep): the grid (each row has its lr)
    lrs: list[float] = no_result(factory=list)  # explicit grid; empty: geometric, see `sweep`
    stacked: bool = no_result(False)  # train all of a sweep's LRs at once (finetune.stacked): same rows, one pass
    sweep: SweepConfig = no_result(factory=SweepConfig)
    tags: dict = no_result(factory=dict)  # copied into every results row (grid axes)

    @property
    def mup(self) -> bool:
        """muP's per-group LR scaling (``optimizer: mup_adamw``)."""
        return self.optimizer == "mup_adamw"

    def __post_init__(self) -> None:
        if self.mup_optimizer is not None:  # configs (and saved config.yaml files) from before `optimizer`
            if self.mup_optimizer and self.optimizer == "adamw":
                raise ConfigError("optimizer=adamw contradicts mup_optimizer=true (its former spelling): give one")
            self.optimizer, self.mup_optimizer = ("mup_adamw" if self.mup_optimizer else "adamw"), None

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.batch_size <= 0 or self.micro_batch_size <= 0:
            raise ValueError("batch_size and micro_batch_size must be positive")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if self.schedule.warmup_tokens:
            raise ValueError("schedule.warmup_tokens is for pre-training; fine-tuning uses schedule.warmup_fraction")
        if self.l2_to_pretrained < 0 or self.weight_decay < 0:
            raise ValueError("l2_to_pretrained and weight_decay must be >= 0")
        if self.sweep.max_extensions < 0:
            raise ValueError(f"sweep.max_extensions={self.sweep.max_extensions} must be >= 0")
        bad = set(self.max_examples) - {"train", "validation", "test"}
        if bad:
            raise ValueError(f"max_examples: unknown split(s) {sorted(bad)} (train, validation, test)")


def load_finetune_config(path, overrides=()) -> FinetuneConfig:
    return load_config(FinetuneConfig, path, overrides, kind="finetune")


def config_hash(cfg: FinetuneConfig) -> str:
    """The hashed part of a run's resume identity: every config field that changes a result and has
    no row key of its own (``core.identity.identity_dict``; values unchanged since the field list was
    hand-kept). ``optimizer`` is hashed under its former name and value (``mup_optimizer``: a bool),
    so sweeps recorded before it keep their identity."""
    d = identity_dict(cfg)
    d["mup_optimizer"] = d.pop("optimizer") == "mup_adamw"
    return config_digest(d)


# A row's resume identity: the row keys of the in_row fields, and config_hash for the rest.
RESUME_KEYS = (*identity_row_keys(FinetuneConfig), "config_hash")
