"""``overtrain grid plan|run|slurm|submit|status GRID [key=value ...]``: the whole study from one YAML file.

    overtrain grid plan configs/grids/paper.yaml                  # jobs, dependencies, FLOPs, GPU-hours
    overtrain grid run demo print_report=true                     # run here, then print the report
    overtrain grid slurm paper nodes=2 gpus_per_node=8            # sbatch files + submit.sh
    overtrain grid submit paper partition=gpu                     # write them and submit what is missing
    overtrain grid status paper                                   # done / running / failed / waiting per job

A grid (``launch.spec``) expands into jobs (``launch.plan``), each an ``overtrain`` command with
dependencies: prepare -> pretrain -> sweep / perturb -> report. ``run`` executes them here
(``launch.runner``: resumable, a job is skipped when its done-marker exists), ``slurm`` writes
batch files, ``submit`` submits the unfinished jobs (rerun it at any time: finished and queued jobs
are skipped) and ``status`` shows each job's state and log (``launch.slurm``). Any config key of any stage can be a grid axis (``pretrain.axes``
/ ``finetune.axes``: dotted key -> list of values); axis values are passed as ``key=value``
settings and recorded in the job's run directory name and, via ``tags.*``, in every results row.

Settings of the grid file and of this command are both ``key=value``: the grid's keys
(``results_dir=...``, ``pretrain.budgets=[32K]``) override the file; the command's own options
(``gpus``, ``dry_run``, ...; see ``overtrain grid --help``) say how to run it. The grid's overrides
are recorded in ``RESULTS_DIR/grid.json`` (``run``, ``slurm``, ``submit``) and read back by
``slurm``, ``submit`` and ``status``: the ``submit.sh`` that ``slurm`` writes names only the grid
file, its results dir and the Slurm options, and submits the grid planned with every override.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..core.config import resolve_config_path
from ..core.paths import expand_path
from .cluster import check_cluster, check_options
from .plan import detectable_worsening, expand, plan_summary, print_plan
from .runner import run_jobs
from .slurm import SlurmOptions, print_status, submit, write_slurm
from .spec import GridSpec, claim_results_dir, recorded_grid, validate_names


@dataclass
class GridOptions:
    gpus: int | None = None  # run: GPUs to use (None: all visible CUDA devices, 0 on CPU)
    dry_run: bool = False  # run: print the commands instead of running them
    only: str | None = None  # run: only jobs whose id starts with this prefix (and are ready)
    force: bool = False  # run: accept a results dir recorded for a different grid
    print_report: bool = False  # run: print the report table and figure paths at the end
    fork_jobs: bool = True  # run: on CPU, fork one-process jobs from a process that imported torch and OLMo once
    json: bool = False  # plan: print the summary as JSON
    quiet: bool = False  # plan: totals only
    out: str | None = None  # slurm/submit/status: the batch files' folder (None: RESULTS_DIR/slurm)
    nodes: int = 1  # slurm: nodes per pre-training job
    gpus_per_node: int = 8  # slurm: GPUs per node (0: CPU only)
    time: str = "48:00:00"  # slurm: time limit per job
    partition: str = ""  # slurm: --partition ("" = the cluster's default)
    account: str = ""  # slurm: --account ("" = none)
    setup: str = ""  # slurm: a shell line every job runs first, e.g. "module load cuda/12.1"
    cpus_per_task: int = 0  # slurm: CPUs per task (0: 8 per GPU, 1 per process on CPU)
    signal_s: int = 300  # slurm: USR1 this many seconds before the time limit (save, then requeue)
    requeue_long: bool = False  # slurm: accept pre-training runs / sweeps longer than time (they requeue until done)
    prepare_tasks: int = 0  # slurm: > 0: prepare-data as plan -> array of this many shard ranges -> merge


def _visible_gpus() -> int:
    try:
        import torch  # heavy: torch, only to count the GPUs of `grid run` (never for plan, slurm, submit, status)

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch CUDA runtime
        return 0


def run(action: str, spec: GridSpec, grid_path: str, overrides: list[str], options: GridOptions) -> int:
    """``overtrain grid ACTION GRID``: ``spec`` loaded from ``grid_path`` (a name in configs/grids/ or
    a path) with the key=value ``overrides`` (recorded in the results dir), run as ``options`` say."""
    validate_names(spec, grid_path)
    overrides = list(overrides)
    if action in ("slurm", "submit", "status"):  # the grid as recorded in its results dir, every override
        spec, overrides = recorded_grid(spec, grid_path, overrides)
    jobs = expand(spec)
    if action == "plan":
        if options.json:
            s = plan_summary(spec, jobs)
            s["job_list"] = [{"id": j.id, "kind": j.kind, "after": j.after, "flops": j.flops} for j in jobs]
            power = detectable_worsening(spec)  # per task; inf (one run per point, no probe) as null: strict JSON
            for f in power.values():
                f["measurable"] = f["worsening"] is not None and f["worsening"] != float("inf")
                f["worsening"] = f["worsening"] if f["measurable"] else None
            s["detectable_worsening"] = power
            print(json.dumps(s, indent=2))
        else:
            print_plan(spec, jobs, verbose=not options.quiet)
        return 0
    out = Path(options.out) if options.out else Path(expand_path(spec.results_dir)) / "slurm"
    grid_file = str(resolve_config_path(grid_path, "grids"))
    opts = SlurmOptions(**{f.name: getattr(options, f.name) for f in fields(SlurmOptions)})
    if action == "slurm":
        check_options(opts)  # a bad option: an error before the results dir is made
        claim_results_dir(spec, grid_path, force=options.force, overrides=overrides)  # submit.sh reads it back
        for p in write_slurm(spec, jobs, out, opts, grid_file):
            print(p)
        return 0
    if action == "status":
        return print_status(spec, jobs, out)
    if action == "submit":
        for warning in check_cluster(opts):  # before anything is written or submitted
            print(f"warning: {warning}")
        claim_results_dir(spec, grid_path, force=options.force, overrides=overrides)
        submit(spec, jobs, out, opts, grid_file)
        return 0
    claim_results_dir(spec, grid_path, force=options.force, overrides=overrides)
    gpus = _visible_gpus() if options.gpus is None else options.gpus
    rc = run_jobs(spec, jobs, gpus=gpus, dry_run=options.dry_run, only=options.only, fork_jobs=options.fork_jobs)
    if options.print_report and not options.dry_run:
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
