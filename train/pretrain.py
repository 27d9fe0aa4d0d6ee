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

This module is the command: ``pretrain`` has ``overtrain.train.pretrain_plan.plan_run`` derive every number
of the run (steps, schedule, token-mark steps, epochs, the checkpoint to resume) and refuse bad
input before any work starts, prepares the run directory, and hands the ``Plan`` to the training
loop, ``overtrain.train.pretrain_run.PretrainRun`` (on the one loop, ``overtrain.train.trainer``).
Imports go one way: plan <- loop <- pretrain.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..core import dist
from ..core.checkpoint import latest_checkpoint, remove_stale_temps
from ..core.config import resolve_config_path, save_config
from ..core.errors import ConfigError
from ..core.lock import LOCK_FILE, hold
from ..core.paths import expand_path
from .metrics_log import METRICS_FILE
from .pretrain_plan import CONFIG_FILE, SUMMARY_FILE, Plan, PretrainConfig, plan_run
from .pretrain_run import PretrainRun

# ------------------------------------------------------------------------------------ the run


def pretrain(cfg: PretrainConfig, overwrite: bool = False, where: str = "config") -> dict:
    """Run (or resume) one pre-training run; returns the summary dict (on every rank)."""
    info = dist.env_info()
    run_dir = Path(expand_path(cfg.run_dir))
    seen = latest_checkpoint(run_dir / "checkpoints")
    plan = plan_run(cfg, info.world_size, overwrite, where)  # every rank checks, before any process group
    # One run in a run dir at a time: rank 0 holds the lock (a second run fails here, naming the holder).
    with hold(run_dir / LOCK_FILE, "pretrain") if info.is_main else nullcontext():
        if info.is_main and (latest_checkpoint(run_dir / "checkpoints") != seen or (run_dir / SUMMARY_FILE).exists()):
            plan = plan_run(cfg, info.world_size, overwrite, where)  # a previous holder moved on meanwhile
        return _pretrain(plan, info, overwrite, where)


def _pretrain(plan: Plan, info: dist.DistInfo, overwrite: bool, where: str) -> dict:
    try:
        device = dist.resolve_device(plan.cfg.device, info)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    dist.init(info, device)
    try:
        started = time.time()
        if info.is_main:
            prepare_run_dir(Path(expand_path(plan.cfg.run_dir)), plan.cfg, overwrite)
        dist.barrier()
        return PretrainRun(plan, info, device, started).run()
    finally:
        dist.shutdown()


def prepare_run_dir(run_dir: Path, cfg: PretrainConfig, overwrite: bool) -> None:
    """Rank 0, before anything else: clear it for overwrite=true, drop half-written checkpoints, save config.yaml."""
    if overwrite and run_dir.exists():
        _clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir / "checkpoints")
    save_config(cfg, run_dir / CONFIG_FILE)


def _clear_run_dir(run_dir: Path) -> None:
    """overwrite=true: remove what a previous run left (only files this trainer writes)."""
    for name in (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "tensorboard"):
        if (run_dir / name).exists():
            trash = run_dir / f".trash-{name}-{os.getpid()}"
            os.replace(run_dir / name, trash)
            shutil.rmtree(trash)


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class PretrainOptions:
    overwrite: bool = False  # discard a finished (or different) run in run_dir and start over


def run(config: PretrainConfig, config_path: str, overwrite: bool = False) -> int:
    """``overtrain pretrain CONFIG``: ``pretrain`` with the config file (a name in configs/pretrain/ or a path) named in errors."""
    pretrain(config, overwrite=overwrite, where=str(resolve_config_path(config_path, "pretrain")))
    return 0
