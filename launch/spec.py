"""A grid file (``configs/grids/*.yaml``) as a typed spec: the stages of a study, checked before any job.

``load_grid`` reads the YAML with dotted overrides and checks every name it refers to (models,
tasks, budgets, stage configs, prepare-data settings), so a typo fails before a job starts.
``claim_results_dir`` records the grid in ``RESULTS_DIR/grid.json`` (with the overrides it was
loaded with, and the suite's members as resolved: ``suite.tokens`` as counts, the nearest revision
to each from the hub's branch list or a local mirror's folders, ``resolve_suite_tokens``) and
refuses a results dir made by a different grid (its fingerprint: the spec without results dir,
report switch and hardware); ``recorded_grid`` reads the overrides back, so the Slurm path's later
commands (``submit.sh``, ``grid status``) act on the grid the user planned.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..core.atomic import atomic_write_text
from ..core.config import config_digest, load_config, parse_count, to_dict
from ..core.errors import ConfigError
from ..core.keyvalue import format_setting, merge_settings
from ..core.model_spec import load_model_spec
from ..core.paths import CONFIG_ROOT, expand_path
from ..core.suite import (
    SuiteMember,
    check_loadable,
    format_count,
    list_revisions,
    nearest_revisions,
    resolve_member,
    tokens_from_revision,
)
from ..core.tracker import TrackConfig, check_trackers
from ..data.tasks import list_tasks


@dataclass
class PrepareSpec:
    train: list[str] = field(default_factory=list)  # local files/globs; empty -> use the hub
    val: list[str] = field(default_factory=list)  # validation files/globs; empty -> hold-out or the hub's split
    out: str = "data/c4"  # relative to the results dir unless absolute
    args: list[str] = field(default_factory=list)  # extra prepare-data settings, e.g. [workers=4, max_docs=2M]


@dataclass
class PretrainStage:
    config: str = "configs/pretrain/demo.yaml"  # the pretrain config every run starts from
    models: list[str] = field(default_factory=lambda: ["tiny"])  # names in configs/models/ (or YAML paths)
    budgets: list[str] = field(default_factory=lambda: ["100K"])  # token budgets, one fully decayed run each
    seeds: list[int] = field(default_factory=list)  # a run per seed (init and data order; rows' tag pretrain_seed)
    axes: dict[str, list] = field(default_factory=dict)  # dotted pretrain key -> values
    overrides: list[str] = field(default_factory=list)  # fixed key=value for every run
    gpus: int = 0  # processes per pre-training run (torchrun); 0 = the runner's gpus=
    intermediate_tokens: list[str] = field(default_factory=list)  # also fine-tune these (not decayed)
    # which runs save and fine-tune the intermediate_tokens checkpoints: every run longer than a mark,
    # or only each model's longest run (Amuro & Char: the checkpoints of one long run)
    intermediate_runs: Literal["all", "longest"] = "all"


@dataclass
class NoiseProbe:
    """Extra fine-tuning seeds at a few cells, so a one-seed study measures its run-to-run variation.

    At every final checkpoint of the probed ``budgets`` (each model, each pre-training run), every
    probed task is swept again with further fine-tuning seeds until the cell has ``seeds`` sweeps
    (the grid's own seeds count). Each probe sweep is an ordinary sweep (the whole LR grid, its own
    tuned LR: the spread then includes the LR choice) whose rows carry ``tags.seed`` and
    ``tags.noise_probe=true``, so the report can pool the run variance over them and apply it to
    every cell of that model and task."""

    seeds: int = 3  # fine-tuning seeds at each probed cell, the grid's own included (>= 2)
    budgets: list[str] = field(
        default_factory=lambda: ["first", "last"]
    )  # first | last | a pretrain.budgets token count
    tasks: list[str] = field(default_factory=list)  # probed tasks (of finetune.tasks); empty: every task

    def validate(self) -> None:
        if self.seeds < 2:
            raise ValueError(
                f"noise_probe.seeds={self.seeds}: expected >= 2 (one seed measures no run-to-run variation)"
            )
        if not self.budgets:
            raise ValueError("noise_probe.budgets: empty (e.g. [first, last])")


@dataclass
class NoiseLevel:
    """The noise a planned study expects, for ``grid plan``'s smallest detectable worsening
    (``evaluate.report.stats.detectable_worsening``), in log-perplexity units. The defaults are OURS (the report calibration's
    figures, ``evaluate.report.stats``), not measured: an earlier run's noise probe replaces ``run_sd``."""

    run_sd: float = 0.01  # sd of a whole fine-tuning run's shift of a curve point (ours: ~1% in perplexity)
    example_sd: float = 0.3  # sd of one example's score (per-example NLL) around its point (ours)
    example_corr: float = 0.89  # correlation of one example's scores at two budgets (ours: 1 - (0.1/0.3)^2)
    n_examples: dict[str, int] = field(
        default_factory=dict
    )  # task -> test examples (default: max_examples.test, else 1000)

    def validate(self) -> None:
        if self.run_sd < 0 or self.example_sd < 0:
            raise ValueError("noise.run_sd and noise.example_sd must be >= 0")
        if not -1.0 <= self.example_corr < 1.0:
            raise ValueError(f"noise.example_corr={self.example_corr}: expected in [-1, 1)")
        bad = {k: v for k, v in self.n_examples.items() if v < 1}
        if bad:
            raise ValueError(f"noise.n_examples: {bad}: expected >= 1")


