"""``overtrain grid plan|run|slurm GRID``: the whole study from one YAML file.

A grid expands into jobs, each an ``overtrain`` command with dependencies:

    prepare  ->  pretrain (model x budget x pretrain axes)  ->  sweep (x task x finetune axes)
                                                           \\->  perturb (gammas x seeds)
                                                           \\->  sweep on intermediate checkpoints
    report   (after everything)

Every job is idempotent and resumable on its own (pre-training resumes from its latest
checkpoint, a sweep skips learning rates whose rows exist, perturbation rows are keyed), so
``grid run`` after a kill at any moment just runs the same commands again: a job is skipped
when its done-marker exists, and rows are appended atomically by the jobs themselves.
Jobs run as subprocesses (``python -m overtrain ...``, ``torchrun`` for multi-GPU
pre-training), so one crash cannot take the runner down and logs land in ``logs/JOB.log``.

Any config key of any stage can be a grid axis (``pretrain.axes`` / ``finetune.axes``:
dotted key -> list of values); axis values are passed as ``key=value`` overrides and recorded
in the job's run directory name and, via ``tags.*``, in every results row.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import (
    CONFIG_ROOT,
    ConfigError,
    atomic_write_text,
    config_digest,
    expand_path,
    load_config,
    parse_count,
    to_dict,
)

# ---------------------------------------------------------------------------------------- spec


@dataclass
class PrepareSpec:
    train: list[str] = field(default_factory=list)  # local files/globs; empty -> use the hub
    val: list[str] = field(default_factory=list)
    out: str = "data/c4"  # relative to the results dir unless absolute
    args: list[str] = field(default_factory=list)  # extra prepare-data flags, e.g. ["--workers", "4"]


@dataclass
class PretrainStage:
    config: str = "configs/pretrain/demo.yaml"
    models: list[str] = field(default_factory=lambda: ["tiny"])
    budgets: list[str] = field(default_factory=lambda: ["100K"])
    axes: dict[str, list] = field(default_factory=dict)  # dotted pretrain key -> values
    overrides: list[str] = field(default_factory=list)  # fixed key=value for every run
    gpus: int = 0  # processes per pre-training run (torchrun); 0 = the runner's --gpus
    intermediate_tokens: list[str] = field(default_factory=list)  # also fine-tune these (not decayed)


@dataclass
class FinetuneStage:
    config: str = "configs/finetune/demo.yaml"
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    lrs: list[float] = field(default_factory=list)  # empty -> the sweep's default grid per task
    axes: dict[str, list] = field(default_factory=dict)  # dotted finetune key -> values
    overrides: list[str] = field(default_factory=list)
    train_tokens_estimate: int = 2_000_000  # per (task, lr) run, for the compute estimate only


@dataclass
class PerturbStage:
    gammas: list[float] = field(default_factory=list)  # empty -> no perturbation jobs
    seeds: list[int] = field(default_factory=lambda: [0])
    val_tokens: int = 65536


@dataclass
class HardwareSpec:
    name: str = "A100-80GB"
    peak_tflops: float = 312.0  # bf16 dense
    mfu: float = 0.40


@dataclass
class ExtraJob:
    id: str
    command: list[str]  # argv after "overtrain"
    after: list[str] = field(default_factory=list)
    done: str = ""  # a path (relative to results dir) whose existence marks the job done


@dataclass
class GridSpec:
    name: str
    results_dir: str = "runs/grid"
    prepare: PrepareSpec | None = None
    data_dir: str = ""  # an already prepared C4 dir (instead of `prepare`)
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    finetune: FinetuneStage | None = None
    perturb: PerturbStage | None = None
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    extra_jobs: list[ExtraJob] = field(default_factory=list)
    report: bool = True

    def validate(self) -> None:
        if self.prepare is None and not self.data_dir:
            raise ValueError("set either 'prepare' (prepare C4 first) or 'data_dir' (an already prepared dir)")
        if self.prepare is not None and self.data_dir:
            raise ValueError("set only one of 'prepare' and 'data_dir'")


# ---------------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    id: str
    kind: str  # prepare | pretrain | sweep | perturb | report | extra
    argv: list[str]  # after `python -m overtrain`
    after: list[str]
    done: Path | None  # exists -> job finished
    flops: float = 0.0
    nproc: int = 1  # torchrun processes (pre-training)
    info: dict = field(default_factory=dict)
    mark_done: bool = False  # the runner writes `done` after a successful exit


def _slug(value: Any) -> str:
    s = str(value).replace("/", "-").replace(" ", "")
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in s)


def _axis_product(axes: dict[str, list]) -> list[dict[str, Any]]:
    if not axes:
        return [{}]
    keys = list(axes)
    for k in keys:
        if not isinstance(axes[k], list) or not axes[k]:
            raise ConfigError(f"grid axis '{k}': expected a non-empty list of values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _fmt_tokens(n: int) -> str:
    for div, suf in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div and n % (div // 1000 if div >= 1000 else 1) == 0:
            v = n / div
            return f"{v:g}{suf}"
    return str(n)


def _ov(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


def _results_path(spec: GridSpec, rel: str) -> Path:
    p = Path(expand_path(rel))
    return p if p.is_absolute() else Path(expand_path(spec.results_dir)) / p


def validate_names(spec: GridSpec, where: str) -> None:
    """Unknown model, task or budget: an error before any job starts."""
    from ..core.model import load_model_spec

    for m in spec.pretrain.models:
        try:
            load_model_spec(m)
        except ConfigError as e:
            raise ConfigError(f"{where}: pretrain.models: unknown model '{m}' ({e})") from None
    for b in list(spec.pretrain.budgets) + list(spec.pretrain.intermediate_tokens):
        try:
            if parse_count(b) <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{where}: pretrain.budgets: '{b}' is not a token count (e.g. 4B, 512M, 100K)") from None
    if spec.finetune is not None:
        try:
            from ..data.tasks import list_tasks

            known = set(list_tasks())
        except ImportError:  # tasks module not installed: skip the check
            known = set()
        for t in spec.finetune.tasks:
            if known and t not in known and not Path(expand_path(t)).is_file():
                raise ConfigError(f"{where}: finetune.tasks: unknown task '{t}' (known: {', '.join(sorted(known))})")
    for stage, path in (
        ("pretrain.config", spec.pretrain.config),
        ("finetune.config", spec.finetune.config if spec.finetune else None),
    ):
        if path and not (
            Path(expand_path(path)).is_file() or (Path.cwd() / path).is_file() or (CONFIG_ROOT.parent / path).is_file()
        ):
            raise ConfigError(f"{where}: {stage}: config file '{path}' not found")


def _config_path(path: str) -> str:
    p = Path(expand_path(path))
    if p.is_file():
        return str(p)
    q = CONFIG_ROOT.parent / path
    return str(q) if q.is_file() else str(p)


def expand(spec: GridSpec) -> list[Job]:
    """All jobs of the grid, in a valid dependency order."""
    from ..core.model import flops_per_token, load_model_spec

    root = Path(expand_path(spec.results_dir))
    jobs: list[Job] = []
    data_dir = _results_path(spec, spec.prepare.out) if spec.prepare else Path(expand_path(spec.data_dir))
    data_after: list[str] = []
    if spec.prepare is not None:
        argv = ["prepare-data", "--out", str(data_dir)]
        if spec.prepare.train:
            argv += ["--train", *[expand_path(x) for x in spec.prepare.train]]
        if spec.prepare.val:
            argv += ["--val", *[expand_path(x) for x in spec.prepare.val]]
        argv += list(spec.prepare.args)
        jobs.append(Job("prepare", "prepare", argv, [], data_dir / "meta.json"))
        data_after = ["prepare"]

    pre = spec.pretrain
    pre_cfg = _config_path(pre.config)
    for model, budget, axes in itertools.product(pre.models, pre.budgets, _axis_product(pre.axes)):
        tokens = parse_count(budget)
        tag = "".join(f"_{_slug(k.split('.')[-1])}-{_slug(v)}" for k, v in axes.items())
        run_id = f"{model}_{_fmt_tokens(tokens)}{tag}"
        run_dir = root / "pretrain" / run_id
        argv = [
            "pretrain",
            pre_cfg,
            f"model={model}",
            f"budget_tokens={tokens}",
            f"run_dir={run_dir}",
            f"data.dir={data_dir}",
        ]
        # Token marks come from the grid alone (a base config's own marks would not be swept).
        marks = [parse_count(t) for t in pre.intermediate_tokens if parse_count(t) < tokens]
        argv.append(_ov("checkpoint.at_tokens", marks))
        argv += list(pre.overrides) + [_ov(k, v) for k, v in axes.items()]
        mspec = load_model_spec(model)
        jobs.append(
            Job(
                f"pretrain/{run_id}",
                "pretrain",
                argv,
                list(data_after),
                run_dir / "summary.json",
                flops=float(flops_per_token(mspec)) * tokens,
                nproc=pre.gpus,
                info={"model": model, "tokens": tokens, "run_dir": str(run_dir), "axes": axes, "marks": marks},
            )
        )
    pre_jobs = [j for j in jobs if j.kind == "pretrain"]

    if spec.finetune is not None:
        ft = spec.finetune
        ft_cfg = _config_path(ft.config)
        n_lrs = len(ft.lrs) or 8
        for pj in pre_jobs:
            mspec = load_model_spec(pj.info["model"])
            ckpts = [("final", pj.info["run_dir"])] + [
                (f"at{_fmt_tokens(t)}", f"{pj.info['run_dir']}@tokens={t}") for t in pj.info["marks"]
            ]
            for (ck_name, ck), task, axes in itertools.product(ckpts, ft.tasks, _axis_product(ft.axes)):
                tag = "".join(f"_{_slug(k.split('.')[-1])}-{_slug(v)}" for k, v in axes.items())
                sid = f"{pj.id.split('/', 1)[1]}_{ck_name}_{_slug(Path(task).stem)}{tag}"
                sdir = root / "sweeps" / sid
                argv = ["sweep", ft_cfg, f"checkpoint={ck}", f"task={task}", f"run_dir={sdir}", f"c4={data_dir}"]
                if ft.lrs:
                    argv.append(_ov("lrs", ft.lrs))
                tags = {**pj.info["axes"], **axes}
                argv += list(ft.overrides) + [_ov(k, v) for k, v in axes.items()]
                argv += [f"tags.{k.replace('.', '_')}={v}" for k, v in tags.items()]
                jobs.append(
                    Job(
                        f"sweep/{sid}",
                        "sweep",
                        argv,
                        [pj.id],
                        root / "state" / f"sweep__{sid}.done",
                        mark_done=True,
                        flops=float(flops_per_token(mspec)) * ft.train_tokens_estimate * n_lrs,
                        info={"task": task, "checkpoint": ck, "run_dir": str(sdir)},
                    )
                )

    if spec.perturb is not None and spec.perturb.gammas:
        pt = spec.perturb
        for pj in pre_jobs:
            mspec = load_model_spec(pj.info["model"])
            pdir = root / "perturb" / pj.id.split("/", 1)[1]
            argv = [
                "perturb",
                pj.info["run_dir"],
                "--gammas",
                ",".join(str(g) for g in pt.gammas),
                "--seeds",
                ",".join(str(s) for s in pt.seeds),
                "--c4",
                str(data_dir),
                "--val-tokens",
                str(pt.val_tokens),
                "--results",
                str(pdir / "results.jsonl"),
            ]
            argv += [f"tags.{k.replace('.', '_')}={v}" for k, v in pj.info["axes"].items()]
            fwd = float(flops_per_token(mspec)) / 3 * pt.val_tokens * (len(pt.gammas) * len(pt.seeds) + 1)
            jobs.append(
                Job(
                    f"perturb/{pdir.name}",
                    "perturb",
                    argv,
                    [pj.id],
                    root / "state" / f"perturb__{pdir.name}.done",
                    flops=fwd,
                    mark_done=True,
                )
            )

    for ej in spec.extra_jobs:
        done = _results_path(spec, ej.done) if ej.done else root / "state" / f"{_slug(ej.id)}.done"
        jobs.append(Job(ej.id, "extra", list(ej.command), list(ej.after), done, mark_done=not ej.done))

    if spec.report:
        every = [j.id for j in jobs]
        jobs.append(
            Job("report", "report", ["report", str(root), "--out", str(root / "report")], every, None)
        )  # always rerun
    return toposort(jobs)


def toposort(jobs: list[Job]) -> list[Job]:
    """Dependency order; a missing dependency or a cycle is a ConfigError naming the jobs."""
    by_id: dict[str, Job] = {}
    for j in jobs:
        if j.id in by_id:
            raise ConfigError(f"grid: two jobs are named '{j.id}'")
        by_id[j.id] = j
    for j in jobs:
        for d in j.after:
            if d not in by_id:
                raise ConfigError(f"grid: job '{j.id}' depends on '{d}', which is not a job of this grid")
    order: list[Job] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(j: Job, path: list[str]) -> None:
        s = state.get(j.id)
        if s == 2:
            return
        if s == 1:
            cycle = path[path.index(j.id) :] + [j.id]
            raise ConfigError(f"grid: dependency cycle: {' -> '.join(cycle)}")
        state[j.id] = 1
        for d in j.after:
            visit(by_id[d], path + [j.id])
        state[j.id] = 2
        order.append(j)

    for j in jobs:
        visit(j, [])
    return order


def load_grid(path: str, overrides=()) -> GridSpec:
    spec = load_config(GridSpec, path, overrides, kind="grids")
    validate_names(spec, str(path))
    return spec


def grid_fingerprint(spec: GridSpec) -> str:
    """What identifies the study: everything but the results dir and the report switch."""
    return config_digest(spec, exclude=("results_dir", "report", "hardware"))


def claim_results_dir(spec: GridSpec, grid_path: str, force: bool = False) -> Path:
    """Record the grid in its results dir; refuse a results dir made by a different grid."""
    root = Path(expand_path(spec.results_dir))
    marker = root / "grid.json"
    fp = grid_fingerprint(spec)
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("fingerprint") != fp and not force:
            raise ConfigError(
                f"{grid_path}: results_dir {root} holds results of a different grid "
                f"('{old.get('name')}' from {old.get('grid_file')}); use another results_dir, or --force"
            )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        marker,
        json.dumps(
            {"name": spec.name, "grid_file": str(grid_path), "fingerprint": fp, "spec": to_dict(spec)}, indent=2
        ),
    )
    return root


# ---------------------------------------------------------------------------------------- plan


def gpu_hours(flops: float, hw: HardwareSpec) -> float:
    return flops / (hw.peak_tflops * 1e12 * hw.mfu) / 3600.0


def plan_summary(spec: GridSpec, jobs: list[Job]) -> dict:
    kinds: dict[str, dict] = {}
    for j in jobs:
        k = kinds.setdefault(j.kind, {"jobs": 0, "flops": 0.0})
        k["jobs"] += 1
        k["flops"] += j.flops
    total = sum(j.flops for j in jobs)
    for k in kinds.values():
        k["gpu_hours"] = gpu_hours(k["flops"], spec.hardware)
    return {
        "grid": spec.name,
        "jobs": len(jobs),
        "by_kind": kinds,
        "flops": total,
        "gpu_hours": gpu_hours(total, spec.hardware),
        "hardware": to_dict(spec.hardware),
    }


def print_plan(spec: GridSpec, jobs: list[Job], verbose: bool = True) -> None:
    s = plan_summary(spec, jobs)
    hw = spec.hardware
    if verbose:
        w = max(len(j.id) for j in jobs)
        print(f"{'job':<{w}}  {'status':<7} {'FLOPs':>9} {'GPU-h':>8}  after")
        for j in jobs:
            status = "done" if j.done is not None and j.done.exists() else "todo"
            after = ", ".join(j.after) if len(j.after) <= 2 else f"{len(j.after)} jobs"
            print(f"{j.id:<{w}}  {status:<7} {j.flops:>9.2e} {gpu_hours(j.flops, hw):>8.2f}  {after}")
        print()
    print(f"grid '{spec.name}': {s['jobs']} jobs")
    for kind, k in s["by_kind"].items():
        print(f"  {kind:<9} {k['jobs']:>5} jobs  {k['flops']:.3e} FLOPs  {k['gpu_hours']:>10.1f} GPU-hours")
    print(
        f"  total: {s['flops']:.3e} FLOPs = {s['gpu_hours']:.1f} GPU-hours on {hw.name} "
        f"({hw.peak_tflops:g} TFLOP/s peak at {hw.mfu:.0%} MFU)"
    )


# ----------------------------------------------------------------------------------------- run


def _command(job: Job, gpus: int) -> list[str]:
    nproc = job.nproc or gpus
    if job.kind == "pretrain" and nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "overtrain",
            *job.argv,
        ]
    return [sys.executable, "-m", "overtrain", *job.argv]


def _log_path(root: Path, job: Job) -> Path:
    return root / "logs" / (job.id.replace("/", "__") + ".log")


def is_done(job: Job) -> bool:
    return job.done is not None and job.done.exists()


def run_jobs(spec: GridSpec, jobs: list[Job], gpus: int = 0, dry_run: bool = False, only: str | None = None) -> int:
    """Run todo jobs in dependency order. Preparation, pre-training and the report hold the whole
    machine; sweeps and perturbations run one per GPU in parallel (one at a time on CPU)."""
    root = Path(expand_path(spec.results_dir))
    (root / "logs").mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not is_done(j) and (only is None or j.id.startswith(only))]
    done_ids = {j.id for j in jobs if is_done(j)}
    failed: set[str] = set()
    print(f"grid '{spec.name}': {len(jobs)} jobs, {len(jobs) - len(todo)} already done, {len(todo)} to run", flush=True)
    free_gpus = list(range(gpus)) or [None]
    running: dict[str, tuple[Job, subprocess.Popen, float, Any, Any]] = {}
    pending = list(todo)
    t_start, n_finished = time.time(), 0

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
                gpu = None
            elif free_gpus:
                gpu = free_gpus.pop(0)
            else:
                continue
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            cmd = _command(j, gpus)
            log = open(_log_path(root, j), "a")
            log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
            log.flush()
            print(f"  start {j.id}" + (f" (GPU {gpu})" if gpu is not None else ""), flush=True)
            running[j.id] = (
                j,
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                time.time(),
                gpu,
                log,
            )
            pending.remove(j)
            if j.kind in EXCLUSIVE:
                exclusive_running = True
        if not running and pending:  # nothing runnable: a dependency was filtered out by --only
            print(f"  {len(pending)} jobs wait on jobs outside --only; stopping", flush=True)
            break
        time.sleep(0.2)
        for jid, (job, proc, t0, gpu, log) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            del running[jid]
            if job.kind not in EXCLUSIVE:
                free_gpus.append(gpu)
            n_finished += 1
            if rc == 0 and job.mark_done and job.done is not None:
                atomic_write_text(job.done, json.dumps({"job": jid, "finished": time.time()}) + "\n")
            if rc == 0 and (job.done is None or job.done.exists()):
                done_ids.add(jid)
                print(f"  done  {jid} in {time.time() - t0:.0f}s  [{n_finished}/{len(todo)}]", flush=True)
            else:
                failed.add(jid)
                why = f"exit {rc}" if rc else f"exit 0 but {job.done} is missing"
                print(f"  FAIL  {jid} ({why}); log: {_log_path(root, job)}\n{_tail(_log_path(root, job))}", flush=True)
    print(f"grid '{spec.name}': finished in {time.time() - t_start:.0f}s; {len(failed)} failed", flush=True)
    return 1 if failed else 0


EXCLUSIVE = ("prepare", "pretrain", "report", "extra")


def _tail(path: Path, n: int = 12) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("      | " + line for line in lines)


# --------------------------------------------------------------------------------------- slurm


SLURM_PRETRAIN = """#!/bin/bash
# Multi-node torchrun pre-training for one grid run (generated by `overtrain grid slurm`).
#SBATCH --job-name={name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --output={logs}/%x-%j.out
set -euo pipefail
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes="$SLURM_NNODES" --nproc_per_node={gpus} \\
  --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head:29500" \\
  -m overtrain {args}
