"""Checks before a grid goes to Slurm, so that bad input stops ``grid slurm`` / ``grid submit``
before any file is written or any job is submitted; and the fit of each pre-training run's batch
to the processes of ``nodes`` x ``gpus_per_node``.

Cluster (``grid submit`` only): ``sbatch`` on PATH; the partition exists (``scontrol show
partition``; "" = the cluster's default partition); ``time`` <= the partition's MaxTime; the
account is one of the user's associations (``sacctmgr``; without an accounting database accounts
cannot be checked, which is said, and Slurm takes any name).

Time (``grid slurm`` too): a job's estimated wall time = its planned FLOPs / (devices x the grid's
``hardware`` peak x MFU) (``launch.plan``), with devices = nodes x processes per node for
pre-training, ``instruct.gpus`` for SFT (``job_layout``: past ``gpus_per_node`` on whole nodes) and 1
otherwise. It must fit ``time - signal_s`` (after the signal the job stops and
requeues). A longer pre-training run or sweep can still finish as a chain of requeued segments
(each stops before the limit, saves, and resumes): ``requeue_long=true`` accepts that; other jobs
cannot stop cleanly and must fit.

Batch across nodes: pre-training needs global_batch_size = world x micro_batch_size x accumulation
(world = nodes x processes per node). When world divides the global batch but the micro-batch does
not divide the per-process share, the micro-batch becomes the largest divisor of that share not
above it (gradient accumulation keeps the global batch; ``micro_batch_size`` is one of the settings
a resume may change, so the trajectory is the same up to float summation order). When world does not
divide the global batch, the error names the node counts that do.
"""

from __future__ import annotations

import getpass
import math
import re
import shutil
import subprocess
from dataclasses import replace

from ..core.errors import ConfigError
from ..core.keyvalue import format_setting
from .plan import Job, gpu_hours
from .spec import GridSpec

RESUMABLE_KINDS = ("pretrain", "sweep")  # stop at a signal, save, and resume when requeued


