"""Training metrics: ``metrics.jsonl`` in the run directory, plus optional wandb / TensorBoard,
and the progress shown on stderr.

Rows are appended with ``overtrain.core.jsonl.append_record`` (one write + fsync per line).
On resume, rows past the checkpoint's step (logged by the interrupted process after its last
checkpoint) are dropped, so the file reads as one uninterrupted run. Only rank 0 logs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core import dist
from ..core.atomic import atomic_write_text
from ..core.eta import Eta
from ..core.jsonl import append_record, iter_records
from ..core.tracker import TrackConfig, Tracker

METRICS_FILE = "metrics.jsonl"

# Dense bf16 peak FLOP/s per GPU, for MFU. Matched as substrings of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


@dataclass
class LogConfig(TrackConfig):
    """Pre-training's ``log``: the trackers every stage has (``core.tracker.TrackConfig``: wandb,
    wandb_project, tensorboard), plus the metrics rows' interval and the peak FLOP/s for MFU."""

    every_steps: int = 10  # a metrics.jsonl row (and console line) every N steps
    peak_flops: float = 0.0  # per device, for MFU; 0 = look the GPU up in PEAK_BF16_FLOPS

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ValueError("log.every_steps must be >= 1")


def peak_flops(device, override: float = 0.0) -> float | None:
    """Peak bf16 FLOP/s of one CUDA device (None on CPU or an unknown GPU)."""
    if override:
        return override
    if getattr(device, "type", str(device)) != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def truncate_after(path: str | os.PathLike, step: int) -> None:
    """Keep only rows with ``step <= step`` (atomically): a resumed run continues a clean log."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [row for _, row in iter_records(path) if row.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


class MetricsLogger:
    """metrics.jsonl, plus the run's tracker (``core.tracker``: wandb/TensorBoard when asked)."""

    def __init__(
        self, run_dir: str | os.PathLike, cfg: LogConfig, enabled: bool, run_name: str = "", config: dict | None = None
    ):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.tracker = Tracker(run_dir, cfg, run_name, job_type="pretrain", config=config, enabled=enabled)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        append_record(self.path, row)
        self.tracker.log(row, row.get("step", 0))

    def close(self) -> None:
        self.tracker.close()


def say(info: dist.DistInfo, *parts) -> None:
    if info.is_main:
        print(*parts, file=sys.stderr, flush=True)


class Progress:
    """Rank 0's stderr: a tqdm bar on a terminal; without one (log files, batch jobs), about 100
    plain progress lines per run instead, each with elapsed time, ETA (``core.eta``) and tokens/s."""

    def __init__(self, info: dist.DistInfo, steps: int, start_step: int, log_every: int):
        self.info, self.steps = info, steps
        self.bar = tqdm(
            total=steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not info.is_main or not sys.stderr.isatty(),
        )
        self.print_every = 0 if not self.bar.disable else max(log_every, steps // 100)
        self.loss = math.nan  # the latest step's, shown beside evaluations
        self.eta = Eta(steps, start_step)  # this session's rate (a resume's skipped steps do not count)

    def stepped(self, loss: float) -> None:
        self.loss = loss
        self.bar.update(1)

    def train_row(self, row: dict) -> None:
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
        step = row["step"]
        if self.print_every and (step % self.print_every == 0 or step == self.steps):
            mfu = f" | mfu {row['mfu']:.1%}" if "mfu" in row else ""
            say(
                self.info,
                f"step {step:,}/{self.steps:,} | loss {row['loss']:.4f} | lr {row['lr']:.3e} | "
                f"grad norm {row['grad_norm']:.3f} | {row['tokens_per_sec']:,.0f} tokens/s{mfu} | {self.eta.text(step)}",
            )

    def eval_row(self, row: dict) -> None:
        self.bar.set_postfix(loss=f"{self.loss:.3f}", val_ppl=f"{row['c4_val_ppl']:.1f}")
        if self.print_every:
            say(self.info, f"step {row['step']:,}/{self.steps:,} | C4 val ppl {row['c4_val_ppl']:.2f}")

    def close(self) -> None:
        self.bar.close()
