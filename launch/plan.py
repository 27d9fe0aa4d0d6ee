"""A grid's jobs: each an ``overtrain`` command line with dependencies, in a valid order, and its compute.

    prepare  ->  pretrain (model x budget x pretrain axes)  ->  sweep (x task x finetune axes)
                                                           \\->  perturb (gammas x seeds)
                                                           \\->  lm-eval (every checkpoint)
                                                           \\->  sweep on intermediate checkpoints
    suite member (revision)  ->  instruct (x chat dataset x seed)->  lm-eval (every tuned model)
                                                                 \\->  alpaca-eval (``instruct.alpaca_eval``)
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
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.config import load_config, parse_count, to_dict
from ..core.errors import ConfigError
from ..core.jsonl import read_records
from ..core.keyvalue import format_setting
from ..core.memory import GB, USABLE, Setup, Shape, estimate, fits, hf_shape, olmo_shape, remedy
from ..core.model_spec import flops_per_token, load_model_spec
from ..core.paths import expand_path
from ..data.tasks import load_task
from .spec import (
    GridSpec,
    HardwareSpec,
    config_path,
    prepare_settings,
    probe_budgets,
    probe_tasks,
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
    # the command's config as its builder loaded it from the settings it wrote (pretrain, instruct,
    # multimodal): what the memory plan and the Slurm batch fit read, so nothing parses argv back
    config: Any = None


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


def expand(spec: GridSpec) -> list[Job]:
    """All jobs of the grid, in a valid dependency order: each made by its stage's job builder."""
    root = Path(expand_path(spec.results_dir))
    jobs: list[Job] = [prepare_job(spec)] if spec.prepare is not None else []
    data_after = [j.id for j in jobs]

    pre = spec.pretrain
    pre_runs = [] if pre is None else _axis_product(seed_axes(pre.axes, pre.seeds))
    longest = max((parse_count(b) for b in pre.budgets), default=0) if pre else 0
    for model, budget, axes in itertools.product(pre.models if pre else [], pre.budgets if pre else [], pre_runs):
        jobs.append(pretrain_job(spec, root, model, parse_count(budget), axes, longest, data_after))
    pre_jobs = [j for j in jobs if j.kind == "pretrain"]

    if spec.finetune is not None:
        ft = spec.finetune
        ft_cfg = config_path(ft.config)
        probed_budgets, probed_tasks = set(probe_budgets(spec)), set(probe_tasks(spec))
        added = probe_seed_axes(spec, ft_cfg) if probed_tasks else {}
        probe_axes = _axis_product(added) if added else []  # the grid's own seeds may already be enough
        for pj in pre_jobs:
            mspec = load_model_spec(pj.info["model"])
            ckpts = [("final", pj.info["run_dir"])] + [
                (f"at{_fmt_tokens(t)}", f"{pj.info['run_dir']}@tokens={t}") for t in pj.info["marks"]
            ]
            ft_axes = [(a, False) for a in _axis_product(seed_axes(ft.axes, ft.seeds))]
            for (ck_name, ck), task in itertools.product(ckpts, ft.tasks):
                probed = ck_name == "final" and pj.info["tokens"] in probed_budgets and task in probed_tasks
                for axes, probe in ft_axes + ([(a, True) for a in probe_axes] if probed else []):
                    jobs.append(sweep_job(spec, root, ft_cfg, pj, ck_name, ck, task, axes, probe, mspec))

    if spec.perturb is not None and spec.perturb.gammas:
        jobs += [perturb_job(spec, root, pj, load_model_spec(pj.info["model"])) for pj in pre_jobs]

    if spec.lm_eval is not None and spec.lm_eval.tasks:
        for pj in pre_jobs:
            fwd = float(flops_per_token(load_model_spec(pj.info["model"]))) / 3 * spec.lm_eval.eval_tokens_estimate
            run_id = pj.id.split("/", 1)[1]
            for t in [None, *pj.info["marks"]]:
                lid = run_id if t is None else f"{run_id}_at{_fmt_tokens(t)}"
                ck = pj.info["run_dir"] if t is None else f"{pj.info['run_dir']}@tokens={t}"
                jobs.append(lm_eval_job(spec, root, lid, ck, [pj.id], fwd))

    if spec.suite is not None:
        jobs += suite_jobs(spec, root)

    jobs += [extra_job(spec, root, ej) for ej in spec.extra_jobs]

    track = tracker_settings(spec)  # one grid, one tracker project (lm-eval jobs write rows only)
    for j in jobs:
        if j.kind in ("pretrain", "sweep", "perturb"):
            j.argv += track

    if spec.report:
        jobs.append(report_job(root, jobs, track))
    plan_memory(spec, jobs)
    return toposort(jobs)


