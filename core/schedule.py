"""Learning-rate schedule of a pre-training run: linear warmup, then cosine or linear decay.

The schedule is a *factor* on each param group's initial LR (``train_step`` sets
``lr = initial_lr x factor``), so muP's per-group scaling composes with it. Steps are 0-based
optimizer steps ``0 .. total_steps-1``; the factor at the last one is exactly
``final_lr / peak_lr`` (0 by default): every run is fully decayed at the end of its own budget.

    warmup:  factor(s) = (s + 1) / warmup_steps                      for s < warmup_steps
    decay:   p = (s - warmup_steps) / (total_steps - 1 - warmup_steps)   in [0, 1]
             cosine: final + (1 - final) * (1 + cos(pi p)) / 2
             linear: final + (1 - final) * (1 - p)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class ScheduleConfig:
    # Warmup length, either in tokens or as a fraction of the run (set at most one). The paper's
    # warmup is unknown; the pretrain configs use a fixed number of tokens for every budget so
    # runs of different budgets differ only in their decay.
    warmup_tokens: int = 0  # warmup length in tokens (pre-training)
    warmup_fraction: float = 0.0  # warmup length as a fraction of the steps (fine-tuning)
    decay: Literal["cosine", "linear"] = "cosine"  # shape of the decay to final_lr after warmup
    final_lr: float = 0.0  # absolute LR reached at the last step (the paper: 0)

    def validate(self) -> None:
        if self.warmup_tokens < 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("schedule.warmup_tokens must be >= 0 and schedule.warmup_fraction in [0, 1)")
        if self.warmup_tokens and self.warmup_fraction:
            raise ValueError("set schedule.warmup_tokens or schedule.warmup_fraction, not both")
        if self.final_lr < 0:
            raise ValueError("schedule.final_lr must be >= 0")


def warmup_steps(cfg: ScheduleConfig, total_steps: int, tokens_per_step: int) -> int:
    """Warmup in optimizer steps (rounded to nearest), leaving at least the last step to decay."""
    if cfg.warmup_fraction:
        w = int(math.floor(cfg.warmup_fraction * total_steps + 0.5))
    else:
        w = int(math.floor(cfg.warmup_tokens / tokens_per_step + 0.5))
    return max(0, min(w, total_steps - 1))


def lr_factor(step: int, total_steps: int, warmup: int, decay: str = "cosine", final_ratio: float = 0.0) -> float:
    """Multiplier on the peak LR for 0-based optimizer ``step`` of ``total_steps``."""
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    if step < warmup:
        return (step + 1) / warmup
    span = total_steps - 1 - warmup
    if span <= 0 or step == total_steps - 1:
        return final_ratio  # exact at the last step, whatever floating point does above
    p = (step - warmup) / span
    if decay == "cosine":
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    if decay == "linear":
        return final_ratio + (1.0 - final_ratio) * (1.0 - p)
    raise ValueError(f"unknown decay {decay!r}")


@dataclass(frozen=True)
class Schedule:
    """A ScheduleConfig bound to one run's length and peak LR."""

    total_steps: int
    warmup_steps: int
    decay: str
    final_ratio: float  # final_lr / peak_lr

    @classmethod
    def build(cls, cfg: ScheduleConfig, total_steps: int, tokens_per_step: int, peak_lr: float) -> Schedule:
        if cfg.final_lr > peak_lr:
            raise ValueError(f"schedule.final_lr={cfg.final_lr} exceeds the peak LR optim.lr={peak_lr}")
        ratio = cfg.final_lr / peak_lr if peak_lr > 0 else 0.0
        return cls(total_steps, warmup_steps(cfg, total_steps, tokens_per_step), cfg.decay, ratio)

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.decay, self.final_ratio)

    def decayed_after(self, completed_steps: int) -> bool:
        """True when the last step taken (``completed_steps - 1``) used the final LR."""
        return completed_steps >= 1 and self(completed_steps - 1) == self.final_ratio