@dataclass
class FinetuneStage:
    config: str = "configs/finetune/demo.yaml"  # the finetune config every sweep starts from
    tasks: list[str] = field(default_factory=lambda: ["rte"])  # names in configs/tasks/ (or YAML paths)
    lrs: list[float] = field(default_factory=list)  # empty -> the sweep's default grid per task
    seeds: list[int] = field(default_factory=list)  # a sweep per seed (batch order; rows' seed); empty: the config's
    axes: dict[str, list] = field(default_factory=dict)  # dotted finetune key -> values
    overrides: list[str] = field(default_factory=list)  # fixed key=value for every sweep
    train_tokens_estimate: int = 2_000_000  # per (task, lr) run, for the compute estimate only
    noise_probe: NoiseProbe | None = None  # extra seeds at a few cells: the run-to-run variation (null: none)
    noise: NoiseLevel = field(default_factory=NoiseLevel)  # for the plan's detectable worsening only


@dataclass
class PerturbStage:
    gammas: list[float] = field(default_factory=list)  # empty -> no perturbation jobs
    seeds: list[int] = field(default_factory=lambda: [0])  # noise seeds
    val_tokens: int = 65536  # predicted C4 validation tokens per evaluation


@dataclass
class LmEvalStage:
    tasks: list[str] = field(default_factory=list)  # lm-eval task names or task YAML paths (`overtrain lm-eval`)
    args: list[str] = field(default_factory=list)  # further lm-eval settings, e.g. [num_fewshot=5, limit=500]
    eval_tokens_estimate: int = 10_000_000  # tokens scored per checkpoint, for the compute estimate only


@dataclass
class SuiteStage:
    """A public (or local) checkpoint suite: one model's checkpoints at several pre-training token counts."""

    model: str = ""  # hub repo id (e.g. allenai/OLMo-1B-hf) or a local folder with one transformers dir per revision
    revisions: list[str] = field(default_factory=list)  # the members: revision names (OLMo: stepN-tokensNB)
    # a mapping: revision -> pre-training tokens where the name has none; or a list of token counts
    # ([2.3T, 3T]) instead of revisions: the nearest revision to each, resolved at plan time
    tokens: dict[str, str] | list[str] = field(default_factory=dict)
    tolerance: float = 0.02  # a count in `tokens` matches a revision within this relative distance
    params: str = ""  # parameters (e.g. 1.18B) for the compute estimate; empty: counted from a local config.json
    evaluate_base: bool = True  # also evaluate each member before instruction tuning (the paper's Figure 1, left)
    # The members' config.json shape for the memory plan without the hub (hidden_size, intermediate_size,
    # num_hidden_layers, vocab_size, max_position_embeddings); empty: a local member's config.json
    architecture: dict[str, int] = field(default_factory=dict)


