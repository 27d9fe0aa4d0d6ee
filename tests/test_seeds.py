"""Seeds are first-class grid axes (``pretrain.seeds``, ``finetune.seeds``) and the report
aggregates over them: a cell's rows of several seeds are one point with an interval over seeds."""

from __future__ import annotations

import numpy as np
from overtrain.core.jsonl import append_record
from overtrain.core.paths import CONFIG_ROOT
from overtrain.core.rows import write_scores
from overtrain.evaluate.report import make_report
from overtrain.launch.plan import expand
from overtrain.launch.spec import grid_fingerprint, load_grid
from test_report import BUDGETS, LRS, ft_row, scores_of

DEMO = str(CONFIG_ROOT / "grids" / "demo.yaml")


def test_seed_axes_reach_commands_and_tags(tmp_path):
    plain = load_grid(DEMO, [f"results_dir={tmp_path}"])
    spec = load_grid(DEMO, [f"results_dir={tmp_path}", "pretrain.seeds=[0, 1]", "finetune.seeds=[3, 4]"])
    jobs = expand(spec)
    pre = [j for j in jobs if j.kind == "pretrain"]
    sweeps = [j for j in jobs if j.kind == "sweep"]
    assert len(pre) == 3 * 2 and len(sweeps) == 3 * 2 * 2 * 2  # budgets x pretrain seeds x tasks x finetune seeds
    assert {a for j in pre for a in j.argv if a.startswith("seed=")} == {"seed=0", "seed=1"}
    one = sweeps[0].argv
    assert "tags.pretrain_seed=0" in one and "seed=3" in one and "tags.seed=3" in one
    perturb = [j for j in jobs if j.kind == "perturb"]
    assert all(any(a.startswith("tags.pretrain_seed=") for a in j.argv) for j in perturb)
    # a grid without seeds keeps the fingerprint it had before the field existed (its results dir stays claimable)
    assert grid_fingerprint(plain) == grid_fingerprint(
        load_grid(DEMO, [f"results_dir={tmp_path}", "pretrain.seeds=[]"])
    )


def test_report_aggregates_over_seeds(tmp_path):
    path = tmp_path / "results.jsonl"
    rng = np.random.default_rng(0)
    for i in range(len(BUDGETS)):
        for pre_seed in (0, 1):
            for lr in LRS:
                row = ft_row("trec", lr, i, seed=pre_seed + 5, tags={"pretrain_seed": pre_seed})
                row["checkpoint_sha256"] = f"ck{i}-{pre_seed}"  # a checkpoint per pre-training seed
                append_record(path, {**row, "scores": write_scores(path, scores_of(row, rng))})
    rep, text, _ = make_report([str(path)], tmp_path / "out")
    cell = next(iter(rep.tuned.values()))[BUDGETS[0]]
    assert cell.n == 2 and cell.samples["id"].seeds == 2 and cell.samples["c4"].seeds == 2
    assert all(c.has_intervals for c in rep.find("c4", "trec"))
    assert "differ in" not in text  # seeds are aggregated, not a mix of setups
    assert "**trec**: no catastrophic overtraining" in text
