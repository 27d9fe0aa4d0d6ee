"""The noise probe (``finetune.noise_probe``): extra fine-tuning seeds at a few cells, so a one-seed
study measures its run-to-run variation; its sweeps are ordinary sweeps tagged ``noise_probe``."""

from __future__ import annotations

import math

import pytest
from overtrain.cli import main
from overtrain.core.errors import ConfigError
from overtrain.core.paths import CONFIG_ROOT
from overtrain.launch.plan import expand, plan_summary, print_plan
from overtrain.launch.spec import grid_fingerprint, load_grid

PAPER = str(CONFIG_ROOT / "grids" / "paper.yaml")
DEMO = str(CONFIG_ROOT / "grids" / "demo.yaml")


def probes(jobs):
    return [j for j in jobs if j.kind == "sweep" and j.info["noise_probe"]]


def test_paper_probes_the_first_and_last_budget_with_two_more_seeds(capsys):
    spec = load_grid(PAPER, ["results_dir=/tmp/overtrain-plan-test"])
    jobs = expand(spec)
    probe = probes(jobs)
    assert len(probe) == 3 * 2 * 10 * 2  # models x {4B, 128B} x tasks x seeds {1, 2}
    assert {j.after[0].split("_")[1] for j in probe} == {"4B", "128B"}
    assert all(j.info["checkpoint"] == j.info["checkpoint"].split("@")[0] for j in probe)  # final checkpoints
    for j in probe:
        (seed,) = [a for a in j.argv if a.startswith("seed=")]
        assert seed in ("seed=1", "seed=2") and f"tags.{seed}" in j.argv and "tags.noise_probe=true" in j.argv
        assert j.id.endswith("_probe") and j.after == [f"pretrain/{j.id.split('/')[1].split('_final')[0]}"]
    plain = [j for j in jobs if j.kind == "sweep" and not j.info["noise_probe"]]
    assert len(plain) == 180 and not any("tags.noise_probe=true" in j.argv for j in plain)
    assert not any(a.startswith("seed=") for j in plain for a in j.argv)  # the study's own sweeps: unchanged

    s = plan_summary(spec, jobs)  # each probe sweep costs what a sweep of the same cell costs
    same = {j.id: j.flops for j in plain}
    assert s["probe_sweeps"] == 120 and s["probe_lrs"] == 120 * 8
    assert s["probe_flops"] == pytest.approx(sum(same[j.id.rsplit("_seed-", 1)[0]] for j in probe), rel=1e-12)
    print_plan(spec, jobs, verbose=False)
    assert "noise probe: 120 of the sweeps (960 fine-tuning runs) add seeds up to 3 per cell at 4B, 128B" in (
        capsys.readouterr().out
    )


def test_fingerprint_without_a_probe_is_the_old_one_and_the_noise_level_is_no_part_of_it(tmp_path):
    base = [f"results_dir={tmp_path}"]
    plain = load_grid(DEMO, base)
    assert plain.finetune.noise_probe is None
    assert grid_fingerprint(plain) == "900f6c7a0d3fe387"  # the demo's fingerprint before the probe existed
    assert grid_fingerprint(load_grid(DEMO, [*base, "finetune.noise.run_sd=0.05"])) == grid_fingerprint(plain)
    probed = load_grid(DEMO, [*base, "finetune.noise_probe={seeds: 2, budgets: [last]}"])
    assert grid_fingerprint(probed) != grid_fingerprint(plain)


def test_probe_counts_the_grids_own_seeds_and_takes_token_counts(tmp_path, capsys):
    base = [f"results_dir={tmp_path}", "finetune.seeds=[0, 5]", "finetune.axes={template: [default, instruction]}"]
    spec = load_grid(DEMO, [*base, "finetune.noise_probe={seeds: 3, budgets: [96K], tasks: [trec]}"])
    probe = probes(expand(spec))
    # the grid already has seeds 0 and 5: one more (1), at 96K only, for trec only, per template
    assert sorted(j.id.split("/")[1] for j in probe) == [
        "tiny_96K_final_trec_template-default_seed-1_probe",
        "tiny_96K_final_trec_template-instruction_seed-1_probe",
    ]
    enough = load_grid(DEMO, [*base, "finetune.noise_probe={seeds: 2}"])
    assert probes(expand(enough)) == []
    assert main(["grid", "plan", DEMO, *base, "finetune.noise_probe={seeds: 2}", "quiet=true"]) == 0
    assert "noise probe: no sweeps added (the grid's own seeds already give 2 or more per cell)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "probe, message",
    [
        ("{budgets: [middle]}", "finetune.noise_probe.budgets: 'middle' is not first, last or one of pretrain.budgets"),
        ("{budgets: [64K]}", "finetune.noise_probe.budgets: '64K' is not first, last or one of pretrain.budgets"),
        (
            "{tasks: [rtee]}",
            "finetune.noise_probe.tasks: 'rtee' is not one of finetune.tasks ['rte', 'trec']; did you mean 'rte'?",
        ),
        ("{seeds: 1}", "noise_probe.seeds=1: expected >= 2"),
        ("{seed: 3}", "seed"),
    ],
)
def test_bad_probe_is_an_error_naming_the_file_and_field(tmp_path, probe, message):
    with pytest.raises(ConfigError) as e:
        load_grid(DEMO, [f"results_dir={tmp_path}", f"finetune.noise_probe={probe}"])
    assert message in str(e.value) and "demo.yaml" in str(e.value)