@dataclass
class AlpacaEvalStage:
    """AlpacaEval (``overtrain alpaca-eval``, ``evaluate.alpaca``) of every instruction-tuned model."""

    judge: str = "weighted_alpaca_eval_gpt4_turbo"  # annotator config name (API: its key at run time) or a model dir
    instructions: str = "tatsu-lab/alpaca_eval"  # the hub set (805) or a local JSON of its records
    args: list[str] = field(default_factory=list)  # further `overtrain alpaca-eval` settings, e.g. [limit=200]
    n_instructions: int = 805  # for the estimates only (AlpacaEval's set; say so when limit= is smaller)
    tokens_estimate: int = 600  # prompt + answer tokens per instruction, for the generation compute only


@dataclass
class InstructStage:
    """Instruction tuning (``overtrain sft``) of every suite member on every chat dataset."""

    datasets: dict[str, str] = field(default_factory=dict)  # name -> chat data (hub name or local JSONL)
    args: list[str] = field(default_factory=list)  # `overtrain sft` settings for every run, e.g. [lr=2e-6, epochs=5]
    gpus: int = 0  # processes per SFT run (torchrun, data parallel); 0 = the runner's gpus= (1 on CPU)
    train_tokens_estimate: int = 50_000_000  # tokens per SFT run (all epochs), for the compute estimate only
    seeds: list[int] = field(default_factory=lambda: [0])  # an SFT run per seed (batch order; `overtrain sft` seed=)
    alpaca_eval: AlpacaEvalStage | None = None  # AlpacaEval of every tuned model (null: none)


@dataclass
class MultimodalStage:
    """LLaVA tuning (``overtrain multimodal``: stage 1 projector, stage 2 projector + LM) of every suite
    member, evaluated on a visual QA set; data in LLaVA's JSON format (``finetune.instruct.multimodal``)."""

    vision: str = "openai/clip-vit-large-patch14-336"  # the CLIP vision tower (LLaVA-1.5's)
    captions: str = ""  # stage 1 image-caption pairs (LLaVA-Pretrain blip_laion_cc_sbu_558k.json)
    instruct: str = ""  # stage 2 visual conversations (llava_v1_5_mix665k.json)
    vqa: str = ""  # evaluation JSONL: {image, question, answer, choices}
    caption_images: str = ""  # the root of the captions' images ("": the JSON's folder)
    instruct_images: str = ""  # the root of the conversations' images ("": the JSON's folder)
    name: str = "llava"  # the tuning's name in rows and the report
    args: list[str] = field(default_factory=list)  # further `overtrain multimodal` settings
    vision_params: str = "304M"  # the tower's parameters (CLIP ViT-L/14), for the estimates only
    stage1_tokens_estimate: int = 360_000_000  # stage 1 tokens, image tokens included (LLaVA-1.5: 558K x ~640)
    stage2_tokens_estimate: int = 600_000_000  # stage 2 tokens, image tokens included (LLaVA-1.5: 665K x ~900)


@dataclass
class HardwareSpec:
    name: str = "A100-80GB"  # shown in the plan
    peak_tflops: float = 312.0  # bf16 dense, per GPU
    mfu: float = 0.40  # assumed model FLOPs utilization, for the GPU-hour estimate
    memory_gb: float | None = None  # one GPU's memory: refuse jobs whose estimate won't fit (None: no check)


@dataclass
class ExtraJob:
    id: str  # job id (other jobs' `after` names it)
    command: list[str]  # argv after "overtrain"
    after: list[str] = field(default_factory=list)  # ids of the jobs it waits for
    done: str = ""  # a path (relative to results dir) whose existence marks the job done