# ---------------------------------------------------------------------------------- job builders
# One per stage: the only place its job's `overtrain` command line is assembled (every value
# written by the codec, `core.keyvalue.format_setting`); the runner and the Slurm scripts only
# wrap it (`overtrain_command`).


def prepare_job(spec: GridSpec) -> Job:
    """``prepare-data`` into the grid's data dir (``launch.spec.prepare_settings``)."""
    return Job("prepare", "prepare", ["prepare-data", *prepare_settings(spec)], [], grid_data_dir(spec) / "meta.json")


def pretrain_job(
    spec: GridSpec, root: Path, model: str, tokens: int, axes: dict, longest: int, after: list[str]
) -> Job:
    """Pre-training of ``model`` for ``tokens`` with the pretrain ``axes`` (``longest``: the grid's
    largest budget, for ``intermediate_runs: longest``)."""
    from ..train.pretrain_plan import PretrainConfig  # heavy: torch; only for grids with pre-training, never for --help

    pre = spec.pretrain
    tag = "".join(f"_{_slug(k.split('.')[-1])}-{_slug(v)}" for k, v in axes.items())
    run_id = f"{model}_{_fmt_tokens(tokens)}{tag}"
    run_dir = root / "pretrain" / run_id
    # Token marks come from the grid alone (a base config's own marks would not be swept), so a
    # run without marks gets `checkpoint.at_tokens=[]`; `intermediate_runs: longest` keeps them
    # to each model's longest run (the Amuro & Char comparison: one run's checkpoints before
    # their LR decayed, beside the fully decayed runs of each budget).
    marked = pre.intermediate_runs == "all" or tokens == longest
    marks = [parse_count(t) for t in pre.intermediate_tokens if parse_count(t) < tokens] if marked else []
    settings = {"model": model, "budget_tokens": tokens, "run_dir": run_dir, "data.dir": grid_data_dir(spec)}
    argv = ["pretrain", config_path(pre.config), *_settings({**settings, "checkpoint.at_tokens": marks})]
    argv += list(pre.overrides) + _settings(axes)
    config = load_config(PretrainConfig, argv[1], argv[2:], kind="pretrain")
    return Job(
        f"pretrain/{run_id}",
        "pretrain",
        argv,
        list(after),
        run_dir / "summary.json",
        flops=float(flops_per_token(load_model_spec(model))) * tokens,
        nproc=pre.gpus,
        info={"model": model, "tokens": tokens, "run_dir": str(run_dir), "axes": axes, "marks": marks},
        config=config,
    )


def sweep_job(spec, root, ft_cfg, pj, ck_name, ck, task, axes, probe, mspec) -> Job:
    """One sweep of checkpoint ``ck`` on ``task`` with the finetune ``axes`` (``probe``: a noise-probe sweep)."""
    ft = spec.finetune
    tag = "".join(f"_{_slug(k.split('.')[-1])}-{_slug(v)}" for k, v in axes.items()) + ("_probe" if probe else "")
    sid = f"{pj.id.split('/', 1)[1]}_{ck_name}_{_slug(Path(task).stem)}{tag}"
    sdir = root / "sweeps" / sid
    argv = ["sweep", ft_cfg, *_settings({"checkpoint": ck, "task": task, "run_dir": sdir, "c4": grid_data_dir(spec)})]
    argv += _settings({"lrs": ft.lrs}) if ft.lrs else []
    tags = {**seed_tags(pj.info["axes"]), **axes, **({"noise_probe": True} if probe else {})}
    settings = list(ft.overrides) + _settings(axes)
    argv += settings + _tags(tags)
    n_lrs, extra_lrs = sweep_lr_counts(ft_cfg, ft.lrs, settings)
    per_lr = float(flops_per_token(mspec)) * ft.train_tokens_estimate
    return Job(
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
            "noise_probe": probe,
        },
    )


def perturb_job(spec: GridSpec, root: Path, pj: Job, mspec) -> Job:
    """Progressive sensitivity of pre-training run ``pj``'s final checkpoint."""
    pt = spec.perturb
    pdir = root / "perturb" / pj.id.split("/", 1)[1]
    settings = {"gammas": pt.gammas, "seeds": pt.seeds, "c4": grid_data_dir(spec), "val_tokens": pt.val_tokens}
    argv = ["perturb", pj.info["run_dir"], *_settings({**settings, "results": pdir / "results.jsonl"})]
    argv += _tags(seed_tags(pj.info["axes"]))
    fwd = float(flops_per_token(mspec)) / 3 * pt.val_tokens * (len(pt.gammas) * len(pt.seeds) + 1)
    return Job(f"perturb/{pdir.name}", "perturb", argv, [pj.id], root / "state" / f"perturb__{pdir.name}.done",
               flops=fwd, mark_done=True)  # fmt: skip