def parse_slurm_time(text: str, where: str = "time") -> int | None:
    """Seconds of a Slurm time ("MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]"); None for UNLIMITED/INFINITE."""
    t = str(text).strip()
    if t.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        raise ConfigError(f"{where}={text}: not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # MM[:SS]


def slurm_time(seconds: float) -> str:
    """HH:MM:SS at or above ``seconds``: whole hours above one hour, whole minutes below."""
    unit = 3600 if seconds > 3600 else 60
    s = -(-int(seconds) // unit) * unit
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:00"


def fmt_hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


# ------------------------------------------------------------------------------------ cluster


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"{' '.join(cmd)}: {e}") from None


def partitions() -> dict[str, dict[str, str]]:
    """``scontrol show partition``: name -> its fields (MaxTime, Default, State, ...)."""
    r = _run(["scontrol", "show", "partition", "--oneliner"])
    if r.returncode != 0:
        raise ConfigError(f"scontrol show partition: {(r.stderr or r.stdout).strip()}")
    out = {}
    for line in r.stdout.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "PartitionName" in fields:
            out[fields["PartitionName"]] = fields
    return out


def check_partition(partition: str, time: str) -> None:
    """The partition exists (or there is a default one) and allows ``time``."""
    time_s = parse_slurm_time(time)
    parts = partitions()
    if partition:
        if partition not in parts:
            raise ConfigError(f"partition={partition}: no such Slurm partition (have: {', '.join(sorted(parts))})")
        name = partition
    else:
        default = [n for n, f in parts.items() if f.get("Default") == "YES"]
        if not default:
            raise ConfigError(
                f"partition is not set and the cluster has no default one: set partition= ({', '.join(sorted(parts))})"
            )
        name = default[0]
    max_s = parse_slurm_time(parts[name].get("MaxTime", "UNLIMITED"), f"partition {name} MaxTime")
    if max_s is not None and (time_s is None or time_s > max_s):
        most = parts[name]["MaxTime"]
        raise ConfigError(
            f"time={time} exceeds the MaxTime {most} of partition {name}: set time= at most {most} "
            "(longer pre-training runs and sweeps can requeue themselves: requeue_long=true), or another partition="
        )


def check_account(account: str) -> str | None:
    """An error for an account the user has no association with; None when it is fine. Returns a
    warning line (not an error) when there is no accounting database to ask."""
    if not account:
        return None
    if shutil.which("sacctmgr") is None:
        return f"account={account} cannot be checked (no sacctmgr here); Slurm checks it at submission"
    user = getpass.getuser()
    r = _run(["sacctmgr", "--noheader", "--parsable2", "show", "assoc", "where", f"user={user}", "format=account"])
    if r.returncode != 0:
        why = ((r.stderr or r.stdout).strip().splitlines() or ["sacctmgr failed"])[0]
        return f"account={account} cannot be checked (no Slurm accounting database: {why}); submitting with it"
    have = sorted({a.strip() for a in r.stdout.splitlines() if a.strip()})
    if account not in have:
        raise ConfigError(
            f"account={account}: user {user} has no such Slurm account (have: {', '.join(have) or 'none'})"
        )
    return None


def check_cluster(o) -> list[str]:
    """Before anything is submitted (``o``: the SlurmOptions): sbatch on PATH, the partition, time vs
    its MaxTime, the account. Returns warnings."""
    parse_slurm_time(o.time)  # a bad time is an error even where there is no Slurm
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch is not on PATH: run `grid submit` on a Slurm login node (or `grid run` here)")
    check_partition(o.partition, o.time)
    warning = check_account(o.account)
    return [warning] if warning else []


# --------------------------------------------------------------------------------- the grid


def check_options(o) -> None:
    """The SlurmOptions' own values."""
    for key, least in (("nodes", 1), ("gpus_per_node", 0), ("cpus_per_task", 0), ("signal_s", 0), ("prepare_tasks", 0)):
        if getattr(o, key) < least:
            raise ConfigError(f"{key}={getattr(o, key)} must be >= {least}")
    parse_slurm_time(o.time)


def processes_per_node(job: Job, gpus_per_node: int) -> int:
    return job.nproc or gpus_per_node or 1


def job_layout(job: Job, nodes: int, gpus_per_node: int) -> tuple[int, int]:
    """(nodes, processes per node) of a job on Slurm. Pre-training: ``nodes`` x its ``pretrain.gpus``
    (0: ``gpus_per_node``). SFT: ``instruct.gpus`` in all (0: ``gpus_per_node``), on one node while they
    fit one, else on ceil(gpus / gpus_per_node) whole nodes, which they must fill (a ConfigError naming
    both settings otherwise). Every other job: one process."""
    if job.kind == "pretrain":
        return nodes, processes_per_node(job, gpus_per_node)
    if job.kind != "instruct":
        return 1, 1
    total = processes_per_node(job, gpus_per_node)
    if not gpus_per_node or total <= gpus_per_node:
        return 1, total
    if total % gpus_per_node:
        fits = [n * gpus_per_node for n in (total // gpus_per_node, total // gpus_per_node + 1)]
        raise ConfigError(
            f"{job.id}: instruct.gpus={total} spans {math.ceil(total / gpus_per_node)} nodes of gpus_per_node="
            f"{gpus_per_node} without filling them: use instruct.gpus= one of {', '.join(map(str, fits))} "
            f"(or at most {gpus_per_node}, one node)"
        )
    return total // gpus_per_node, gpus_per_node


def job_seconds(spec: GridSpec, job: Job, nodes: int, gpus_per_node: int) -> float:
    """Estimated wall time of a job at the grid's hardware and MFU (0 for jobs without planned FLOPs):
    its GPU-hours over the GPUs it runs on, nodes x processes per node (``job_layout``)."""
    n, per_node = job_layout(job, nodes, gpus_per_node)
    return gpu_hours(job.flops, spec.hardware) * 3600 / (n * per_node)


def check_time_fit(spec: GridSpec, jobs: list[Job], o) -> list[str]:
    """An error for jobs whose estimate does not fit ``time - signal_s``; notes for long resumable
    jobs accepted by ``requeue_long``."""
    limit = parse_slurm_time(o.time)
    if limit is None:
        return []
    if o.signal_s >= limit:
        raise ConfigError(f"signal_s={o.signal_s} is not below time={o.time} ({limit} s): no time is left to run")
    usable = limit - o.signal_s
    long = [(j, job_seconds(spec, j, o.nodes, o.gpus_per_node)) for j in jobs]
    long = [(j, s) for j, s in long if s > usable]
    hard = [(j, s) for j, s in long if j.kind not in RESUMABLE_KINDS or not o.requeue_long]
    if hard:
        worst = max(s for _, s in hard)
        listed = "; ".join(f"{j.id} ~{fmt_hours(s)}" for j, s in sorted(hard, key=lambda x: -x[1])[:5])
        more = f" and {len(hard) - 5} more" if len(hard) > 5 else ""
        resumable = all(j.kind in RESUMABLE_KINDS for j, _ in hard)
        fix = f"time={slurm_time(worst + o.signal_s)} or more, or more nodes= for pre-training"
        if resumable:
            fix += ", or requeue_long=true (each stops before the limit, saves, and requeues itself until done)"
        raise ConfigError(
            f"time={o.time}: {len(hard)} jobs do not fit (estimated at {spec.hardware.name}, "
            f"{spec.hardware.peak_tflops:g} TFLOP/s x {spec.hardware.mfu:.0%} MFU, less signal_s={o.signal_s}): "
            f"{listed}{more}. Fix: {fix}"
        )
    return [
        f"{j.id}: ~{fmt_hours(s)}, about {int(s // usable) + 1} requeued segments of time={o.time}" for j, s in long
    ]


def fit_batches(jobs: list[Job], nodes: int, gpus_per_node: int) -> tuple[list[Job], list[str]]:
    """Pre-training jobs with a micro-batch that divides each process's share of the global batch
    on ``nodes`` x processes per node (see the module doc); notes of the changes made."""
    out, changes = [], {}
    for j in jobs:
        if j.kind != "pretrain":
            out.append(j)
            continue
        cfg = j.config  # the run's PretrainConfig, as its job builder loaded it
        per_node = processes_per_node(j, gpus_per_node)
        world = nodes * per_node
        g, mb = cfg.global_batch_size, cfg.micro_batch_size
        if g % world:
            ok = sorted(sorted((n for n in range(1, 129) if g % (n * per_node) == 0), key=lambda n: abs(n - nodes))[:4])
            raise ConfigError(
                f"{j.id}: global_batch_size={g} is not divisible by nodes x processes per node = {nodes} x {per_node}"
                f" = {world}: use nodes= one of {', '.join(map(str, ok))} (or change global_batch_size in the "
                "grid's pretrain.overrides, which changes the run)"
            )
        share = g // world
        if share % mb == 0:
            out.append(j)
            continue
        new_mb = max(d for d in range(1, min(mb, share) + 1) if share % d == 0)
        argv = [*j.argv, format_setting("micro_batch_size", new_mb)]
        out.append(replace(j, argv=argv, config=replace(cfg, micro_batch_size=new_mb)))
        changes.setdefault((g, mb, world, new_mb), []).append(j.id)
    notes = [
        f"micro_batch_size {mb} -> {new_mb} for {len(ids)} pre-training runs ({ids[0]}{', ...' if len(ids) > 1 else ''}): "
        f"{g} sequences / {world} processes = {g // world} each, {g // world // new_mb} micro-batches per step; "
        "the global batch is unchanged"
        for (g, mb, world, new_mb), ids in changes.items()
    ]
    return out, notes