@dataclass
class GridSpec:
    name: str  # the study's name (recorded in RESULTS_DIR/grid.json)
    results_dir: str = "runs/grid"  # every job's output lives under it
    prepare: PrepareSpec | None = None  # prepare C4 first (or give data_dir)
    data_dir: str = ""  # an already prepared C4 dir (instead of `prepare`)
    pretrain: PretrainStage | None = field(default_factory=PretrainStage)  # null: no pre-training (a suite grid)
    finetune: FinetuneStage | None = None  # LR sweeps of every checkpoint (null: none)
    perturb: PerturbStage | None = None  # noise sensitivity of every final checkpoint (null: none)
    lm_eval: LmEvalStage | None = None  # lm-evaluation-harness tasks on every checkpoint (null: none)
    suite: SuiteStage | None = None  # a public checkpoint suite (the paper's Section 2; null: none)
    instruct: InstructStage | None = None  # instruction tuning of every suite member (null: none)
    multimodal: MultimodalStage | None = None  # LLaVA tuning + visual QA of every suite member (null: none)
    log: TrackConfig | None = None  # wandb/TensorBoard for every job (wandb_project defaults to the grid's name)
    hardware: HardwareSpec = field(default_factory=HardwareSpec)  # for the plan's GPU-hour estimate
    extra_jobs: list[ExtraJob] = field(default_factory=list)  # further overtrain commands with dependencies
    report: bool = True  # a report job after everything

    def validate(self) -> None:
        needs_c4 = self.pretrain is not None or self.finetune is not None or self.perturb is not None
        if needs_c4 and self.prepare is None and not self.data_dir:
            raise ValueError("set either 'prepare' (prepare C4 first) or 'data_dir' (an already prepared dir)")
        if self.prepare is not None and self.data_dir:
            raise ValueError("set only one of 'prepare' and 'data_dir'")
        if self.pretrain is None and (self.finetune is not None or self.perturb is not None):
            raise ValueError("finetune and perturb act on pre-training runs: set 'pretrain' too (or remove them)")
        if self.instruct is not None and self.suite is None:
            raise ValueError("instruct tunes the members of a suite: set 'suite' too")
        if self.multimodal is not None and self.suite is None:
            raise ValueError("multimodal tunes the members of a suite: set 'suite' too")
        if self.instruct is not None and self.instruct.gpus < 0:
            raise ValueError(f"instruct.gpus={self.instruct.gpus}: expected >= 0 (0 = the runner's gpus=)")
        if self.instruct is not None:
            seeds = self.instruct.seeds
            if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
                raise ValueError(f"instruct.seeds={seeds}: expected distinct seeds >= 0 (default [0])")
            if any(a.split("=", 1)[0].strip() == "seed" for a in self.instruct.args):
                raise ValueError("instruct.args sets seed=: give SFT seeds as instruct.seeds instead")
        if self.pretrain is None and self.suite is None:
            raise ValueError("nothing to do: set 'pretrain' (a controlled study) or 'suite' (a checkpoint suite)")


def seed_axes(axes: dict[str, list], seeds: list[int]) -> dict[str, list]:
    """A stage's axes with its ``seeds`` as the ``seed`` axis (seeds are first-class grid axes; the
    report aggregates over them, ``overtrain.evaluate.report.stats``)."""
    if seeds and "seed" in axes:
        raise ConfigError("give the seeds once: as 'seeds' or as the axis 'seed', not both")
    return {**axes, "seed": list(seeds)} if seeds else dict(axes)


def seed_tags(pretrain_axes: dict) -> dict:
    """Pre-training axis labels as row tags: its ``seed`` as ``pretrain_seed`` (a row's ``seed`` is the fine-tuning one)."""
    return {("pretrain_seed" if k == "seed" else k): v for k, v in pretrain_axes.items()}


def probe_budgets(spec: GridSpec, where: str = "grid") -> list[int]:
    """The token counts of ``finetune.noise_probe.budgets`` (``first``/``last``: the smallest/largest
    of ``pretrain.budgets``; else one of them as a token count); [] without a probe."""
    probe = spec.finetune.noise_probe if spec.finetune else None
    if probe is None or spec.pretrain is None:
        return []
    budgets = sorted({parse_count(b) for b in spec.pretrain.budgets})
    out = []
    for b in probe.budgets:
        name = str(b).strip().lower()
        if name in ("first", "last"):
            out.append(budgets[0] if name == "first" else budgets[-1])
            continue
        try:
            tokens = parse_count(str(b))
        except ValueError:
            tokens = None
        if tokens not in budgets:
            raise ConfigError(
                f"{where}: finetune.noise_probe.budgets: '{b}' is not first, last or one of pretrain.budgets "
                f"{list(spec.pretrain.budgets)}"
            )
        out.append(tokens)
    return sorted(set(out))


