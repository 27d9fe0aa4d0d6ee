"""Grid planning: job counts for the paper's study, dependency checks, bad grids."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from overtrain.cli import main
from overtrain.core.errors import ConfigError
from overtrain.core.paths import CONFIG_ROOT
from overtrain.launch.plan import expand, plan_summary
from overtrain.launch.runner import _command
from overtrain.launch.slurm import ARRAY_KINDS, SlurmOptions, script_name, write_slurm
from overtrain.launch.spec import claim_results_dir, load_grid

PAPER = str(CONFIG_ROOT / "grids" / "paper.yaml")
DEMO = str(CONFIG_ROOT / "grids" / "demo.yaml")
PAPER_TASKS = ["rte", "trec", "gsm8k", "siqa", "mr", "subj", "cr", "boolq", "tweet_sentiment", "python_code"]


def _write(tmp_path: Path, data: dict, name: str = "grid.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_paper_plan_job_counts():
    spec = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test"])
    jobs = expand(spec)
    kinds = [j.kind for j in jobs]
    n_tasks = len(spec.finetune.tasks)
    assert n_tasks == 10
    assert kinds.count("prepare") == 1
    assert kinds.count("pretrain") == 3 * 6
    # every final checkpoint and task, and the noise probe: 2 more seeds at the first and last budget
    assert kinds.count("sweep") == 3 * 6 * n_tasks + 3 * 2 * n_tasks * 2
    assert kinds.count("perturb") == 3 * 6
    assert kinds.count("report") == 1
    # dependency order: every job comes after what it needs
    seen = set()
    for j in jobs:
        assert all(d in seen for d in j.after), j.id
        seen.add(j.id)
    # compute: pre-training dominates; 90M at 128B alone is 6 * ~0.15B params * 128B tokens ~ 1e20
    s = plan_summary(spec, jobs)
    pre = s["by_kind"]["pretrain"]
    assert 1e20 < pre["flops"] < 1e22
    assert s["gpu_hours"] > 100
    budgets = sorted({j.info["tokens"] for j in jobs if j.kind == "pretrain"})
    assert budgets == [4 * 10**9, 8 * 10**9, 16 * 10**9, 32 * 10**9, 64 * 10**9, 128 * 10**9]


def test_plan_counts_sweep_lrs_and_their_possible_extension(capsys):
    """A sweep's compute counts its grid's LRs (default.yaml: 8); the LRs a sweep may add past its
    grid's end (sweep.extend, at most sweep.max_extensions = 2 each) are counted apart."""
    paper = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test"])
    s = plan_summary(paper, expand(paper))
    assert s["sweep_lrs"] == 300 * 8 and s["sweep_added_lrs_max"] == 300 * 2  # 180 sweeps + 120 of the noise probe
    assert s["sweep_extension_flops_max"] == pytest.approx(s["by_kind"]["sweep"]["flops"] * 2 / 8, rel=1e-12)
    off = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test", "finetune.overrides=[sweep.extend=false]"])
    assert plan_summary(off, expand(off))["sweep_added_lrs_max"] == 0
    demo = load_grid(DEMO, ["results_dir=/tmp/overtrain-plan-test", "finetune.overrides=[sweep.max_extensions=1]"])
    s = plan_summary(demo, expand(demo))  # demo.yaml: extension off; its grid: 3 LRs
    assert s["sweep_lrs"] == 6 * 3 and s["sweep_added_lrs_max"] == 0
    on = load_grid(DEMO, ["results_dir=/tmp/overtrain-plan-test", "finetune.axes={sweep.extend: [true, false]}"])
    jobs = expand(on)
    assert sorted(j.info["max_added_lrs"] for j in jobs if j.kind == "sweep") == [0] * 6 + [2] * 6
    assert main(["grid", "plan", PAPER, "results_dir=/tmp/overtrain-plan-test"]) == 0
    assert "plus up to 600 where a tuned LR lands at a grid's end" in capsys.readouterr().out


