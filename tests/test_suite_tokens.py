"""Suites by token count: ``suite.tokens: [2.3T, 3T]`` resolves to the nearest revision of the hub
repository's branch list (``huggingface_hub.list_repo_refs``, monkeypatched here with OLMo-1B-hf-style
names) or of a local mirror's folders, recorded in the plan and in grid.json; a count without a
revision in tolerance is one error naming the nearest ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from overtrain import cli
from overtrain.core.errors import ConfigError
from overtrain.core.suite import list_revisions, nearest_revisions
from overtrain.launch.plan import expand, plan_summary
from overtrain.launch.spec import claim_results_dir, load_grid
from suite_fixture import OLMO, TinySuite  # the fixtures tiny_suite and fake_hub: conftest.py

REPO = Path(__file__).resolve().parents[1]


def test_olmo1b_grid_resolves_the_papers_counts_from_the_hub(fake_hub, tmp_path, capsys):
    grid = str(REPO / "configs/grids/section2-olmo1b.yaml")
    spec = load_grid(grid, [f"results_dir={tmp_path}"])
    members = plan_summary(spec, expand(spec))["suite_members"]
    picked = {m["requested"]: (m["revision"], m["tokens"]) for m in members}
    # 2.3e12 / 4,194,304 = 548,363 steps -> step 548000 (2,298.5B, named 2298B); 3e12 -> 715,256 -> 715000
    assert picked[2_300_000_000_000] == ("step548000-tokens2298B", 2_298_000_000_000)
    assert picked[3_000_000_000_000] == ("step715000-tokens2998B", 2_998_000_000_000)
    for m in members:  # every count lands within half a checkpoint spacing (1000 steps) of its revision
        assert abs(m["tokens"] - m["requested"]) <= 500 * 4_194_304 + 10**9  # + the name's rounding
    assert fake_hub == [OLMO]  # one hub call for the whole plan
    sft = next(j for j in expand(spec) if j.id == "instruct/step548000-tokens2298B_hh")
    assert sft.argv[1] == f"{OLMO}@step548000-tokens2298B" and "tokens=2298000000000" in sft.argv
    claim_results_dir(spec, grid)
    record = json.loads((tmp_path / "grid.json").read_text())
    assert {m["name"]: m["requested"] for m in record["suite_members"]}["step715000-tokens2998B"] == 3 * 10**12
    assert cli.main(["grid", "plan", grid, f"results_dir={tmp_path}", "quiet=true"]) == 0
    assert "suite: 2.3T tokens -> step548000-tokens2298B (-0.09%)" in capsys.readouterr().out


def test_unresolvable_counts_are_one_error_naming_the_nearest(fake_hub, tmp_path):
    grid = str(REPO / "configs/grids/section2-olmo1b.yaml")
    with pytest.raises(ConfigError) as e:  # OLMo-1B stops at ~3.1T; 5T and 4T are both named, once
        load_grid(grid, [f"results_dir={tmp_path}", "suite.tokens=[2.3T,4T,5T]"])
    msg = str(e.value)
    assert msg.count("no revision within 2.0%") == 1 and "4T (nearest: step738000-tokens3095B (-22.6%)" in msg
    assert "5T (nearest: step738000-tokens3095B (-38.1%), step737000-tokens3091B" in msg
    with pytest.raises(ConfigError, match="both resolve to step548000-tokens2298B"):
        load_grid(grid, [f"results_dir={tmp_path}", "suite.tokens=[2.3T,2.299T]"])
    with pytest.raises(ConfigError, match="either revisions or tokens"):
        load_grid(grid, [f"results_dir={tmp_path}", "suite.revisions=[step548000-tokens2298B]"])
    with pytest.raises(
        ConfigError,
        match="suite.model: suite allenai/OLMo-1B-nope: cannot list the hub repository's branches: OSError: 404",
    ):
        load_grid(grid, [f"results_dir={tmp_path}", "suite.model=allenai/OLMo-1B-nope"])


def test_nearest_revisions_rules(tmp_path):
    for name in ("main", "step5-tokens1K", "step10-tokens2K", "step20-tokens4K", "stage2-ingredient1-step5-tokens9K"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not a revision")
    revs = list_revisions(str(tmp_path))
    assert revs == sorted(
        ["main", "stage2-ingredient1-step5-tokens9K", "step10-tokens2K", "step20-tokens4K", "step5-tokens1K"]
    )
    # 3K is 1K from both 2K and 4K: the earlier checkpoint; 9K is no candidate (a stage-2 count)
    assert nearest_revisions(revs, [3000, 1100, 4000], 0.5) == [
        ("step10-tokens2K", 2000),
        ("step5-tokens1K", 1000),
        ("step20-tokens4K", 4000),
    ]
    assert nearest_revisions(revs, [2040], 0.02) == [("step10-tokens2K", 2000)]  # 1.96% away: in tolerance
    with pytest.raises(ConfigError, match=r"2.06K \(nearest: step10-tokens2K \(-2.9%\), step5-tokens1K"):
        nearest_revisions(revs, [2060], 0.02)
    with pytest.raises(ConfigError, match="no revision names a token count"):
        nearest_revisions(["main", "ckpt_1"], [1000], 0.1)


def test_local_mirror_resolves_like_the_hub(tiny_suite: TinySuite, tmp_path):
    grid = str(REPO / "configs/grids/section2-tiny.yaml")
    ok = [f"suite.model={tiny_suite.root}", f"results_dir={tmp_path}", "suite.revisions=[]"]
    spec = load_grid(grid, [*ok, "suite.tokens=[1K,3.9K]", "suite.tolerance=0.05"])
    members = plan_summary(spec, expand(spec))["suite_members"]
    assert [(m["revision"], m["tokens"], m["requested"]) for m in members] == [
        ("step5-tokens1K", 1000, 1000),
        ("step20-tokens4K", 4000, 3900),
    ]
    assert {j.argv[1] for j in expand(spec) if j.kind == "instruct"} == {
        str(tiny_suite.members[0].resolve()),
        str(tiny_suite.members[2].resolve()),
    }
    with pytest.raises(ConfigError, match=r"3K \(nearest: step10-tokens2K \(-33.3%\), step20-tokens4K \(\+33.3%\)"):
        load_grid(grid, [*ok, "suite.tokens=[3K]"])
