"""SFT seeds as a grid axis (``instruct.seeds``): each seed an ``overtrain sft`` run with its own
output and lm-eval job; the default [0] keeps the jobs and the fingerprint of grids from before it."""

from __future__ import annotations

import pytest
from overtrain.core.errors import ConfigError
from overtrain.core.paths import CONFIG_ROOT
from overtrain.launch.plan import expand
from overtrain.launch.spec import grid_fingerprint, load_grid

OLMO1B = str(CONFIG_ROOT / "grids" / "section2-olmo1b.yaml")  # a hub suite: planned without the network


def members(spec) -> int:
    """section2-olmo1b.yaml's suite size (its token counts, each resolved to one revision)."""
    return len(spec.suite.tokens or spec.suite.revisions)


def test_default_seed_keeps_jobs_and_fingerprint(tmp_path, fake_hub):
    spec = load_grid(OLMO1B, [f"results_dir={tmp_path}"])
    assert spec.instruct.seeds == [0]
    explicit = load_grid(OLMO1B, [f"results_dir={tmp_path}", "instruct.seeds=[0]"])
    # the default is popped from the fingerprint: results dirs from before instruct.seeds stay claimable
    assert grid_fingerprint(spec) == grid_fingerprint(explicit)
    jobs = expand(spec)
    ins = [j for j in jobs if j.kind == "instruct"]
    assert len(ins) == members(spec) * 2 and ins[0].id == "instruct/step20000-tokens83B_hh"
    assert not any(a.startswith("seed=") for j in ins for a in j.argv)  # sft's own default seed 0
    assert [j.id for j in jobs] == [j.id for j in expand(explicit)]


def test_seeds_multiply_sft_runs_and_their_evaluations(tmp_path, fake_hub):
    spec = load_grid(OLMO1B, [f"results_dir={tmp_path}", "instruct.seeds=[0, 1, 2]"])
    jobs = expand(spec)
    ins = [j for j in jobs if j.kind == "instruct"]
    assert len(ins) == members(spec) * 2 * 3 and len({j.info["out"] for j in ins}) == len(ins)
    for j in ins:
        seed = j.info["seed"]
        assert j.argv.count(f"seed={seed}") == 1 and j.id.endswith(f"_seed-{seed}") and j.info["out"].endswith(j.id[9:])
    evals = {j.after[0]: j for j in jobs if j.kind == "lm-eval" and j.after}
    assert sorted(evals) == sorted(j.id for j in ins)  # every tuned model evaluated, after its own SFT run
    assert all(j.argv[1] == ins_j.info["out"] for ins_j in ins for j in [evals[ins_j.id]])
    assert grid_fingerprint(spec) != grid_fingerprint(load_grid(OLMO1B, [f"results_dir={tmp_path}"]))


@pytest.mark.parametrize(
    "setting, message",
    [
        ("instruct.seeds=[]", "instruct.seeds=[]: expected distinct seeds >= 0"),
        ("instruct.seeds=[1, 1]", "instruct.seeds=[1, 1]: expected distinct seeds >= 0"),
        ("instruct.args=[seed=3]", "instruct.args sets seed=: give SFT seeds as instruct.seeds instead"),
    ],
)
def test_bad_seeds_name_the_file_and_field(tmp_path, setting, message, fake_hub):
    with pytest.raises(ConfigError) as e:
        load_grid(OLMO1B, [f"results_dir={tmp_path}", setting])
    assert message in str(e.value) and "section2-olmo1b.yaml" in str(e.value)