def lm_eval_job(spec: GridSpec, root: Path, lid: str, model: str, after: list[str], flops: float, member=None) -> Job:
    """lm-eval of ``model`` (a checkpoint, a tuned model, or suite ``member`` itself: its suite,
    revision and token count travel with the rows) into ``lm_eval/LID/results.jsonl``."""
    le = spec.lm_eval
    argv = ["lm-eval", model, *_settings({"tasks": le.tasks, "results": root / "lm_eval" / lid / "results.jsonl"})]
    argv += le.args + (_settings({"member": True, "pretrain_tokens": member.tokens}) if member is not None else [])
    done = root / "state" / f"lm_eval__{lid}.done"
    return Job(f"lm-eval/{lid}", "lm-eval", argv, list(after), done, flops=flops, mark_done=True)


def instruct_job(spec: GridSpec, root: Path, m, tid: str, name: str, data: str, seed: int | None, n: float) -> Job:
    """Instruction tuning of suite member ``m`` on chat dataset ``name`` (``seed`` None: SFT's own)."""
    # heavy: torch, imported only when jobs are planned, never for `overtrain grid --help`
    from ..finetune.instruct.sft import SFTConfig

    ins = spec.instruct
    out = root / "instruct" / tid
    settings = {"data": expand_path(data), "data_name": name, "out": out, "tokens": m.tokens}
    argv = ["sft", m.ref, *_settings(settings), *ins.args, *(_settings({"seed": seed}) if seed is not None else [])]
    argv += _settings({"results": root / "instruct" / "results.jsonl"})
    return Job(
        f"instruct/{tid}",
        "instruct",
        argv,
        [],
        out / "overtrain_suite.json",
        flops=6 * n * ins.train_tokens_estimate,
        nproc=ins.gpus,
        info={"member": m.name, "ref": m.ref, "tokens": m.tokens, "data": name, "out": str(out), "seed": seed or 0},
        config=load_config(SFTConfig, None, argv[2:]),
    )


def alpaca_eval_job(spec: GridSpec, root: Path, tid: str, model: str, n: float) -> Job:
    """AlpacaEval of the tuned model ``model`` (instruct job ``tid``): generation ~ 2N per prompt and
    answer token; the judge's calls (one per instruction) are an API's cost, or a local judge's, not counted."""
    ae = spec.instruct.alpaca_eval
    out = root / "alpaca_eval" / tid
    settings = {"judge": expand_path(ae.judge), "instructions": expand_path(ae.instructions), "out": out}
    argv = ["alpaca-eval", model, *_settings(settings), *ae.args, *_settings({"results": out / "results.jsonl"})]
    info = {"judge": ae.judge, "judge_calls": ae.n_instructions, "out": str(out)}
    flops = 2 * n * ae.n_instructions * ae.tokens_estimate
    done = root / "state" / f"alpaca_eval__{tid}.done"
    return Job(f"alpaca-eval/{tid}", "alpaca-eval", argv, [f"instruct/{tid}"], done, flops, info=info, mark_done=True)


def multimodal_job(spec: GridSpec, root: Path, m, n: float) -> Job:
    """LLaVA tuning of member ``m`` (N = n parameters, tower Nv): stage 1 ~ (4N + 2Nv) per token (the
    frozen LM still backpropagates to the projector, no weight gradients), stage 2 ~ (6N + 2Nv);
    memory before activations: fp32 AdamW on the LM (16 bytes/param) + the frozen fp32 tower (4); with
    the member's shape known, ``plan_memory`` replaces it by the whole estimate (``multimodal_memory``)."""
    # heavy: torch, imported only when jobs are planned, never for `overtrain grid --help`
    from ..finetune.instruct.multimodal import MultimodalConfig

    mm = spec.multimodal
    nv = float(parse_count(mm.vision_params))
    out = root / "multimodal" / _slug(m.name)
    data = {k: expand_path(getattr(mm, k)) for k in ("captions", "instruct", "vqa")}
    images = {k: expand_path(getattr(mm, k)) for k in ("caption_images", "instruct_images") if getattr(mm, k)}
    argv = ["multimodal", m.ref, *_settings({"vision": mm.vision, **data, "data_name": mm.name, **images})]
    argv += [*_settings({"out": out, "tokens": m.tokens}), *mm.args]
    argv += _settings({"results": root / "multimodal" / "results.jsonl"})
    flops = (4 * n + 2 * nv) * mm.stage1_tokens_estimate + (6 * n + 2 * nv) * mm.stage2_tokens_estimate
    memory = (16 * n + 4 * nv) / 1e9
    info = {"member": m.name, "ref": m.ref, "tokens": m.tokens, "out": str(out), "memory_gb": memory,
            "vision_params": nv, "memory_before_activations": True}  # fmt: skip
    config = load_config(MultimodalConfig, None, argv[2:])
    return Job(f"multimodal/{_slug(m.name)}", "multimodal", argv, [], out / "overtrain_suite.json", flops, info=info,
               config=config)  # fmt: skip


