"""Running a grid's jobs on this machine: subprocesses in dependency order, logs, done-markers.

Every job is idempotent and resumable on its own (pre-training resumes from its latest checkpoint,
a sweep skips learning rates whose rows exist, perturbation rows are keyed), so running the grid
again after a kill at any moment just runs the same commands again: a job is skipped when its
done-marker exists, and rows are appended atomically by the jobs themselves. Jobs run as
processes (``python -m overtrain ...``, ``torchrun`` for multi-GPU pre-training and instruction
tuning; on CPU a one-process job is the same command forked from a warm process, ``launch.forked``),
so one crash cannot take the runner down, and logs land in ``RESULTS_DIR/logs/JOB.log``.
Preparation, pre-training, extra jobs and the report hold the whole machine; the other jobs run in
parallel, each on its own GPUs (``CUDA_VISIBLE_DEVICES``): one, or an instruction-tuning job's
``nproc`` (``instruct.gpus``; 0 = all of the runner's ``gpus``); one at a time on CPU.

Several runners on one results dir (two ``grid run`` started by hand, or on two machines sharing a
filesystem) share the work: a runner holds a lock per running job (``core.lock``, in
RESULTS_DIR/state/locks/), checks the done-marker again once it holds it, and waits for jobs
another runner holds; so every job runs once. The report (never marked done) runs in each.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_text
from ..core.errors import ConfigError
from ..core.eta import fmt_duration
from ..core.lock import Lock, LockHeld, describe
from ..core.paths import expand_path
from ..core.preempt import EXIT_PREEMPTED
from . import forked
from .plan import Job, overtrain_command
from .spec import GridSpec

TORCHRUN_KINDS = ("pretrain", "instruct")  # jobs that run as torchrun when they have several processes
HF_KINDS = ("instruct", "lm-eval", "alpaca-eval", "multimodal")  # jobs that import transformers


def _nproc(job: Job, gpus: int) -> int:
    """The processes of ``job``: its own ``nproc``, 0 meaning the runner's ``gpus`` (1 for other kinds)."""
    return (job.nproc or gpus) if job.kind in TORCHRUN_KINDS else 1


def _slots(job: Job, gpus: int) -> int:
    """The GPUs a job that does not hold the whole machine takes: one per process (one slot on CPU)."""
    return max(1, _nproc(job, gpus)) if gpus else 1


def _command(job: Job, gpus: int) -> list[str]:
    return overtrain_command(job.argv, _nproc(job, gpus))


def _log_path(root: Path, job: Job) -> Path:
    return root / "logs" / (job.id.replace("/", "__") + ".log")


def is_done(job: Job) -> bool:
    return job.done is not None and job.done.exists()