"""

SLURM_ARRAY = """#!/bin/bash
# Fine-tuning sweeps and perturbation jobs as a job array, one GPU each (generated by `overtrain grid slurm`).
# Submit after the pre-training jobs: sbatch --dependency=afterok:<ids> {path}
#SBATCH --job-name={name}
#SBATCH --array=0-{last}
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time={time}
#SBATCH --output={logs}/%x-%A_%a.out
set -euo pipefail
mapfile -t JOBS < {joblist}
eval "python -m overtrain ${{JOBS[$SLURM_ARRAY_TASK_ID]}}"
"""


def write_slurm(spec: GridSpec, jobs: list[Job], out: Path, nodes: int, gpus: int, time_limit: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(expand_path(spec.results_dir)) / "logs"
    written = []
    pre = [j for j in jobs if j.kind == "pretrain"]
    for j in pre:
        p = out / f"pretrain_{j.id.split('/', 1)[1]}.sbatch"
        atomic_write_text(
            p,
            SLURM_PRETRAIN.format(
                name=f"pt-{j.id.split('/', 1)[1]}",
                nodes=nodes,
                gpus=gpus,
                cpus=8 * gpus,
                time=time_limit,
                logs=logs,
                args=shlex.join(j.argv),
            ),
        )
        written.append(p)
    array = [j for j in jobs if j.kind in ("sweep", "perturb")]
    if array:
        joblist = out / "finetune_jobs.txt"
        atomic_write_text(joblist, "".join(shlex.join(j.argv) + "\n" for j in array))
        p = out / "finetune_array.sbatch"
        atomic_write_text(
            p,
            SLURM_ARRAY.format(
                name=f"{spec.name}-ft", last=len(array) - 1, time=time_limit, logs=logs, joblist=joblist, path=p
            ),
        )
        written += [joblist, p]
    prep = [j for j in jobs if j.kind == "prepare"]
    lines = [
        "#!/bin/bash",
        f"# Submit the whole grid '{spec.name}' in dependency order.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    dep = ""
    if prep:
        lines.append(f"python -m overtrain {shlex.join(prep[0].argv)}")
    ids = []
    for j in pre:
        lines.append(f'id=$(sbatch --parsable pretrain_{j.id.split("/", 1)[1]}.sbatch); ids="$ids:$id"')
        ids.append(j.id)
    if array:
        dep = "--dependency=afterok$ids " if pre else ""
        lines.append(f"sbatch {dep}finetune_array.sbatch")
    submit = out / "submit.sh"
    atomic_write_text(submit, 'ids=""\n'.join(["\n".join(lines[:4]) + "\n", "\n".join(lines[4:]) + "\n"]))
    os.chmod(submit, 0o755)
    written.append(submit)
    return written


# ----------------------------------------------------------------------------------------- CLI


def add_arguments(p) -> None:
    p.add_argument(
        "action",
        choices=["plan", "run", "slurm"],
        help="plan: list jobs and compute; run: run them here; slurm: write sbatch files",
    )
    p.add_argument("grid", help="grid YAML (a path, or a name in configs/grids/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the grid file")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible CUDA devices, 0 on CPU)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.add_argument("--only", default=None, help="run only jobs whose id starts with this prefix (and are ready)")
    p.add_argument("--force", action="store_true", help="accept a results dir recorded for a different grid")
    p.add_argument("--json", action="store_true", help="plan: print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="plan: totals only")
    p.add_argument("--report", action="store_true", help="run: print the report table and figure paths at the end")
    p.add_argument("--out", default=None, help="slurm: output folder (default RESULTS_DIR/slurm)")
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes per pre-training job")
    p.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs per node")
    p.add_argument("--time", default="48:00:00", help="slurm: time limit per job")


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch CUDA runtime
        return 0


def run(args) -> int:
    spec = load_grid(args.grid, args.overrides)
    jobs = expand(spec)
    if args.action == "plan":
        if args.json:
            s = plan_summary(spec, jobs)
            s["job_list"] = [{"id": j.id, "kind": j.kind, "after": j.after, "flops": j.flops} for j in jobs]
            print(json.dumps(s, indent=2))
        else:
            print_plan(spec, jobs, verbose=not args.quiet)
        return 0
    if args.action == "slurm":
        out = Path(args.out) if args.out else Path(expand_path(spec.results_dir)) / "slurm"
        for p in write_slurm(spec, jobs, out, args.nodes, args.gpus_per_node, args.time):
            print(p)
        return 0
    claim_results_dir(spec, args.grid, force=args.force)
    gpus = _visible_gpus() if args.gpus is None else args.gpus
    rc = run_jobs(spec, jobs, gpus=gpus, dry_run=args.dry_run, only=args.only)
    if args.report and not args.dry_run:
        report_dir = Path(expand_path(spec.results_dir)) / "report"
        table = report_dir / "report.md"
        if table.is_file():
            print("\n" + table.read_text())
        pngs = sorted(report_dir.glob("*.png"))
        if pngs:
            print("figures:")
            for p in pngs:
                print(f"  {p}")
    return rc