def extra_job(spec: GridSpec, root: Path, ej) -> Job:
    """One of the grid's ``extra_jobs``: its own command as written."""
    done = results_path(spec, ej.done) if ej.done else root / "state" / f"{_slug(ej.id)}.done"
    return Job(ej.id, "extra", list(ej.command), list(ej.after), done, mark_done=not ej.done)


def report_job(root: Path, jobs: list[Job], track: list[str]) -> Job:
    """The report over the whole results dir, after every other job (never marked done: always rerun)."""
    argv = ["report", str(root), *_settings({"out": root / "report"}), *track]
    return Job("report", "report", argv, [j.id for j in jobs], None)


def overtrain_command(argv: list[str], nproc: int = 1, python: str = sys.executable) -> list[str]:
    """A job's command line on one node: ``python -m overtrain ARGV``, or under torchrun
    (``--standalone``) with ``nproc`` processes. The runner runs it; a Slurm script runs it in a step."""
    if nproc > 1:
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "overtrain",
            *argv,
        ]
    return [python, "-m", "overtrain", *argv]


def _settings(values: dict[str, Any]) -> list[str]:
    """``key=value`` settings, written by the codec (``core.keyvalue.format_setting``)."""
    return [format_setting(k, v) for k, v in values.items()]


def _tags(tags: dict[str, Any]) -> list[str]:
    """``tags.KEY=value`` settings (a dotted axis key's dots become underscores: one tag, not a nesting)."""
    return _settings({f"tags.{k.replace('.', '_')}": v for k, v in tags.items()})


def member_architecture(spec: GridSpec, ref: str) -> dict:
    """A suite member's config.json shape: ``suite.architecture``, else a local member's config.json;
    {} where unknown offline (a hub member without ``suite.architecture``)."""
    config = dict(spec.suite.architecture)
    local = Path(ref) / "config.json"
    if not config and local.is_file():
        config = json.loads(local.read_text())
    return config


def job_memory(spec: GridSpec, job: Job):
    """(``core.memory.Shape``, ``Setup``, the settings' names) of a pretrain or instruct job's per-GPU
    memory, from the config its builder loaded (``Job.config``); None where the model's shape is unknown
    offline (a hub member without ``suite.architecture``)."""
    gpus = max(job.nproc, 1)  # 0 = the runner's GPUs: plan as 1 (ddp's memory does not depend on it)
    if job.kind == "pretrain":
        # heavy: torch, imported only when jobs are planned, never for `overtrain grid --help`
        from ..train.pretrain_plan import MEMORY_SETTINGS, memory_setup, resolve_spec

        mspec = resolve_spec(job.config, job.id)
        cfg = replace(job.config, seq_len=job.config.seq_len or mspec.max_sequence_length)
        return olmo_shape(mspec), memory_setup(cfg, gpus), MEMORY_SETTINGS
    # heavy: torch, imported only when jobs are planned, never for `overtrain grid --help`
    from ..finetune.instruct.sft import MEMORY_SETTINGS, memory_setup

    config = member_architecture(spec, job.info["ref"])
    if not config:
        return None
    params = parse_count(spec.suite.params) if spec.suite.params else None
    return hf_shape(config, params), memory_setup(config, job.config, gpus), MEMORY_SETTINGS


