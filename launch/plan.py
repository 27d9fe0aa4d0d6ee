"""A grid's jobs: each an ``overtrain`` command line with dependencies, in a valid order, and its compute.

    prepare  ->  pretrain (model x budget x pretrain axes)  ->  sweep (x task x finetune axes)
                                                           \\->  perturb (gammas x seeds)
                                                           \\->  lm-eval (every checkpoint)
                                                           \\->  sweep on intermediate checkpoints
    suite member (revision)  ->  instruct (x chat dataset)  ->  lm-eval (every tuned model)
                             \\->  lm-eval (the member itself, before tuning)
    report   (after everything)

Every setting reaches a job as a ``key=value`` of its command; axis values also become part of the
run directory's name and, via ``tags.*``, of every results row. FLOPs: 6N + attention per trained
token (``flops_per_token``), a third of it per evaluated token (suite members: 6N and 2N with N their
parameters, ``suite.params`` or counted from config.json); GPU-hours at the grid's ``hardware`` peak
and MFU. A sweep's compute counts the LRs of its grid (the grid's ``lrs``, else
the finetune config's ``lrs`` or ``sweep.n_lrs``); a sweep may add up to ``sweep.max_extensions``
LRs past its grid's end (``finetune.sweep``), counted apart as the sweeps' possible extra compute.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, expand_path, parse_count, to_dict
from .spec import (
    GridSpec,
    HardwareSpec,
    config_path,
    prepare_settings,
    results_path,
    seed_axes,
    seed_tags,
    suite_members,
)
from .spec import data_dir as grid_data_dir


@dataclass
class Job:
    id: str
    kind: str  # prepare | pretrain | sweep | perturb | lm-eval | report | extra
    argv: list[str]  # after `python -m overtrain`
    after: list[str]
    done: Path | None  # exists -> job finished
    flops: float = 0.0
    nproc: int = 1  # torchrun processes (pre-training, instruction tuning); 0 = the runner's gpus=
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
    """A ``key=value`` setting; a list in YAML flow style."""
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


def expand(spec: GridSpec) -> list[Job]:
    """All jobs of the grid, in a valid dependency order."""
    from ..core.model import flops_per_token as count_flops
    from ..core.model import load_model_spec

    per_model: dict = {}

    def flops_per_token(mspec) -> float:  # counts on a built model (~0.1 s): once per model of the grid
        key = repr(mspec)
        if key not in per_model:
            per_model[key] = float(count_flops(mspec))
        return per_model[key]

    root = Path(expand_path(spec.results_dir))
    jobs: list[Job] = []
    data_dir = grid_data_dir(spec)
    data_after: list[str] = []
    if spec.prepare is not None:
        jobs.append(Job("prepare", "prepare", ["prepare-data", *prepare_settings(spec)], [], data_dir / "meta.json"))
        data_after = ["prepare"]

    pre = spec.pretrain
    pre_runs = [] if pre is None else _axis_product(seed_axes(pre.axes, pre.seeds))
    longest = max((parse_count(b) for b in pre.budgets), default=0) if pre else 0
    for model, budget, axes in itertools.product(pre.models if pre else [], pre.budgets if pre else [], pre_runs):
        pre_cfg = config_path(pre.config)
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
        # Token marks come from the grid alone (a base config's own marks would not be swept), so a
        # run without marks gets `checkpoint.at_tokens=[]`; `intermediate_runs: longest` keeps them
        # to each model's longest run (the Amuro & Char comparison: one run's checkpoints before
        # their LR decayed, beside the fully decayed runs of each budget).
        marked = pre.intermediate_runs == "all" or tokens == longest
        marks = [parse_count(t) for t in pre.intermediate_tokens if parse_count(t) < tokens] if marked else []
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
        ft_cfg = config_path(ft.config)
        for pj in pre_jobs:
            mspec = load_model_spec(pj.info["model"])
            ckpts = [("final", pj.info["run_dir"])] + [
                (f"at{_fmt_tokens(t)}", f"{pj.info['run_dir']}@tokens={t}") for t in pj.info["marks"]
            ]
            ft_axes = _axis_product(seed_axes(ft.axes, ft.seeds))
            for (ck_name, ck), task, axes in itertools.product(ckpts, ft.tasks, ft_axes):
                tag = "".join(f"_{_slug(k.split('.')[-1])}-{_slug(v)}" for k, v in axes.items())
                sid = f"{pj.id.split('/', 1)[1]}_{ck_name}_{_slug(Path(task).stem)}{tag}"
                sdir = root / "sweeps" / sid
                argv = ["sweep", ft_cfg, f"checkpoint={ck}", f"task={task}", f"run_dir={sdir}", f"c4={data_dir}"]
                if ft.lrs:
                    argv.append(_ov("lrs", ft.lrs))
                tags = {**seed_tags(pj.info["axes"]), **axes}
                settings = list(ft.overrides) + [_ov(k, v) for k, v in axes.items()]
                argv += settings
                argv += [f"tags.{k.replace('.', '_')}={v}" for k, v in tags.items()]
                n_lrs, extra_lrs = sweep_lr_counts(ft_cfg, ft.lrs, settings)
                per_lr = float(flops_per_token(mspec)) * ft.train_tokens_estimate
                jobs.append(
                    Job(
                        f"sweep/{sid}",
                        "sweep",
                        argv,
                        [pj.id],
                        root / "state" / f"sweep__{sid}.done",
                        mark_done=True,
                        flops=per_lr * n_lrs,
                        info={
                            "task": task,
                            "checkpoint": ck,
                            "run_dir": str(sdir),
                            "lrs": n_lrs,
                            "max_added_lrs": extra_lrs,
                            "extension_flops": per_lr * extra_lrs,
                        },
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
                _ov("gammas", pt.gammas),
                _ov("seeds", pt.seeds),
                f"c4={data_dir}",
                f"val_tokens={pt.val_tokens}",
                f"results={pdir / 'results.jsonl'}",
            ]
            argv += [f"tags.{k.replace('.', '_')}={v}" for k, v in seed_tags(pj.info["axes"]).items()]
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

    if spec.lm_eval is not None and spec.lm_eval.tasks:
        le = spec.lm_eval
        for pj in pre_jobs:
            fwd = float(flops_per_token(load_model_spec(pj.info["model"]))) / 3 * le.eval_tokens_estimate
            run_id = pj.id.split("/", 1)[1]
            for t in [None, *pj.info["marks"]]:
                lid = run_id if t is None else f"{run_id}_at{_fmt_tokens(t)}"
                ck = pj.info["run_dir"] if t is None else f"{pj.info['run_dir']}@tokens={t}"
                results = root / "lm_eval" / lid / "results.jsonl"
                argv = ["lm-eval", ck, _ov("tasks", le.tasks), f"results={results}", *le.args]
                done = root / "state" / f"lm_eval__{lid}.done"
                jobs.append(Job(f"lm-eval/{lid}", "lm-eval", argv, [pj.id], done, flops=fwd, mark_done=True))

    if spec.suite is not None:
        jobs += suite_jobs(spec, root)

    for ej in spec.extra_jobs:
        done = results_path(spec, ej.done) if ej.done else root / "state" / f"{_slug(ej.id)}.done"
        jobs.append(Job(ej.id, "extra", list(ej.command), list(ej.after), done, mark_done=not ej.done))

    track = tracker_settings(spec)  # one grid, one tracker project (lm-eval jobs write rows only)
    for j in jobs:
        if j.kind in ("pretrain", "sweep", "perturb"):
            j.argv += track

    if spec.report:
        every = [j.id for j in jobs]
        argv = ["report", str(root), f"out={root / 'report'}", *track]
        jobs.append(Job("report", "report", argv, every, None))  # always rerun
    return toposort(jobs)


def suite_params(spec: GridSpec) -> float:
    """The suite's parameter count: ``suite.params``, else counted from a local member's config.json
    (embeddings + per layer 4 d^2 attention + 3 d f gated MLP; the compute estimate needs no more)."""
    import json

    if spec.suite.params:
        return float(parse_count(spec.suite.params))
    local = Path(expand_path(spec.suite.model))
    cfgs = sorted(local.glob("*/config.json")) if local.is_dir() else []
    if not cfgs:
        raise ConfigError(f"grid: suite.params: give the parameter count of {spec.suite.model} (e.g. 1.18B)")
    c = json.loads(cfgs[0].read_text())
    d, f, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    return float(layers * (4 * d * d + 3 * d * f) + vocab * d * (1 if c.get("tie_word_embeddings") else 2))


def suite_jobs(spec: GridSpec, root: Path) -> list[Job]:
    """Instruction tuning of every member on every chat dataset, and lm-eval of every member (before
    tuning, when ``suite.evaluate_base``) and of every tuned model; rows land in per-job results files."""
    n = suite_params(spec)
    ins, le = spec.instruct, spec.lm_eval
    jobs = []
    for m in suite_members(spec, check=False):  # load_grid checked them
        evals = [(f"{_slug(m.name)}_base", m.ref, [])] if spec.suite.evaluate_base else []
        for name, data in (ins.datasets if ins else {}).items():
            tid = f"{_slug(m.name)}_{_slug(name)}"
            out = root / "instruct" / tid
            argv = ["sft", m.ref, f"data={expand_path(data)}", f"data_name={name}", f"out={out}", f"tokens={m.tokens}"]
            argv += ins.args
            argv.append(f"results={root / 'instruct' / 'results.jsonl'}")
            jobs.append(
                Job(
                    f"instruct/{tid}",
                    "instruct",
                    argv,
                    [],
                    out / "overtrain_suite.json",
                    flops=6 * n * ins.train_tokens_estimate,
                    nproc=ins.gpus,
                    info={"member": m.name, "tokens": m.tokens, "data": name, "out": str(out)},
                )
            )
            evals.append((tid, str(out), [f"instruct/{tid}"]))
        if spec.multimodal is not None:
            jobs.append(multimodal_job(spec, root, m, n))
        if le is None or not le.tasks:
            continue
        for lid, model, after in evals:
            results = root / "lm_eval" / lid / "results.jsonl"
            argv = ["lm-eval", model, _ov("tasks", le.tasks), f"results={results}", *le.args]
            if not after:  # a member itself: its suite, revision and token count travel with the rows
                argv += ["member=true", f"pretrain_tokens={m.tokens}"]
            done = root / "state" / f"lm_eval__{lid}.done"
            jobs.append(
                Job(
                    f"lm-eval/{lid}",
                    "lm-eval",
                    argv,
                    after,
                    done,
                    flops=2 * n * le.eval_tokens_estimate,
                    mark_done=True,
                )
            )
    return jobs


def multimodal_job(spec: GridSpec, root: Path, m, n: float) -> Job:
    """LLaVA tuning of member ``m`` (N = n parameters, tower Nv): stage 1 ~ (4N + 2Nv) per token (the
    frozen LM still backpropagates to the projector, no weight gradients), stage 2 ~ (6N + 2Nv);
    memory before activations: fp32 AdamW on the LM (16 bytes/param) + the frozen fp32 tower (4)."""
    mm = spec.multimodal
    nv = float(parse_count(mm.vision_params))
    out = root / "multimodal" / _slug(m.name)
    argv = ["multimodal", m.ref, f"vision={mm.vision}", f"captions={expand_path(mm.captions)}"]
    argv += [f"instruct={expand_path(mm.instruct)}", f"vqa={expand_path(mm.vqa)}", f"data_name={mm.name}"]
    argv += [f"{k}={expand_path(getattr(mm, k))}" for k in ("caption_images", "instruct_images") if getattr(mm, k)]
    argv += [f"out={out}", f"tokens={m.tokens}", *mm.args, f"results={root / 'multimodal' / 'results.jsonl'}"]
    flops = (4 * n + 2 * nv) * mm.stage1_tokens_estimate + (6 * n + 2 * nv) * mm.stage2_tokens_estimate
    memory = (16 * n + 4 * nv) / 1e9
    info = {"member": m.name, "tokens": m.tokens, "out": str(out), "memory_gb": memory}
    return Job(f"multimodal/{_slug(m.name)}", "multimodal", argv, [], out / "overtrain_suite.json", flops, info=info)


_SWEEP_LRS: dict = {}


def sweep_lr_counts(config: str, grid_lrs: list, settings: list[str]) -> tuple[int, int]:
    """(LRs of a sweep's grid, LRs it may add past the grid's end) for the finetune ``config`` with
    ``settings`` (the job's key=value); the grid's own ``lrs`` win over the config's."""
    from ..finetune.config import load_finetune_config

    key = (config, tuple(settings))
    if key not in _SWEEP_LRS:
        cfg = load_finetune_config(config, settings)
        _SWEEP_LRS[key] = (cfg.lrs, cfg.sweep.n_lrs, cfg.sweep.max_extensions if cfg.sweep.extend else 0)
    lrs, n_lrs, extra = _SWEEP_LRS[key]
    n = len(grid_lrs) or len(lrs) or n_lrs
    return n, extra if n >= 2 else 0


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


def tracker_settings(spec: GridSpec) -> list[str]:
    """The grid's ``log`` as every tracked job's settings; the wandb project defaults to the grid's name."""
    if spec.log is None or not (spec.log.wandb or spec.log.tensorboard):
        return []
    project = spec.log.wandb_project if spec.log.wandb_project != "overtrain" else spec.name
    wandb, tb = str(spec.log.wandb).lower(), str(spec.log.tensorboard).lower()
    return [f"log.wandb={wandb}", f"log.tensorboard={tb}", f"log.wandb_project={project}"]


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
    sweeps = [j for j in jobs if j.kind == "sweep"]
    extension = sum(j.info.get("extension_flops", 0.0) for j in sweeps)
    return {
        "grid": spec.name,
        "jobs": len(jobs),
        "by_kind": kinds,
        "flops": total,
        "gpu_hours": gpu_hours(total, spec.hardware),
        "hardware": to_dict(spec.hardware),
        # sweeps whose tuned LR lands at an end of their grid add LRs: at most this much more
        "sweep_lrs": sum(j.info.get("lrs", 0) for j in sweeps),
        "sweep_added_lrs_max": sum(j.info.get("max_added_lrs", 0) for j in sweeps),
        "sweep_extension_flops_max": extension,
        "sweep_extension_gpu_hours_max": gpu_hours(extension, spec.hardware),
        # the suite's members as resolved (suite.tokens as counts: the revision picked for each)
        "suite_members": [
            {"revision": m.name, "tokens": m.tokens, "requested": m.requested} for m in suite_members(spec, check=False)
        ]
        if spec.suite is not None
        else [],
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
    mm = [j.info["memory_gb"] for j in jobs if j.kind == "multimodal"]
    if mm:
        print(f"  multimodal: ~{max(mm):.1f} GB per job before activations (fp32 AdamW on the LM + the tower)")
    for m in s["suite_members"]:
        if m["requested"] is not None:
            print(
                f"  suite: {_fmt_tokens(m['requested'])} tokens -> {m['revision']} ({m['tokens'] / m['requested'] - 1:+.2%})"
            )
    if s["sweep_added_lrs_max"]:
        print(
            f"  sweeps: {s['sweep_lrs']} fine-tuning runs on their LR grids, plus up to {s['sweep_added_lrs_max']} "
            f"where a tuned LR lands at a grid's end (sweep.extend): up to {s['sweep_extension_flops_max']:.3e} "
            f"FLOPs = {s['sweep_extension_gpu_hours_max']:.1f} GPU-hours more, not in the total"
        )
