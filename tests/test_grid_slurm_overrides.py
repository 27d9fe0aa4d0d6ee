"""``grid slurm GRID key=value ...`` records the grid's overrides in the results dir's grid record
(``grid.json``); the ``submit.sh`` it writes names only the grid file, the results dir and the Slurm
options, and ``grid submit`` / ``grid status`` read the overrides back: every job submitted is a job
of the grid the user planned (issue 24: the demo planned with 5 jobs once submitted the whole demo).
No Slurm needed: sbatch and squeue are replaced (the real-Slurm test is tests/test_slurm.py)."""

from __future__ import annotations

import json
import shlex

from overtrain.cli import main
from overtrain.core.paths import CONFIG_ROOT

DEMO = str(CONFIG_ROOT / "grids" / "demo.yaml")
OVERRIDES = ["pretrain.budgets=[32K]", "finetune.tasks=[rte]", "finetune.lrs=[1.0e-3]"]
JOBS = ["perturb/tiny_32K", "prepare", "pretrain/tiny_32K", "report", "sweep/tiny_32K_final_rte"]


def test_submit_sh_submits_the_grid_planned_with_every_override(tmp_path, monkeypatch, capsys):
    from overtrain.launch import grid, slurm

    res, out = tmp_path / "r", tmp_path / "slurm"
    assert main(["grid", "slurm", DEMO, f"results_dir={res}", f"out={out}", "gpus_per_node=0", *OVERRIDES]) == 0
    record = json.loads((res / "grid.json").read_text())
    assert record["overrides"] == [f"results_dir={res}", *OVERRIDES]  # recorded once, here
    assert record["spec"]["pretrain"]["budgets"] == ["32K"] and record["spec"]["finetune"]["tasks"] == ["rte"]

    argv = shlex.split((out / "submit.sh").read_text().splitlines()[-1])
    assert argv[0] == "exec" and not set(OVERRIDES) & set(argv)  # not repeated: read back from grid.json
    calls: list[list[str]] = []

    def sbatch(cmd: list[str]) -> str:
        calls.append(cmd)
        return f"{100 + len(calls)}\n"

    monkeypatch.setattr(slurm, "_out", sbatch)
    monkeypatch.setattr(slurm, "queue_states", dict)
    monkeypatch.setattr(grid, "check_cluster", lambda o: [])
    capsys.readouterr()
    assert main(argv[argv.index("overtrain") + 1 :]) == 0  # what submit.sh runs
    assert sorted(json.loads((out / "submitted.json").read_text())) == JOBS
    assert len(calls) == 4 and all(c[0] == "sbatch" for c in calls)  # prepare, pretrain, one array, report
    assert sum("--array=0,1" in c for c in calls) == 1  # the sweep and the perturbation
    (line,) = (out / "finetune_jobs.txt").read_text().splitlines()[:1]
    assert "task=rte" in line and "lrs=[0.001]" in line and "tiny_32K" in line
    assert json.loads((res / "grid.json").read_text())["overrides"] == record["overrides"]

    # grid status reads them back too: the 5 jobs, not the whole demo's 14
    assert main(["grid", "status", DEMO, f"results_dir={res}", f"out={out}"]) in (0, 1)
    text = capsys.readouterr().out
    assert all(j in text for j in JOBS) and "pretrain/tiny_96K" not in text


def test_a_later_override_wins_and_a_different_grid_is_refused(tmp_path, capsys):
    res = tmp_path / "r"
    base = ["grid", "slurm", DEMO, f"results_dir={res}", "gpus_per_node=0"]
    assert main([*base, *OVERRIDES]) == 0
    assert main([*base, "finetune.lrs=[1.0e-2]"]) == 2  # the results dir holds another grid's record
    assert "holds results of a different grid" in capsys.readouterr().err
    assert main([*base, "finetune.lrs=[1.0e-2]", "force=true"]) == 0
    recorded = json.loads((res / "grid.json").read_text())["overrides"]
    assert recorded == [f"results_dir={res}", *OVERRIDES[:2], "finetune.lrs=[1.0e-2]"]