def multimodal_memory(spec: GridSpec, job: Job):
    """(``Shape`` of the member, ``Setup`` of stage 2, the tower's bytes) of a multimodal job; None where
    the member's shape is unknown offline. Stage 2 is the peak (stage 1 trains only the projector): the
    member trained as an SFT run on one GPU (fp32 AdamW, bf16 autocast unless ``precision=fp32``; no
    sharding, no activation checkpointing), records of ``max_seq_len`` tokens with the image's included,
    plus the frozen fp32 tower (4 Nv; its forward keeps no activations for a backward)."""
    config = member_architecture(spec, job.info["ref"])
    if not config:
        return None
    cfg = job.config
    seq = min(cfg.max_seq_len, config.get("max_position_embeddings") or cfg.max_seq_len)
    params = parse_count(spec.suite.params) if spec.suite.params else None
    setup = Setup(cfg.micro_batch_size, seq, 1, bf16=cfg.precision != "fp32")
    return hf_shape(config, params), setup, 4 * job.info["vision_params"]


def multimodal_fix(shape: Shape, setup: Setup, tower: float, limit: float) -> str:
    """The micro-batch that makes a multimodal job fit ``limit`` GB, else why nothing here does."""
    micro = setup.micro_batch_size // 2
    while micro >= 1:
        if estimate(shape, replace(setup, micro_batch_size=micro)).total + tower <= USABLE * limit * GB:
            return f"micro_batch_size={micro}"
        micro //= 2
    least = (estimate(shape, replace(setup, micro_batch_size=1)).total + tower) / GB
    return f"nothing in multimodal.args: it runs on one GPU without sharding and needs ~{least:.1f} GB at micro_batch_size=1"


def plan_memory(spec: GridSpec, jobs: list[Job]) -> None:
    """Each pretrain / instruct / multimodal job's per-GPU memory estimate into ``info["memory_gb"]``;
    with ``hardware.memory_gb``, every pretrain / instruct job checks it again itself (``memory_gb=``),
    and a job that will not fit is refused here, before any submission, naming the setting that makes
    it fit. A multimodal job whose member's shape is unknown keeps its estimate before activations
    (``multimodal_job``), a lower bound: refused when even that does not fit."""
    limit = spec.hardware.memory_gb
    refused = []
    for job in jobs:
        if job.kind == "multimodal":
            refused += _plan_multimodal_memory(spec, job, limit)
            continue
        if job.kind not in ("pretrain", "instruct"):
            continue
        found = job_memory(spec, job)
        if found is None:
            job.info["memory_gb"] = None
            continue
        shape, setup, names = found
        est = estimate(shape, setup)
        job.info["memory_gb"] = est.total / GB
        job.info["memory"] = est.describe()
        if limit is None:
            continue
        job.argv.append(f"memory_gb={limit:g}")
        job.config.memory_gb = limit
        if not fits(shape, setup, limit):
            stage = job.kind if job.kind == "pretrain" else "instruct"
            names = {**names, "gpus": f"{stage}.gpus"}
            where = "pretrain.overrides" if stage == "pretrain" else "instruct.args"
            fix = remedy(shape, setup, limit, names)
            refused.append(f"{job.id}: ~{est.describe()} per GPU; to fit: {fix} (settings of {where})")
    if refused:
        more = f"\n  ... and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise ConfigError(
            f"grid {spec.name}: {len(refused)} job(s) need more than 90% of hardware.memory_gb={limit:g} per GPU "
            f"({spec.hardware.name}):\n  " + "\n  ".join(refused[:5]) + more
        )


def _plan_multimodal_memory(spec: GridSpec, job: Job, limit: float | None) -> list[str]:
    """``plan_memory`` for one multimodal job: its refusal, if any."""
    found = multimodal_memory(spec, job)
    if found is None:  # the lower bound multimodal_job wrote
        low = job.info["memory_gb"]
        if limit is None or low <= USABLE * limit:
            return []
        return [
            f"{job.id}: at least ~{low:.1f} GB per GPU before activations (fp32 AdamW on the LM + the tower); "
            "to fit: nothing in multimodal.args (one GPU, no sharding)"
        ]
    shape, setup, tower = found
    est = estimate(shape, setup)
    est = replace(est, weights=est.weights + tower)
    job.info.update(memory_gb=est.total / GB, memory=est.describe(), memory_before_activations=False)
    if limit is None or est.total <= USABLE * limit * GB:
        return []
    fix = multimodal_fix(shape, setup, tower, limit)
    where = "" if fix.startswith("nothing") else " (settings of multimodal.args)"
    return [f"{job.id}: ~{est.describe()} per GPU (weights with the tower); to fit: {fix}{where}"]