def test_plan_cli_json(capsys):
    assert main(["grid", "plan", PAPER, "json=true", "results_dir=/tmp/overtrain-plan-test"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 1 + 18 + 180 + 120 + 18 + 1  # 120: the noise probe's sweeps
    assert out["by_kind"]["pretrain"]["jobs"] == 18
    assert out["probe_sweeps"] == 120 and set(out["detectable_worsening"]) == set(PAPER_TASKS)
    assert 0 < out["detectable_worsening"]["rte"]["worsening"] < 1  # a fraction (the noise probe measures run sd)


def test_axes_multiply_jobs_and_reach_commands(tmp_path):
    spec = load_grid(
        DEMO,
        [
            f"results_dir={tmp_path}",
            "pretrain.axes={optim.lr: [0.001, 0.003]}",
            "finetune.axes={template: [default, instruction]}",
        ],
    )
    jobs = expand(spec)
    pre = [j for j in jobs if j.kind == "pretrain"]
    sweeps = [j for j in jobs if j.kind == "sweep"]
    assert len(pre) == 3 * 2
    assert len(sweeps) == 3 * 2 * 2 * 2  # budgets x lr axis x tasks x templates
    assert any("optim.lr=0.003" in j.argv for j in pre)
    assert any("template=instruction" in j.argv for j in sweeps)
    assert len({j.id for j in jobs}) == len(jobs)


def test_intermediate_checkpoints_are_swept(tmp_path):
    spec = load_grid(DEMO, [f"results_dir={tmp_path}", "pretrain.intermediate_tokens=[16K]"])
    jobs = expand(spec)
    inter = [j for j in jobs if j.kind == "sweep" and "@tokens=" in j.info["checkpoint"]]
    assert len(inter) == 3 * 2  # every budget above 16K, both tasks
    pre = next(j for j in jobs if j.kind == "pretrain")
    assert "checkpoint.at_tokens=[16000]" in pre.argv


def test_paper_grid_sweeps_intermediate_checkpoints_of_the_longest_runs_when_asked():
    """paper.yaml (without its noise probe, tests/test_noise_probe.py): only fully decayed checkpoints
    (every run gets `checkpoint.at_tokens=[]`); with ``pretrain.intermediate_tokens`` each model's
    128B run also saves those checkpoints and every task sweeps them (``intermediate_runs: longest``;
    ``all``: every longer run)."""
    from overtrain.launch.spec import grid_fingerprint

    off = "finetune.noise_probe=null"
    plain = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test", off])
    assert grid_fingerprint(plain) == "b18e0475d3979ba5"  # as before the key existed: its results dirs stay claimable
    jobs = expand(plain)
    assert all("checkpoint.at_tokens=[]" in j.argv for j in jobs if j.kind == "pretrain")
    assert not any("@tokens=" in j.info.get("checkpoint", "") for j in jobs)

    marks = "pretrain.intermediate_tokens=[4B,8B,16B,32B,64B]"
    spec = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test", marks, off])
    jobs = expand(spec)
    pre = {j.id: j for j in jobs if j.kind == "pretrain"}
    at = "checkpoint.at_tokens=[4000000000,8000000000,16000000000,32000000000,64000000000]"
    for j in pre.values():
        assert (at in j.argv) == (j.info["tokens"] == 128 * 10**9), j.id
        assert j.info["tokens"] == 128 * 10**9 or "checkpoint.at_tokens=[]" in j.argv
    inter = [j for j in jobs if j.kind == "sweep" and "@tokens=" in j.info["checkpoint"]]
    assert len(inter) == 3 * 5 * 10 and len([j for j in jobs if j.kind == "sweep"]) == 180 + 150
    assert {j.info["checkpoint"].split("@")[0] for j in inter} == {
        pre[f"pretrain/{m}_128B"].info["run_dir"] for m in ("olmo-15m", "olmo-30m", "olmo-90m")
    }
    assert all(j.after == [f"pretrain/{Path(j.info['checkpoint'].split('@')[0]).name}"] for j in inter)
    assert grid_fingerprint(spec) != grid_fingerprint(plain)
    every = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test", marks, off, "pretrain.intermediate_runs=all"])
    inter = [j for j in expand(every) if j.kind == "sweep" and "@tokens=" in j.info["checkpoint"]]
    assert len(inter) == 3 * (5 + 4 + 3 + 2 + 1) * 10


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"pretrain": {"models": ["olmo-7b"]}}, "unknown model 'olmo-7b'"),
        ({"pretrain": {"budgets": ["lots"]}}, "'lots' is not a token count"),
        ({"pretrain": {"modles": ["tiny"]}}, "unknown key 'pretrain.modles'"),
        (
            {
                "extra_jobs": [
                    {"id": "a", "command": ["info", "tiny"], "after": ["b"]},
                    {"id": "b", "command": ["info", "tiny"], "after": ["a"]},
                ]
            },
            "dependency cycle",
        ),
        ({"extra_jobs": [{"id": "a", "command": ["info", "tiny"], "after": ["nope"]}]}, "depends on 'nope'"),
    ],
)
def test_bad_grids_fail_before_any_job(tmp_path, patch, message):
    base = yaml.safe_load(Path(DEMO).read_text())
    base["results_dir"] = str(tmp_path / "results")
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k].update(v)
        else:
            base[k] = v
    path = _write(tmp_path, base)
    with pytest.raises(ConfigError, match=message):
        expand(load_grid(path))
    assert not (tmp_path / "results").exists()
    # and the CLI says it in one line, exit 2
    assert main(["grid", "run", path]) == 2


