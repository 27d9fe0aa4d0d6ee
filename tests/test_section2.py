"""The paper's Section 2 as a grid: a suite stage (members with token counts), instruction tuning
and generalist evaluation jobs, costs in `grid plan`, bad input refused before any job, and (the
tiny suite of suite_fixture) the whole grid run end to end to a report with intervals and a verdict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from overtrain import cli
from overtrain.core.errors import ConfigError
from overtrain.core.paths import data_root
from overtrain.launch.plan import expand
from overtrain.launch.spec import load_grid
from suite_fixture import TinySuite  # the fixtures tiny_suite and fake_hub are registered in conftest.py

pytestmark = pytest.mark.duration(85)  # seconds, about: conftest starts the longest modules first

REPO = Path(__file__).resolve().parents[1]


def test_olmo1b_grid_plans_with_costs(fake_hub, capsys):
    spec = load_grid(str(REPO / "configs/grids/section2-olmo1b.yaml"))  # members: the hub's branches (faked)
    jobs = expand(spec)
    members, tunings = len(spec.suite.tokens), len(spec.instruct.datasets)
    kinds = [j.kind for j in jobs]
    assert kinds.count("instruct") == members * tunings
    assert kinds.count("lm-eval") == members * (tunings + 1)  # every tuned model and every member before tuning
    assert kinds[-1] == "report" and len(jobs[-1].after) == len(jobs) - 1
    sft = next(j for j in jobs if j.id == "instruct/step715000-tokens2998B_hh")  # the 3T member
    assert sft.argv[:2] == ["sft", "allenai/OLMo-1B-hf@step715000-tokens2998B"] and "tokens=2998000000000" in sft.argv
    assert sft.flops == pytest.approx(6 * 1.18e9 * spec.instruct.train_tokens_estimate)
    base = next(j for j in jobs if j.id == "lm-eval/step715000-tokens2998B_base")
    assert base.after == [] and "pretrain_tokens=2998000000000" in base.argv
    tuned = next(j for j in jobs if j.id == "lm-eval/step715000-tokens2998B_hh")
    assert tuned.after == [sft.id] and tuned.argv[1] == str(sft.info["out"])
    assert cli.main(["grid", "plan", str(REPO / "configs/grids/section2-olmo1b.yaml"), "quiet=true"]) == 0
    out = capsys.readouterr().out
    assert "instruct" in out and "GPU-hours" in out and "3T tokens -> step715000-tokens2998B" in out


def test_bad_suites_fail_before_any_job(tiny_suite: TinySuite, tmp_path):
    grid = str(REPO / "configs/grids/section2-tiny.yaml")
    ok = [f"suite.model={tiny_suite.root}", f"results_dir={tmp_path}"]
    assert len(expand(load_grid(grid, ok))) > 0
    with pytest.raises(ConfigError, match="step999-tokens9K"):  # a revision that does not exist (offline: no dir)
        load_grid(grid, [*ok, "suite.revisions=[step5-tokens1K,step999-tokens9K]"])
    (tiny_suite.root.parent / "odd").mkdir(exist_ok=True)
    shutil.copytree(tiny_suite.members[0], tmp_path / "s" / "ckpt_1")
    with pytest.raises(ConfigError, match="ckpt_1.*suite.tokens.ckpt_1"):  # no token count in the name
        load_grid(grid, [f"suite.model={tmp_path / 's'}", "suite.revisions=[ckpt_1]"])
    assert load_grid(grid, [f"suite.model={tmp_path / 's'}", "suite.revisions=[ckpt_1]", "suite.tokens={ckpt_1: 1K}"])
    cfg = tmp_path / "s" / "ckpt_1" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(ConfigError, match="config.json.*architectures"):  # an architecture transformers lacks
        load_grid(grid, [f"suite.model={tmp_path / 's'}", "suite.revisions=[ckpt_1]", "suite.tokens={ckpt_1: 1K}"])


def test_tiny_suite_grid_end_to_end(tiny_suite: TinySuite, tmp_path):
    """The CPU-sized grid: 3 members x (SFT on real GSM8k chat, lm-eval on 2 offline sets before and
    after), then the report: a curve per (tuning, task) against pre-training tokens with intervals."""
    out = tmp_path / "grid"
    argv = ["grid", "run", "configs/grids/section2-tiny.yaml", f"suite.model={tiny_suite.root}", f"results_dir={out}"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "overtrain", *argv], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    from overtrain.core.rows import load_rows, read_scores

    rows = [r for r in load_rows(sorted(out.glob("lm_eval/*/results.jsonl"))) if r.kind == "lm_eval"]
    assert len(rows) == 3 * 2 * 2  # members x (before, after) x tasks
    for r in rows:
        d = r.to_dict()
        assert d["suite_model"] == str(tiny_suite.root) and d["pretrain_tokens"] in tiny_suite.tokens
        assert d.get("sft_data") in (None, str(data_root() / "gsm8k" / "train.jsonl"))  # None: before tuning
        scores = read_scores(r)
        assert scores is not None and float(scores[f"lm_eval.{d['task']}.acc"].mean()) == pytest.approx(d["acc"], abs=0)
    report = (out / "report" / "report.md").read_text()
    assert "Checkpoint suites" in report
    assert "before instruction tuning:" in report and "tuned on **gsm8k**:" in report
    assert (out / "report" / f"suite_{tiny_suite.root.name}.png").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "overtrain", *argv], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert again.returncode == 0 and "9 already done, 1 to run" in again.stdout  # only the report reruns