def suite_params(spec: GridSpec) -> float:
    """The suite's parameter count: ``suite.params``, else counted from a local member's config.json
    (embeddings + per layer 4 d^2 attention + 3 d f gated MLP; the compute estimate needs no more)."""
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
        seeds = ins.seeds if ins else [0]
        for (name, data), seed in itertools.product((ins.datasets if ins else {}).items(), seeds):
            # the default single seed 0 keeps the ids (and output dirs) of grids from before instruct.seeds
            tid = f"{_slug(m.name)}_{_slug(name)}" + ("" if seeds == [0] else f"_seed-{seed}")
            tuned = instruct_job(spec, root, m, tid, name, data, None if seeds == [0] else seed, n)
            jobs.append(tuned)
            evals.append((tid, tuned.info["out"], [tuned.id]))
            if ins.alpaca_eval is not None:
                jobs.append(alpaca_eval_job(spec, root, tid, tuned.info["out"], n))
        if spec.multimodal is not None:
            jobs.append(multimodal_job(spec, root, m, n))
        if le is None or not le.tasks:
            continue
        for lid, model, after in evals:  # `after` empty: the member itself
            jobs.append(
                lm_eval_job(spec, root, lid, model, after, 2 * n * le.eval_tokens_estimate, None if after else m)
            )
    return jobs


def probe_seed_axes(spec: GridSpec, ft_cfg: str) -> dict[str, list]:
    """The finetune axes of the noise probe's sweeps: the grid's own axes, with ``seed`` the seeds
    the probe adds (the smallest seeds >= 0 not already the grid's: ``finetune.seeds``, the axis
    ``seed``, else the finetune config's ``seed``) so that each probed cell has ``noise_probe.seeds``."""
    ft = spec.finetune
    own = list(ft.seeds) or list(ft.axes.get("seed", [])) or [finetune_config(ft_cfg, ft.overrides).seed]
    want = spec.finetune.noise_probe.seeds - len(own)
    added = [s for s in range(len(own) + want) if s not in own][: max(want, 0)]
    return {**{k: v for k, v in ft.axes.items() if k != "seed"}, "seed": added} if added else {}


def finetune_config(config: str, settings: list[str]):
    """The finetune config file ``config`` with the key=value ``settings`` (``finetune.finetune_config``)."""
    # heavy: numpy, imported only when jobs are planned, never for `overtrain grid --help`
    from ..finetune.finetune_config import load_finetune_config

    return load_finetune_config(config, settings)


_SWEEP_LRS: dict = {}


def sweep_lr_counts(config: str, grid_lrs: list, settings: list[str]) -> tuple[int, int]:
    """(LRs of a sweep's grid, LRs it may add past the grid's end) for the finetune ``config`` with
    ``settings`` (the job's key=value); the grid's own ``lrs`` win over the config's."""
    key = (config, tuple(settings))
    if key not in _SWEEP_LRS:
        cfg = finetune_config(config, settings)
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
    return _settings(
        {"log.wandb": spec.log.wandb, "log.tensorboard": spec.log.tensorboard, "log.wandb_project": project}
    )


def _n_examples(spec: GridSpec, task: str) -> tuple[int | None, str]:
    """A task's test examples for the power figure: ``finetune.noise.n_examples``, else the finetune
    config's ``max_examples.test`` cap, else the test split counted (loads it); None when unreadable."""
    ft = spec.finetune
    name = Path(task).stem
    if name in ft.noise.n_examples:
        return ft.noise.n_examples[name], "given"
    cap = finetune_config(config_path(ft.config), ft.overrides).max_examples.get("test")
    if cap:
        return cap, "max_examples.test"
    try:
        return len(load_task(task).examples("test")), "test split"
    except Exception:  # noqa: BLE001 - a hub task not fetched here: the figure is left out, not the plan
        return None, "unknown"