def test_results_dir_of_another_grid_is_refused(tmp_path):
    a = load_grid(DEMO, [f"results_dir={tmp_path}"])
    claim_results_dir(a, DEMO)
    claim_results_dir(a, DEMO)  # same grid again: fine (resume)
    b = load_grid(DEMO, [f"results_dir={tmp_path}", "pretrain.budgets=[64K]"])
    with pytest.raises(ConfigError, match="different grid"):
        claim_results_dir(b, "other.yaml")
    claim_results_dir(b, "other.yaml", force=True)


def test_slurm_files(tmp_path):
    assert main(["grid", "slurm", PAPER, f"results_dir={tmp_path}", f"out={tmp_path / 'slurm'}", "nodes=2"]) == 0
    files = sorted(p.name for p in (tmp_path / "slurm").iterdir())
    assert "submit.sh" in files and "finetune_array.sbatch" in files
    assert sum(f.startswith("pretrain_") for f in files) == 18
    text = (tmp_path / "slurm" / "pretrain_olmo-90m_128B.sbatch").read_text()
    assert "--nodes=2" in text and "torchrun" in text and "budget_tokens=128000000000" in text
    assert (
        len((tmp_path / "slurm" / "finetune_jobs.txt").read_text().splitlines()) == 180 + 120 + 18
    )  # sweeps, noise-probe sweeps, perturbations


@pytest.mark.parametrize("path", sorted((CONFIG_ROOT / "grids" / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_ablation_grids_plan(path, tmp_path):
    """Every ready-made ablation expands, and its axis reaches the commands of its jobs."""
    spec = load_grid(str(path), [f"results_dir={tmp_path}"])
    jobs = expand(spec)
    axes = {**spec.pretrain.axes, **(spec.finetune.axes if spec.finetune else {})}
    for key, values in axes.items():
        for v in values:
            assert any(f"{key}={v}" in j.argv for j in jobs), (key, v)
    if spec.pretrain.intermediate_tokens:
        assert any("@tokens=" in j.info.get("checkpoint", "") for j in jobs)


def test_status_without_a_scheduler_tells_done_failed_cancelled_waiting(tmp_path, monkeypatch):
    from overtrain.launch import slurm

    spec = load_grid(DEMO, [f"results_dir={tmp_path}"])
    jobs = expand(spec)
    out = tmp_path / "slurm"
    out.mkdir()
    pt, sweep = next(j for j in jobs if j.kind == "pretrain"), next(j for j in jobs if j.kind == "sweep")
    (out / "submitted.json").write_text(json.dumps({"prepare": "7", pt.id: "8", sweep.id: "9_0"}))
    (tmp_path / "data" / "c4").mkdir(parents=True)
    (tmp_path / "data" / "c4" / "meta.json").write_text("{}")  # prepare's done-marker
    slurm.log_dir(spec).mkdir(parents=True)
    slurm.log_path(spec, pt, "8").write_text("Traceback ...\n")
    monkeypatch.setattr(slurm, "queue_states", lambda: {})  # nothing queued any more
    states = {r["job"]: r["state"] for r in slurm.job_states(spec, jobs, out)}
    assert states["prepare"] == "done" and states[pt.id] == "failed" and states[sweep.id] == "cancelled"
    assert states["report"] == "waiting"
    assert slurm.print_status(spec, jobs, out) == 1

    # A running pre-training job: the ETA from its last logged throughput.
    monkeypatch.setattr(slurm, "queue_states", lambda: {"8": "RUNNING"})
    metrics = Path(pt.info["run_dir"]) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"step": 1, "tokens": 1000, "tokens_per_sec": 100.0}) + "\n")
    row = next(r for r in slurm.job_states(spec, jobs, out) if r["job"] == pt.id)
    assert row["state"] == "running" and row["eta_s"] == (pt.info["tokens"] - 1000) / 100.0


def test_the_runner_and_slurm_run_the_line_the_job_builder_wrote(tmp_path):
    """One job line per job (launch.plan's job builders): the local runner runs it, and the Slurm
    script or the array's job list holds it, unchanged (launch.plan.overtrain_command wraps it)."""
    spec = load_grid(str(CONFIG_ROOT / "grids" / "demo.yaml"), [f"results_dir={tmp_path}"])
    jobs = expand(spec)
    write_slurm(spec, jobs, tmp_path / "slurm", SlurmOptions(gpus_per_node=0))
    joblist = (tmp_path / "slurm" / "finetune_jobs.txt").read_text()
    assert {j.kind for j in jobs} >= {"prepare", "pretrain", "sweep", "perturb", "report"}
    for j in jobs:
        assert _command(j, 0)[1:] == ["-m", "overtrain", *j.argv], j.id
        text = joblist if j.kind in ARRAY_KINDS else (tmp_path / "slurm" / script_name(j)).read_text()
        assert f"-m overtrain {shlex.join(j.argv)}\n" in text or f"\t{shlex.join(j.argv)}\n" in text, j.id