def probe_tasks(spec: GridSpec, where: str = "grid") -> list[str]:
    """The probed tasks: ``finetune.noise_probe.tasks`` (each one of ``finetune.tasks``), or every task."""
    probe = spec.finetune.noise_probe if spec.finetune else None
    if probe is None:
        return []
    for t in probe.tasks:
        if t not in spec.finetune.tasks:
            close = difflib.get_close_matches(t, spec.finetune.tasks, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}: finetune.noise_probe.tasks: '{t}' is not one of finetune.tasks {spec.finetune.tasks}{hint}"
            )
    return list(probe.tasks) or list(spec.finetune.tasks)


def results_path(spec: GridSpec, rel: str) -> Path:
    """``rel`` under the grid's results dir, unless it is absolute."""
    p = Path(expand_path(rel))
    return p if p.is_absolute() else Path(expand_path(spec.results_dir)) / p


def data_dir(spec: GridSpec) -> Path:
    """The prepared C4 directory every stage reads: prepared by the grid, or given."""
    return results_path(spec, spec.prepare.out) if spec.prepare else Path(expand_path(spec.data_dir))


def prepare_settings(spec: GridSpec) -> list[str]:
    """The ``overtrain prepare-data`` key=value settings of the grid's prepare job."""
    prep = spec.prepare
    out = [format_setting("out", data_dir(spec))]
    out += [format_setting("train", [expand_path(x) for x in prep.train])] if prep.train else []
    out += [format_setting("val", [expand_path(x) for x in prep.val])] if prep.val else []
    return out + list(prep.args)


def validate_names(spec: GridSpec, where: str) -> None:
    """Unknown model, task or budget, or bad prepare-data settings: an error before any job starts."""
    pre = spec.pretrain or PretrainStage(models=[], budgets=[], config="")
    for m in pre.models:
        try:
            load_model_spec(m)
        except ConfigError as e:
            raise ConfigError(f"{where}: pretrain.models: unknown model '{m}' ({e})") from None
    for b in list(pre.budgets) + list(pre.intermediate_tokens):
        try:
            if parse_count(b) <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{where}: pretrain.budgets: '{b}' is not a token count (e.g. 4B, 512M, 100K)") from None
    if spec.finetune is not None:
        known = set(list_tasks())
        for t in spec.finetune.tasks:
            if known and t not in known and not Path(expand_path(t)).is_file():
                raise ConfigError(f"{where}: finetune.tasks: unknown task '{t}' (known: {', '.join(sorted(known))})")
        probe_budgets(spec, where)
        probe_tasks(spec, where)
    for stage, path in (
        ("pretrain.config", pre.config),
        ("finetune.config", spec.finetune.config if spec.finetune else None),
    ):
        if path and not (
            Path(expand_path(path)).is_file() or (Path.cwd() / path).is_file() or (CONFIG_ROOT.parent / path).is_file()
        ):
            raise ConfigError(f"{where}: {stage}: config file '{path}' not found")
    if spec.log is not None:
        check_trackers(spec.log, f"{where}: log")
    if spec.lm_eval is not None:  # lm-eval's own task index: an unknown name fails here, before any job
        # heavy: torch, imported only when jobs are planned, never for `overtrain grid --help`
        from ..evaluate.generalist import resolve_tasks
        from ..evaluate.lm_eval import LmEvalConfig

        try:
            cfg = load_config(LmEvalConfig, None, [format_setting("tasks", spec.lm_eval.tasks), *spec.lm_eval.args])
            resolve_tasks(cfg.tasks, cfg.include)
        except ConfigError as e:
            raise ConfigError(f"{where}: lm_eval: {str(e).removeprefix('command line: ')}") from None
    if spec.suite is not None:
        suite_members(spec, where)  # every member named, with its token count; local ones exist and load
    if spec.prepare is not None:
        # heavy: numpy (C4 preparation), imported only when a grid is checked, never for `overtrain grid --help`
        from ..data.c4.prepare import PrepareConfig

        try:
            load_config(PrepareConfig, None, prepare_settings(spec))
        except ConfigError as e:
            raise ConfigError(f"{where}: prepare: {str(e).removeprefix('command line: ')}") from None


@dataclass
class Member:
    """One suite member as the grid's jobs see it."""

    name: str  # the revision (a job id part)
    ref: str  # what `overtrain sft` and `overtrain lm-eval` take: a local dir, or REPO@REVISION
    tokens: int  # pre-training tokens
    requested: int | None = None  # the token count it was picked for (suite.tokens as a list), else None