def measured_run_sd(spec: GridSpec) -> dict[str, tuple[float, int]]:
    """Per task: the run-to-run sd of the tuned-LR test log perplexity measured by an earlier run of
    this grid (its results dir's sweeps: a noise probe's or several seeds' rows), pooled over the
    cells (checkpoint, task, non-seed tags) with 2 or more rows, with its degrees of freedom."""
    # heavy: numpy (the report's statistics), imported only when jobs are planned, never for `overtrain grid --help`
    from ..evaluate.report.data import REPLICATE_TAGS  # the report's own "another run of this cell"

    sweeps = Path(expand_path(spec.results_dir)) / "sweeps"
    files = sorted(sweeps.glob("*/results.jsonl")) if sweeps.is_dir() else []
    cells: dict[tuple, list[float]] = {}
    for r in read_records(files, warn=False) if files else []:
        ppl = r.get("test_id_ppl")
        if r.get("selected") and isinstance(ppl, (int, float)) and ppl > 0 and math.isfinite(ppl):
            tags = {k: v for k, v in (r.get("tags") or {}).items() if k not in REPLICATE_TAGS}
            key = (str(r.get("task")), r.get("checkpoint_sha256"), repr(sorted(tags.items())))
            cells.setdefault(key, []).append(math.log(ppl))
    ss: dict[str, list[float]] = {}
    for (task, *_), ys in cells.items():
        if len(ys) >= 2:
            mean = sum(ys) / len(ys)
            acc = ss.setdefault(task, [0.0, 0])
            acc[0] += sum((y - mean) ** 2 for y in ys)
            acc[1] += len(ys) - 1
    return {task: (math.sqrt(total / df), df) for task, (total, df) in ss.items()}


def detectable_worsening(spec: GridSpec, power: float = 0.8, alpha: float = 0.05) -> dict[str, dict]:
    """Per task: the smallest worsening of a tuned-LR curve the planned study detects at ``power``:
    ``evaluate.report.stats.detectable_worsening``, the figure the report states for the same test
    (one-sided, Holm's first step over the task's family, Satterthwaite's t reference), from the
    grid's noise level (``finetune.noise``), seeds and noise probe; the largest over a curve's
    comparisons (the largest budget against each earlier one), as the report's.

    Model (the report calibration's, ``report.stats.simulate``): one run's point = true curve + run
    shift (sd ``run_sd``) + the mean over n examples of their run-specific deviations; the rest of an
    example's score is shared by budgets (``example_corr``) and cancels in a paired difference. So
    one run's variance about the cell mean is sigma^2 = run_sd^2 + (1 - rho) example_sd^2 / n, what
    the report's pooled run variance estimates (an earlier run's measured sd, ``measured_run_sd``,
    is that whole sigma), and comparing budgets a, b with S_a, S_b runs, Var(d) = (1/S_a + 1/S_b) sigma^2.

    Runs per cell S = pre-training seeds x fine-tuning seeds; a probed cell (``finetune.noise_probe``)
    has pre-training seeds x probe seeds. Family: the report's turn tests of one task, (budgets - 1)
    per curve, a curve per model, metric (ID and C4) and non-seed axis value. The run variance's
    degrees of freedom, as the report pools them (``report.data.pool_families``): every fixed-LR cell
    of the task, all models, budgets and LRs of the sweep's grid, S - 1 each (LRs a sweep adds past
    its grid's end not counted: a lower bound); none: not measurable (inf, the report cannot tell)."""
    # heavy: numpy (the report's statistics), imported only when jobs are planned, never for `overtrain grid --help`
    from ..evaluate.report.stats import detectable_worsening as report_detectable

    pre, ft = spec.pretrain, spec.finetune
    if ft is None or pre is None:
        return {}
    noise = ft.noise
    measured = measured_run_sd(spec)
    pre_seeds = len(pre.seeds) or len(pre.axes.get("seed", [])) or 1
    ft_seeds = len(ft.seeds) or len(ft.axes.get("seed", [])) or 1
    combos = 1
    for axes in (pre.axes, ft.axes):
        for k, v in axes.items():
            combos *= len(v) if k != "seed" else 1
    runs, models, budgets = pre_seeds * ft_seeds, len(pre.models), len({parse_count(b) for b in pre.budgets})
    tests = max(budgets - 1, 1) * models * 2 * combos
    n_lrs, _ = sweep_lr_counts(config_path(ft.config), ft.lrs, list(ft.overrides))
    probed_at = set(probe_budgets(spec)) if ft.noise_probe else set()
    probed_runs = pre_seeds * max(ft.noise_probe.seeds, ft_seeds) if ft.noise_probe else runs
    probe_tasks_ = set(probe_tasks(spec))
    out = {}
    for task in ft.tasks:
        in_order = sorted({parse_count(b) for b in pre.budgets})  # the last is the largest budget
        per_budget = [probed_runs if task in probe_tasks_ and b in probed_at else runs for b in in_order]
        df = models * combos * n_lrs * sum(r - 1 for r in per_budget)
        n, n_from = _n_examples(spec, task)
        run_sd, sd_df = measured.get(Path(task).stem, (noise.run_sd, None))
        mde = None
        if n is not None and df == 0:
            mde = math.inf  # one run per point, no probe: the report cannot tell
        elif n is not None:
            sigma2 = run_sd**2 if sd_df is not None else run_sd**2 + (1 - noise.example_corr) * noise.example_sd**2 / n
            last = per_budget[-1]
            mde = max(
                math.expm1(report_detectable(0.0, (1 / last + 1 / r) * sigma2, df, tests, alpha, power))
                for r in per_budget[:-1] or [last]
            )
        out[Path(task).stem] = {"worsening": mde, "n_examples": n, "n_from": n_from, "runs_per_cell": runs,
                                "run_df": df, "family_size": tests, "run_sd": run_sd,
                                "run_sd_from": "finetune.noise" if sd_df is None else f"measured, {sd_df} df"}  # fmt: skip
    return out


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
    probes = [j for j in sweeps if j.info.get("noise_probe")]
    probe_flops = sum(j.flops for j in probes)
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
        # the noise probe's sweeps (finetune.noise_probe): in the sweeps' count and the total
        "probe_sweeps": len(probes),
        "probe_lrs": sum(j.info.get("lrs", 0) for j in probes),
        "probe_flops": probe_flops,
        "probe_gpu_hours": gpu_hours(probe_flops, spec.hardware),
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
            mem = j.info.get("memory_gb")
            mem = "" if "memory_gb" not in j.info else ("  ? GB" if mem is None else f"{mem:>5.1f} GB")
            print(
                f"{j.id:<{w}}  {status:<7} {j.flops:>9.2e} {gpu_hours(j.flops, hw):>8.2f}  {after}{'  ' + mem if mem else ''}"
            )
        print()
    print(f"grid '{spec.name}': {s['jobs']} jobs")
    for kind, k in s["by_kind"].items():
        print(f"  {kind:<9} {k['jobs']:>5} jobs  {k['flops']:.3e} FLOPs  {k['gpu_hours']:>10.1f} GPU-hours")
    print(
        f"  total: {s['flops']:.3e} FLOPs = {s['gpu_hours']:.1f} GPU-hours on {hw.name} "
        f"({hw.peak_tflops:g} TFLOP/s peak at {hw.mfu:.0%} MFU)"
    )
    mm = [j.info for j in jobs if j.kind == "multimodal"]
    if mm:
        low = any(i["memory_before_activations"] for i in mm)
        what = (
            "before activations (fp32 AdamW on the LM + the tower)" if low else "(stage 2: the LM trained, the tower)"
        )
        print(f"  multimodal: ~{max(i['memory_gb'] for i in mm):.1f} GB per job {what}")
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
    probe = spec.finetune.noise_probe if spec.finetune else None
    if probe is not None:
        where = ", ".join(_fmt_tokens(b) for b in probe_budgets(spec))
        tasks = ", ".join(probe.tasks) if probe.tasks else "every task"
        if s["probe_sweeps"]:
            print(
                f"  noise probe: {s['probe_sweeps']} of the sweeps ({s['probe_lrs']} fine-tuning runs) add seeds up to "
                f"{probe.seeds} per cell at {where} on {tasks}: {s['probe_flops']:.3e} FLOPs = "
                f"{s['probe_gpu_hours']:.1f} GPU-hours, in the total"
            )
        else:
            print(f"  noise probe: no sweeps added (the grid's own seeds already give {probe.seeds} or more per cell)")
    print_power(spec)


