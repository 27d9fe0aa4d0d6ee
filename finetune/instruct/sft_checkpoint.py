"""SFT's checkpoints: an interrupted ``overtrain sft`` resumes where it stopped, on any number of ranks.

    OUT.checkpoints/                  beside OUT (``checkpoint_root``); removed once OUT is written
        step-00000040/                ``core.checkpoint``'s layout (no model.yaml: a transformers model)
            model.pt                  the whole model's state_dict (gathered on rank 0 under fsdp)
            optim.pt                  the optimizer's state_dict (ddp, one process); under fsdp instead
            optim/                    its shards in torch's distributed checkpoint format, keyed by
                                      parameter name (every rank writes its own; loads on any number of ranks)
            state.pt                  step, steps, records_sha256, every rank's RNG state, the loss log so far
            meta.json                 {"kind": "sft", "step", "steps_total", "reasons", "sft": the recorded settings}
            SHA256SUMS
        latest

When (``SFTCheckpoints``, a hook of the one loop, after SFT's log): every ``checkpoint_every`` steps,
once ``checkpoint_minutes`` have passed since the last save (or the start: a run shorter than that
writes none), and on SIGTERM / SIGUSR1 (``core.preempt``, as pre-training: the step finishes, a
checkpoint is saved, ``Preempted`` exits 75 and a requeued job resumes). The ranks agree on both
(one all-reduce per step: the stop flag and rank 0's clock), so all save at the same step. Each
checkpoint is written under a temporary name and renamed whole (``core.checkpoint.write_checkpoint``),
then the older ones are deleted: one whole checkpoint at any time, never a half-written one.

Resume: a rerun of the same command (``prepare``) takes the newest intact checkpoint
(``core.checkpoint.resume_checkpoint``, damaged ones passed over) after checking, before any work,
that it was saved with the same settings (a ``ConfigError`` naming each one that differs; the
``no_result`` settings, e.g. ``device``, ``parallel``, ``fsdp``, ``gradient_checkpointing``,
``checkpoint_*``, and the number of processes may change), then, once the records are encoded, that
they are the same records (``records_sha256``) in the same number of steps. What the rest of the run
depends on: the weights, the optimizer state (``core.checkpoint.load_optimizer_state``: saved sharded
or whole, into the model as laid out now), the step, and the RNG states (torch's: dropout, if a
model has any). The batches and the LR are functions of the step (the epochs' record orders are
drawn from ``seed`` at the start), so the step is the data position. SFT's loss log (per-step
losses, per-epoch sums, token counts) is saved too, so the row equals an uninterrupted run's.

Exactness: on one process a resumed run repeats the uninterrupted one bit for bit (weights and
Adam moments saved exactly; the same kernels on the same batches). On another number of ranks the
steps after the resume add gradients in another order, as DDP and FSDP do (tests/test_sft_ddp.py:
~1e-7 relative per gradient entry).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...core import dist
from ...core.checkpoint import (
    load_optimizer_state,
    prune_checkpoints,
    read_meta,
    remove_stale_temps,
    resume_checkpoint,
    save_training_checkpoint,
    set_rng_state,
    step_dir_name,
)
from ...core.errors import CheckpointError, ConfigError
from ...core.preempt import EXIT_PREEMPTED, Preempted
from ...data.chat import ChatEncoding
from ...train.pretrain_run import gather_rng_states
from ...train.trainer import Hook, StepEvent

CHECKPOINT_SUFFIX = ".checkpoints"


def checkpoint_root(out: Path) -> Path:
    """Where the checkpoints of the run writing ``out`` go: ``OUT.checkpoints`` beside it (not inside:
    ``out`` appears only whole, by rename)."""
    return out.with_name(out.name + CHECKPOINT_SUFFIX)


def records_sha256(enc: ChatEncoding) -> str:
    """sha256 of the encoded records (each one's length, ids and labels, in order): what the batches are drawn from."""
    h = hashlib.sha256()
    for ids, labels in zip(enc.ids, enc.labels, strict=True):
        h.update(np.int64(len(ids)).tobytes())
        h.update(np.asarray(ids, dtype="<i8").tobytes())
        h.update(np.asarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass
class Resumed:
    """What a run carries over from the checkpoint it resumes (the defaults: a fresh start)."""

    step: int = 0  # optimizer steps already done
    log: dict | None = None  # SFT's loss log (``SFTLog.state``)
    wall_s: float = 0.0  # training time of the earlier sessions
    resumes: int = 0  # sessions that resumed this run, this one included
    rng: list[dict] = field(default_factory=list)  # every rank's RNG state when saved


class SFTCheckpoints(Hook):
    """SFT's checkpoints (module doc): ``prepare`` finds the one to resume from, ``load_weights`` /
    ``load_optimizer`` read it, ``attach`` gives the hook the run's state, ``after_step`` saves."""

    def __init__(
        self,
        out: Path,
        recorded: dict,
        info: dist.DistInfo,
        every: int = 0,
        minutes: float = 0.0,
        log=None,
    ):
        self.root, self.recorded, self.info = checkpoint_root(out), recorded, info
        self.device: torch.device | None = None  # from ``prepare``
        self.every, self.seconds, self.log = every, minutes * 60, log or (lambda _msg: None)
        self.path: Path | None = None  # the checkpoint resumed from
        self.resumed = Resumed()
        self.stop = None  # core.preempt's StopFlag, from ``attach``

    # ------------------------------------------------------------------------------------ resume

    def prepare(self, device: torch.device, overwrite: bool) -> None:
        """Every rank, in the process group on ``device``, before any work: rank 0 removes the checkpoints
        (``overwrite``) or what a killed save left half-written, and picks the newest intact one;
        every rank checks its settings (ConfigError naming those that differ)."""
        self.device, found = device, None
        if self.info.is_main:
            if overwrite:
                shutil.rmtree(self.root, ignore_errors=True)
            remove_stale_temps(self.root)
            found = resume_checkpoint(self.root)
        if self.info.distributed:
            box = [None if found is None else str(found)]
            torch.distributed.broadcast_object_list(box, src=0)
            found = None if box[0] is None else Path(box[0])
        if found is None:
            return
        saved = read_meta(found).get("sft") or {}
        diff = sorted(k for k in set(saved) | set(self.recorded) if saved.get(k) != self.recorded.get(k))
        if diff:
            changes = ", ".join(f"{k}: {saved.get(k)!r} -> {self.recorded.get(k)!r}" for k in diff)
            raise ConfigError(
                f"{found}: saved with other settings ({changes}); rerun with the same settings to resume, "
                "or overwrite=true to start over"
            )
        self.path = found

    def load_weights(self, model: torch.nn.Module, enc: ChatEncoding, total: int) -> Resumed:
        """The checkpoint's weights into ``model`` (unsharded: before ``dist.prepare``) and its state,
        after checking it is of these records in ``total`` steps. A fresh start: ``Resumed()``."""
        self.records_sha = sha = records_sha256(enc)
        if self.path is None:
            return self.resumed
        state = torch.load(self.path / "state.pt", map_location="cpu", weights_only=True)
        if state["steps_total"] != total or state["records_sha256"] != sha:
            raise CheckpointError(
                f"{self.path / 'state.pt'}: saved for {state['steps_total']} steps over records "
                f"{state['records_sha256'][:12]}, this run has {total} steps over records {sha[:12]} "
                "(the data changed under the same settings); overwrite=true starts over"
            )
        # mmap: the ranks share one copy in the page cache instead of reading the whole model each
        weights = torch.load(self.path / "model.pt", map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(weights)
        self.resumed = Resumed(
            int(state["step"]), state["log"], float(state["wall_s"]), int(state["resumes"]) + 1, state["rng"]
        )
        self.log(f"sft: resuming from {self.path} (step {self.resumed.step} of {total})")
        return self.resumed

    def load_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer state into ``optimizer`` of ``model`` as laid out now (sharded or not; not a DDP
        wrapper) and this rank's RNG state (on another number of ranks, every rank continues rank 0's)."""
        if self.path is None:
            return
        load_optimizer_state(self.path, model, optimizer, self.device)
        rngs = self.resumed.rng
        set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])

    # -------------------------------------------------------------------------------------- save

    def attach(self, model, optimizer, record, total: int, stop) -> None:
        """What a save reads: the (maybe sharded) model and its optimizer, SFT's log (``state()``),
        the steps and ``core.preempt``'s stop flag."""
        self.model, self.optimizer, self.record, self.total, self.stop = model, optimizer, record, total, stop
        self.started = self.last_save = time.monotonic()

    def after_step(self, ev: StepEvent) -> None:
        done = ev.step + 1
        if done == self.total:
            return  # the tuned model is saved next
        periodic = self.every > 0 and done % self.every == 0
        timed = self.seconds > 0 and time.monotonic() - self.last_save >= self.seconds
        # any rank's stop; rank 0's clock (one all-reduce: every rank saves and stops at the same step)
        stop, timed = dist.any_rank(self.info, self.device, self.stop, timed and self.info.is_main)
        if periodic or timed or stop:
            reasons = ["periodic"] if periodic or timed else []
            self.save(done, reasons + ["preempt"] * stop)
        if stop:
            path = self.root / step_dir_name(done)
            why = self.stop.name or "a stop on another rank"
            self.log(
                f"sft: stopped on {why} after step {done} of {self.total}; saved {path}; "
                f"exit {EXIT_PREEMPTED}: rerun the same command to resume"
            )
            raise Preempted(f"sft: preempted at step {done} ({path}); rerun the same command to resume")

    def save(self, done: int, reasons: list[str]) -> None:
        """Checkpoint step ``done`` (a collective), then delete the older ones (rank 0)."""
        rngs = gather_rng_states(self.info)
        files, meta = {}, {}
        if self.info.is_main:
            wall = self.resumed.wall_s + time.monotonic() - self.started
            files["state.pt"] = {
                "step": done,
                "steps_total": self.total,
                "records_sha256": self.records_sha,
                "rng": rngs,
                "log": self.record.state(),
                "wall_s": wall,
                "resumes": self.resumed.resumes,
                "world_size": self.info.world_size,
            }
            meta = {"kind": "sft", "step": done, "steps_total": self.total, "reasons": reasons, "sft": self.recorded}
        save_training_checkpoint(self.root, done, self.model, self.optimizer, self.info, files, meta, None)
        if self.info.is_main:
            prune_checkpoints(self.root, keep_last=1)  # every SFT checkpoint is periodic or preempt
        self.last_save = time.monotonic()

    def remove(self) -> None:
        """Delete every checkpoint (rank 0, once the tuned model is written: it is what they led to)."""
        if self.info.is_main and self.root.exists():
            trash = self.root.with_name(f".{self.root.name}.trash-{time.time_ns()}")
            self.root.rename(trash)  # never a half-deleted checkpoint directory under the name a rerun reads
            shutil.rmtree(trash, ignore_errors=True)