_RESOLVED: dict[tuple, list[tuple[str, int]]] = {}  # (model, counts, tolerance) -> revisions: one hub call per process


def resolve_suite_tokens(spec: GridSpec, where: str = "grid") -> list[tuple[int, str, int]]:
    """``suite.tokens`` as a list of counts: (count, revision, its tokens) for each, the nearest
    revision of the hub repository's branches or the local mirror's folders (``core.suite``)."""
    s = spec.suite
    counts = []
    for i, text in enumerate(s.tokens):
        try:
            counts.append(parse_count(str(text)))
            if counts[-1] <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{where}: suite.tokens[{i}]: '{text}' is not a token count (e.g. 2.3T)") from None
    if not 0 <= s.tolerance < 1:
        raise ConfigError(f"{where}: suite.tolerance={s.tolerance}: expected a relative distance in [0, 1)")
    key = (str(s.model), tuple(counts), s.tolerance)
    if key not in _RESOLVED:
        try:
            revisions = list_revisions(s.model)
        except ConfigError as e:
            raise ConfigError(f"{where}: suite.model: {e}") from None
        _RESOLVED[key] = nearest_revisions(revisions, counts, s.tolerance, f"{where}: suite.tokens")
    return [(c, r, t) for c, (r, t) in zip(counts, _RESOLVED[key])]


def suite_members(spec: GridSpec, where: str = "grid", check: bool = True) -> list[Member]:
    """The suite's members in the grid's order; a member without a token count, a missing local
    revision directory or (``check``: once, by ``validate_names``) an architecture transformers cannot
    load is a ConfigError naming it."""
    s = spec.suite
    if not s.model:
        raise ConfigError(f"{where}: suite.model: empty (a hub repo id or a local folder of revision dirs)")
    requested: dict[str, int] = {}
    if isinstance(s.tokens, list):  # token counts: the revisions are the nearest to them
        if s.revisions:
            raise ConfigError(f"{where}: suite: give either revisions or tokens as a list of counts, not both")
        picked = resolve_suite_tokens(spec, where)
        revisions, given_tokens = [], {}
        for count, rev, _ in picked:
            if rev in requested:
                raise ConfigError(
                    f"{where}: suite.tokens: {format_tokens(requested[rev])} and {format_tokens(count)} both "
                    f"resolve to {rev}: ask for counts further apart"
                )
            requested[rev] = count
            revisions.append(rev)
    else:
        revisions, given_tokens = list(s.revisions), s.tokens
    if not revisions:
        raise ConfigError(f"{where}: suite.revisions: empty (the checkpoints to tune and evaluate)")
    unknown = sorted(set(given_tokens) - set(revisions))
    if unknown:
        raise ConfigError(f"{where}: suite.tokens: {unknown} are not in suite.revisions")
    local = Path(expand_path(s.model))
    out = []
    for rev in revisions:
        given = given_tokens.get(rev)
        try:
            tokens = parse_count(str(given)) if given is not None else tokens_from_revision(rev)
        except ValueError:
            raise ConfigError(f"{where}: suite.tokens.{rev}: '{given}' is not a token count (e.g. 2.3T)") from None
        if not tokens:
            raise ConfigError(
                f"{where}: suite.revisions: '{rev}' names no token count (OLMo style: stepN-tokensNB); "
                f"give it as suite.tokens.{rev}"
            )
        if local.is_dir():
            ref = str((local / rev).resolve())
            try:
                path = resolve_member(SuiteMember(ref, None, tokens))
                if check:
                    check_loadable(path)
            except ConfigError as e:
                raise ConfigError(f"{where}: suite.revisions: '{rev}': {e}") from None
        else:
            ref = f"{s.model}@{rev}"  # a hub revision: resolved (downloaded) by the job, not by the plan
        out.append(Member(rev, ref, tokens, requested.get(rev)))
    return out


def format_tokens(n: int) -> str:

    return format_count(n)


def config_path(path: str) -> str:
    """A stage config path (absolute) as given, else relative to the repository root."""
    p = Path(expand_path(path))
    if p.is_file():
        return str(p.resolve())  # absolute: batch jobs start elsewhere
    q = CONFIG_ROOT.parent / path
    return str(q) if q.is_file() else str(p)