def print_power(spec: GridSpec) -> None:
    """The plan's smallest detectable worsening per task (``detectable_worsening``)."""
    found = detectable_worsening(spec)
    if not found:
        return
    nl = spec.finetune.noise
    one = next(iter(found.values()))
    print(
        f"  smallest worsening of a tuned-LR curve detectable at 80% power (one-sided, alpha 0.05, Holm over "
        f"{one['family_size']} tests per task; {one['runs_per_cell']} run(s) per cell; noise: run sd {nl.run_sd:g}, "
        f"example sd {nl.example_sd:g}, example corr {nl.example_corr:g} between budgets, finetune.noise):"
    )
    for task, f in found.items():
        w, n = f["worsening"], f"{f['n_examples']} examples ({f['n_from']})" if f["n_examples"] else "examples unknown"
        if w is None:
            text = "unknown: give finetune.noise.n_examples." + task
        elif math.isinf(w):
            text = "none: one run per point and no noise probe, run-to-run variation not measured (cannot tell)"
        else:
            text = f"{w:.1%}"
        sd = "" if f["run_sd_from"] == "finetune.noise" else f", run sd {f['run_sd']:.3g} ({f['run_sd_from']})"
        print(f"    {task:<16} {text}  [{n}, run variance on {f['run_df']} df{sd}]")