def run_jobs(
    spec: GridSpec,
    jobs: list[Job],
    gpus: int = 0,
    dry_run: bool = False,
    only: str | None = None,
    fork_jobs: bool = True,
) -> int:
    """Run todo jobs in dependency order. Preparation, pre-training and the report hold the whole
    machine; the others run in parallel on their own GPUs (``_slots``; one at a time on CPU). A job
    needing more GPUs than the runner has is one ConfigError before anything starts. On CPU
    (``gpus=0``) one-process jobs fork from a warm process (``launch.forked``) unless ``fork_jobs``
    is false."""
    root = Path(expand_path(spec.results_dir))
    (root / "logs").mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not is_done(j) and (only is None or j.id.startswith(only))]
    done_ids = {j.id for j in jobs if is_done(j)}
    failed: set[str] = set()
    print(f"grid '{spec.name}': {len(jobs)} jobs, {len(jobs) - len(todo)} already done, {len(todo)} to run", flush=True)
    for j in todo:
        if j.kind not in EXCLUSIVE and _slots(j, gpus) > max(gpus, 1):
            raise ConfigError(f"grid: job '{j.id}' needs {_slots(j, gpus)} GPUs (instruct.gpus), the runner has {gpus}")
    free_gpus = list(range(gpus)) or [None]
    running: dict[str, tuple[Job, subprocess.Popen | forked.ForkedJob, float, Any, Any]] = {}
    pending = list(todo)
    t_start, n_finished = time.time(), 0
    locks: dict[str, Lock] = {}  # the job locks this runner holds (one per running job)
    elsewhere: dict[str, str] = {}  # ready jobs another runner is running: id -> its holder
    rates = Throughput()
    preload = forked.PRELOAD + (forked.PRELOAD_HF if any(j.kind in HF_KINDS for j in todo) else ())

    while pending or running:
        for j in list(pending):
            if any(d in failed for d in j.after):
                pending.remove(j)
                failed.add(j.id)
                print(f"  skip  {j.id} (a dependency failed)", flush=True)
            elif dry_run and all(d in done_ids for d in j.after):
                print("  " + shlex.join(_command(j, gpus)))
                pending.remove(j)
                done_ids.add(j.id)
        if dry_run:
            if not pending or not any(all(d in done_ids for d in j.after) for j in pending):
                break
            continue
        exclusive_running = any(job.kind in EXCLUSIVE for job, *_ in running.values())
        for j in list(pending):
            if exclusive_running or not all(d in done_ids for d in j.after):
                continue
            if j.kind in EXCLUSIVE:
                if running:
                    continue
            elif len(free_gpus) < _slots(j, gpus):
                continue
            lock, why = _claim(root, j)
            if lock is None:  # another runner has it (or finished it meanwhile)
                if why == "done":
                    pending.remove(j)
                    done_ids.add(j.id)
                    elsewhere.pop(j.id, None)
                    print(f"  done  {j.id} (by another runner)", flush=True)
                elif elsewhere.get(j.id) != why:
                    elsewhere[j.id] = why
                    print(f"  wait  {j.id}: running elsewhere ({why})", flush=True)
                continue
            elsewhere.pop(j.id, None)
            held = [] if j.kind in EXCLUSIVE else [free_gpus.pop(0) for _ in range(_slots(j, gpus))]
            env = dict(os.environ)
            if held and held[0] is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, held))
            cmd = _command(j, gpus)
            log = open(_log_path(root, j), "a")
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
            log.flush()
            proc: subprocess.Popen | forked.ForkedJob
            if fork_jobs and gpus == 0 and _nproc(j, gpus) <= 1 and forked.available(env):
                log.write("# (forked from the warm process: launch/forked.py)\n")
                log.flush()
                proc = forked.start(j.argv, _log_path(root, j), env, preload)
            else:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            est = rates.job_seconds(j)
            where = f" (GPU {','.join(map(str, held))})" if held and held[0] is not None else ""
            print(f"  start {j.id}{where}" + (f" | ETA {fmt_duration(est)}" if est is not None else ""), flush=True)
            running[j.id] = (j, proc, time.time(), held, log)
            locks[j.id] = lock
            pending.remove(j)
            if j.kind in EXCLUSIVE:
                exclusive_running = True
        if not running and pending and not elsewhere and not _waits_on_others(pending, done_ids, elsewhere):
            print(f"  {len(pending)} jobs wait on jobs outside only={only}; stopping", flush=True)
            break
        time.sleep(0.2 if running or not elsewhere else 1.0)
        for jid, (job, proc, t0, held, log) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            del running[jid]
            free_gpus.extend(held)
            n_finished += 1
            if rc == 0 and job.mark_done and job.done is not None:
                atomic_write_text(job.done, json.dumps({"job": jid, "finished": time.time()}) + "\n")
            locks.pop(jid).release()  # after the done-marker: another runner then sees it done
            if rc == 0 and (job.done is None or job.done.exists()):
                done_ids.add(jid)
                rates.finished(job, time.time() - t0)
                left = [j for j in pending if j.id not in failed] + [r[0] for r in running.values()]
                grid = rates.grid_seconds(left, time.time() - t_start)
                print(
                    f"  done  {jid} in {fmt_duration(time.time() - t0)}  [{n_finished}/{len(todo)}]"
                    + (f" | grid ETA {fmt_duration(grid)}" if grid is not None else ""),
                    flush=True,
                )
            else:
                failed.add(jid)
                why = f"exit {rc}" if rc else f"exit 0 but {job.done} is missing"
                if rc == EXIT_PREEMPTED:
                    why += ": stopped on a signal after saving its state; run the grid again to resume"
                print(f"  FAIL  {jid} ({why}); log: {_log_path(root, job)}\n{_tail(_log_path(root, job))}", flush=True)
    print(f"grid '{spec.name}': finished in {time.time() - t_start:.0f}s; {len(failed)} failed", flush=True)
    return 1 if failed else 0


EXCLUSIVE = ("prepare", "pretrain", "report", "extra")


def job_lock_path(root: Path, job: Job) -> Path:
    return root / "state" / "locks" / (job.id.replace("/", "__") + ".lock")


def _claim(root: Path, job: Job) -> tuple[Lock | None, str]:
    """This runner's lock on ``job`` (None with why: "done" when another runner finished it
    meanwhile, else who holds it). The done-marker is checked again under the lock, so two
    runners never both start a job."""
    try:
        lock = Lock(job_lock_path(root, job), f"grid job {job.id}").acquire()
    except LockHeld as e:
        return None, describe(e.holder)
    if is_done(job):
        lock.release()
        return None, "done"
    return lock, ""


def _waits_on_others(pending: list[Job], done_ids: set[str], elsewhere: dict[str, str]) -> bool:
    """Whether a pending job waits (directly) on a job another runner is running."""
    return any(d in elsewhere for j in pending for d in j.after)


class Throughput:
    """Measured FLOP/s per job kind (the plan's FLOPs over a finished job's wall time), for ETAs.

    A job's ETA: its FLOPs / its kind's measured rate (None until a job of that kind finished).
    The grid's: the FLOPs left (jobs not yet finished) / the FLOPs finished per second of the
    grid's wall time so far (so parallel sweeps count as they ran); jobs without FLOPs are free.
    """

    def __init__(self):
        self.flops: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def finished(self, job: Job, seconds: float) -> None:
        if job.flops > 0:
            self.flops[job.kind] = self.flops.get(job.kind, 0.0) + job.flops
            self.seconds[job.kind] = self.seconds.get(job.kind, 0.0) + max(seconds, 1e-3)

    def job_seconds(self, job: Job) -> float | None:
        if job.flops <= 0 or not self.flops.get(job.kind):
            return None
        return job.flops / (self.flops[job.kind] / self.seconds[job.kind])

    def grid_seconds(self, left: list[Job], wall: float) -> float | None:
        done = sum(self.flops.values())
        if done <= 0:
            return None
        return sum(j.flops for j in left) / (done / max(wall, 1e-3))


def _tail(path: Path, n: int = 12) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("      | " + line for line in lines)