def load_grid(path: str, overrides=()) -> GridSpec:
    spec = load_config(GridSpec, path, overrides, kind="grids")
    validate_names(spec, str(path))
    return spec


def grid_fingerprint(spec: GridSpec) -> str:
    """What identifies the study: everything but the results dir, the report switch, trackers, the
    planning noise level (``finetune.noise``) and the suite's ``architecture`` (memory plan) (and a
    missing lm_eval, suite, instruct or multimodal stage, empty ``seeds``, a missing
    ``finetune.noise_probe``, a ``suite.tolerance`` without ``suite.tokens`` counts and an
    ``intermediate_runs`` without effect, later fields, so grids from before them keep their
    fingerprint and their results dirs stay claimable)."""
    absent = tuple(k for k in ("lm_eval", "suite", "instruct", "multimodal") if getattr(spec, k) is None)
    d = to_dict(spec)
    for stage in ("pretrain", "finetune"):
        if isinstance(d.get(stage), dict) and not d[stage].get("seeds"):
            d[stage].pop("seeds", None)
    suite = d.get("suite")
    if isinstance(suite, dict) and not isinstance(suite.get("tokens"), list):
        suite.pop("tolerance", None)  # only counts in suite.tokens use it
    ins = d.get("instruct")
    if isinstance(ins, dict) and ins.get("seeds") == [0]:
        ins.pop("seeds")  # the default: SFT's own seed 0, as before the field
    if isinstance(ins, dict) and ins.get("alpaca_eval") is None:
        ins.pop("alpaca_eval", None)  # none: as before the field
    ft = d.get("finetune")
    if isinstance(ft, dict):
        ft.pop("noise", None)  # a planning figure: changes no job
        if ft.get("noise_probe") is None:
            ft.pop("noise_probe", None)
    if isinstance(d.get("suite"), dict):
        d["suite"].pop("architecture", None)  # the memory plan's figures: change no job
    pre = d.get("pretrain")
    if isinstance(pre, dict) and (pre.get("intermediate_runs") == "all" or not pre.get("intermediate_tokens")):
        pre.pop("intermediate_runs", None)
    return config_digest(d, exclude=("results_dir", "report", "hardware", "log", *absent))


def read_grid_record(spec: GridSpec) -> dict:
    """The results dir's grid record (``grid.json``), or {} when there is none."""
    marker = Path(expand_path(spec.results_dir)) / "grid.json"
    return json.loads(marker.read_text()) if marker.is_file() else {}


def recorded_grid(spec: GridSpec, grid_path: str, overrides: list[str]) -> tuple[GridSpec, list[str]]:
    """The grid as recorded in its results dir: the file with the overrides it was recorded with
    (``claim_results_dir``), then this command's; the spec unchanged when there is no record. So a
    Slurm script that names only the grid file and its results dir (``submit.sh``) submits the grid
    the user planned, every override included."""
    recorded = read_grid_record(spec).get("overrides")
    if not recorded:
        return spec, list(overrides)
    merged = merge_settings(recorded, overrides)
    return load_grid(grid_path, merged), merged


def claim_results_dir(spec: GridSpec, grid_path: str, force: bool = False, overrides: list[str] = ()) -> Path:
    """Record the grid in its results dir (with the ``overrides`` it was loaded with, read back by
    ``recorded_grid``); refuse a results dir made by a different grid."""
    root = Path(expand_path(spec.results_dir))
    marker = root / "grid.json"
    fp = grid_fingerprint(spec)
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("fingerprint") != fp and not force:
            raise ConfigError(
                f"{grid_path}: results_dir {root} holds results of a different grid "
                f"('{old.get('name')}' from {old.get('grid_file')}); use another results_dir, or force=true"
            )
    root.mkdir(parents=True, exist_ok=True)
    record = {
        "name": spec.name,
        "grid_file": str(grid_path),
        "fingerprint": fp,
        "overrides": list(overrides),
        "spec": to_dict(spec),
    }
    if spec.suite is not None:  # the members as resolved (suite.tokens as counts: the revisions picked)
        record["suite_members"] = [dataclasses.asdict(m) for m in suite_members(spec, str(grid_path), check=False)]
    atomic_write_text(marker, json.dumps(record, indent=2))
    return root