def test_plan_states_the_smallest_detectable_worsening_per_task(tmp_path, capsys):
    """``grid plan``'s power figure is the report's (``report.stats.detectable_worsening``): the
    report's family (budgets - 1 tests per curve, a curve per model and metric), runs per cell from
    the seeds and the probe, the run variance's df as the report pools it (every fixed-LR cell of the
    task: models x LRs x the budgets' runs - 1), the largest over a curve's comparisons; one seed
    and no probe: nothing is detectable."""
    from overtrain.evaluate.report.stats import detectable_worsening as report_figure
    from overtrain.launch.plan import detectable_worsening

    base = [f"results_dir={tmp_path}", "pretrain.models=[olmo-15m, olmo-30m]", "finetune.noise.run_sd=0.02"]
    probed = detectable_worsening(load_grid(PAPER, base))  # 2 models x 6 budgets, probe: 3 seeds at 2 budgets
    rte, lrs = probed["rte"], 8  # configs/finetune/default.yaml: sweep.n_lrs
    assert (rte["n_examples"], rte["runs_per_cell"], rte["run_df"], rte["family_size"]) == (277, 1, 2 * lrs * 4, 20)
    sigma2 = 0.02**2 + (1 - 0.89) * 0.3**2 / 277  # one run's variance: run shift + its examples' part
    # the largest budget (3 runs) against a budget with one run: the largest of the curve's figures
    assert rte["worsening"] == math.expm1(report_figure(0.0, (1 + 1 / 3) * sigma2, 2 * lrs * 4, 20))
    seeds = detectable_worsening(load_grid(PAPER, [*base, "finetune.seeds=[0, 1]"]))["rte"]
    # every cell has 2 runs (1 df each, 6 budgets) and the probe adds a third seed at 2 budgets, per model and LR
    assert (seeds["runs_per_cell"], seeds["run_df"]) == (2, 2 * lrs * (6 + 2))
    assert seeds["worsening"] < rte["worsening"]
    one = detectable_worsening(load_grid(DEMO, [f"results_dir={tmp_path}"]))
    assert one["rte"]["worsening"] == float("inf") and one["rte"]["n_examples"] == 64  # demo: max_examples.test
    print_plan(load_grid(DEMO, [f"results_dir={tmp_path}"]), [], verbose=False)
    out = capsys.readouterr().out
    assert "rte              none: one run per point and no noise probe" in out and "Holm over 4 tests" in out


def test_plan_uses_the_run_sd_an_earlier_run_measured(tmp_path, capsys):
    """An earlier run's probe rows (tuned-LR rows of one cell, several seeds) replace the assumed
    run sd: pooled over cells, log test perplexity, with its degrees of freedom."""
    import json
    import math

    from overtrain.launch.plan import detectable_worsening, measured_run_sd

    logs = {"a": [1.00, 1.02, 1.04], "b": [2.00, 2.01]}  # two cells: SS = 0.0008 + 0.00005 on 2 + 1 df
    lines = []
    for ck, ys in logs.items():
        for seed, y in enumerate(ys):
            tags = {"seed": seed, "noise_probe": True} if seed else {}
            row = {"task": "rte", "selected": True, "checkpoint_sha256": ck, "tags": tags, "test_id_ppl": math.exp(y)}
            lines += [
                json.dumps(row),
                json.dumps({**row, "selected": False, "test_id_ppl": 99.0}),
            ]  # fixed-LR rows: not used
    (tmp_path / "sweeps" / "x").mkdir(parents=True)
    (tmp_path / "sweeps" / "x" / "results.jsonl").write_text("\n".join(lines) + "\n")
    spec = load_grid(DEMO, [f"results_dir={tmp_path}", "finetune.noise_probe={seeds: 3, tasks: [rte]}"])
    sd, df = measured_run_sd(spec)["rte"]
    assert df == 3 and sd == pytest.approx(math.sqrt(0.00085 / 3), rel=1e-9)
    f = detectable_worsening(spec)
    assert f["rte"]["run_sd"] == sd and f["rte"]["run_sd_from"] == "measured, 3 df"
    assert f["trec"]["run_sd"] == 0.01 and f["trec"]["worsening"] == float("inf")  # trec: not probed, one seed
