"""`overtrain alpaca-eval` (evaluate.alpaca) through the real alpaca-eval package, offline: tiny suite
members answer five instructions, the largest member judges them with AlpacaEval 2's recipe and a local
decoder, the package parses, un-swaps and scores; rows, scores and the suite report's curve are checked
(wiring, not judge quality). An API judge without its key is one error before any generation."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import numpy as np
import pytest
from overtrain.cli import main as cli
from overtrain.core.jsonl import append_record, read_records
from overtrain.core.rows import AlpacaEvalRow, load_rows, parse_row, read_scores, write_scores
from overtrain.data.chat import DEFAULT_CHAT_TEMPLATE
from overtrain.evaluate import alpaca
from overtrain.evaluate.report.suite_part import average_curve, collect_suite, decide_suite
from suite_fixture import TinySuite  # the fixture tiny_suite is registered in conftest.py

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny ops on 2 shared cores

# AlpacaEval-shaped records (instruction, reference output, its generator, the source subset)
RECORDS = [
    ("Name three primary colors.", "Red, blue and yellow.", "helpful_base"),
    ("What is the capital of France?", "The capital of France is Paris.", "helpful_base"),
    ("Give a synonym for happy.", "Joyful.", "koala"),
    ("Write a haiku about rain.", "Soft rain on the roof,\nthe gutters hum a low tune,\nthe street shines.", "oasst"),
    ("How many legs does a spider have?", "A spider has eight legs.", "selfinstruct"),
]


def write_instructions(folder):
    path = folder / "eval.json"
    rows = [{"instruction": i, "output": o, "generator": "gpt4_1106_preview", "dataset": d} for i, o, d in RECORDS]
    path.write_text(json.dumps(rows))
    return path


def write_lc_data(folder):
    """A df_gamed.csv in the hub file's columns (two gamed baselines' preferences on the five
    instructions, their length differences, the instructions' difficulty): what the GLM reads."""
    rng = np.random.default_rng(0)
    with open(folder / "df_gamed.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "instruction_difficulty", "preference", "std_delta_len", "not_gamed_baseline", "model"])
        for model, sign in (("gamed_verbose", 1), ("gamed_concise", -1)):
            for i, diff in enumerate([0.3, -0.5, 1.1, -0.2, 0.6]):
                w.writerow([i, diff, 0.5 + 0.4 * sign * rng.random(), sign * (0.5 + rng.random()), False, model])
    return folder


def test_members_judged_by_a_local_model(tiny_suite: TinySuite, tmp_path):
    data = write_instructions(tmp_path)
    lc = write_lc_data(tmp_path)
    results = tmp_path / "results.jsonl"
    judge = tiny_suite.members[2]
    for member in tiny_suite.members[:2]:
        argv = ["alpaca-eval", str(member), f"instructions={data}", f"judge={judge}", f"lc_data={lc}"]
        argv += ["max_new_tokens=6", "batch_size=2", f"out={tmp_path / member.name}", f"results={results}"]
        assert cli(argv) == 0

    rows = load_rows(results)
    assert [type(r) for r in rows] == [AlpacaEvalRow] * 2
    assert [parse_row(r.to_dict()).to_dict() for r in rows] == [r.to_dict() for r in rows]  # one schema, round trip
    tulu = hashlib.sha256(DEFAULT_CHAT_TEMPLATE.encode()).hexdigest()[:16]  # the tiny tokenizer has no template
    for row, member, tokens in zip(rows, tiny_suite.members, tiny_suite.tokens):
        d = row.to_dict()
        assert d["pretrain_tokens"] == tokens and d["suite_revision"] == member.name
        assert d["task"] == f"alpaca_eval/local-{judge.name}" and d["alpaca_eval_version"] == "0.6.6"
        assert d["n_instructions"] == d["n_total"] == 5 and d["n_missing"] == 0
        assert d["n_wins"] + d["n_wins_base"] + d["n_draws"] == 5
        assert d["settings"]["max_new_tokens"] == 6 and d["settings"]["judge"] == str(judge)
        assert not {"out", "results", "device", "batch_size"} & set(d["settings"])  # change no result
        gen = d["generation"]
        assert gen["greedy"] and gen["max_new_tokens"] == 6 and gen["chat_template_sha256"] == tulu

        # the package's per-instruction annotations: the parser read our decoder's log-probabilities of m
        # and M (preference 2 - P(m) / (P(m) + P(M))), and un-swapped the outputs it had swapped (3 - that)
        ann = json.loads((tmp_path / member.name / "annotations.json").read_text())
        assert [a["instruction"] for a in ann] == [r[0] for r in RECORDS]
        swapped = []
        for a in ann:
            (entry,) = a["preference_raw_completion"]["logprobs"]["content"]
            lp = {t["token"]: t["logprob"] for t in entry["top_logprobs"]}
            q = 2 - math.exp(lp["m"] - np.logaddexp(lp["m"], lp["M"]))
            # annotations.json holds 15 decimals (pandas' most): |error| <= 5e-16 per value, a few after exp
            assert min(abs(a["preference"] - q), abs(a["preference"] - (3 - q))) < 1e-13
            swapped.append(abs(a["preference"] - q) > 1e-13)
            assert 0 <= a["glm_preference"] <= 1
        # the package's seeded swap (by instruction) put the member's output first for some, not all
        assert 0 < sum(swapped) < 5
        assert d["judge_prompts_cut"] == 5  # the tiny judge's 128-token context: every prompt keeps its end
        outputs = json.loads((tmp_path / member.name / "outputs.json").read_text())
        assert [o["generator"] for o in outputs] == [member.name] * 5

        # the scores file: the row's rates are the means of the per-instruction values
        scores = read_scores(row)
        win = scores[f"alpaca_eval.{d['task']}.win_rate"]
        p = np.array([a["preference"] for a in ann]) - 1
        assert win == pytest.approx(p, abs=1e-15) and list(scores[f"alpaca_eval.{d['task']}.index"]) == list(range(5))
        # the package's mean and sem (pandas, percent) against numpy's: 5 terms, a few ulps
        assert d["win_rate"] == pytest.approx(p.mean(), rel=1e-12)
        assert d["win_rate_se"] == pytest.approx(p.std(ddof=1) / math.sqrt(5), rel=1e-12)
        glm = scores[f"alpaca_eval.{d['task']}.lc_win_rate"]
        assert d["lc_win_rate"] == pytest.approx(glm.mean(), rel=1e-12) and 0 <= d["lc_win_rate"] <= 1

    # the suite report: one win-rate curve against pre-training tokens, with intervals, judged (two
    # members, documents only: the base family), never averaged with accuracies
    (fam,) = collect_suite(rows)
    (curve,) = fam.curves
    assert curve.metric == "win_rate" and curve.tokens == tiny_suite.tokens[:2] and curve.n == 5
    assert curve.acc == pytest.approx([r.win_rate for r in rows], rel=1e-12) and curve.lo is not None
    decide_suite([fam], tolerance=0.01)
    assert fam.verdict in ("cannot tell", "catastrophic overtraining", "no catastrophic overtraining")
    assert average_curve(fam) is None


def test_api_judge_without_key_stops_before_generation(tiny_suite: TinySuite, tmp_path, monkeypatch, capsys):
    for var in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH"):
        monkeypatch.delenv(var, raising=False)

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(alpaca, "generate_answers", no_generation)
    data, out = write_instructions(tmp_path), tmp_path / "out"
    member = str(tiny_suite.members[0])
    argv = ["alpaca-eval", member, f"instructions={data}", f"out={out}", "length_controlled=false"]
    assert cli([*argv, "judge=weighted_alpaca_eval_gpt4_turbo"]) == 2
    err = capsys.readouterr().err
    assert "calls openai_completions, which needs an API key: set OPENAI_API_KEY or OPENAI_API_KEYS" in err
    assert not out.exists()
    # an unknown annotator config: named, with the package's near names
    assert cli([*argv, "judge=weighted_alpaca_eval_gpt4_turb"]) == 2
    assert "did you mean weighted_alpaca_eval_gpt4_turbo" in capsys.readouterr().err
    # a record without a reference output: named by file and record
    data.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Say bye."}]))
    assert cli([*argv, f"judge={tiny_suite.members[2]}"]) == 2
    assert f"{data}: record 1: 'output' must be a non-empty string" in capsys.readouterr().err
    data.write_text(
        json.dumps([{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Say hi.", "output": "Yo."}])
    )
    assert cli([*argv, f"judge={tiny_suite.members[2]}"]) == 2
    assert f"{data}: record 1: the same instruction as record 0" in capsys.readouterr().err


def _alpaca_rows(path, tuning: str, task: str, wins: list[float], n: int, rng, seeds=(0, 1)) -> None:
    """AlpacaEval rows of a tuned family: run s of member m wins instruction j with probability wins[m]
    (instructions share a difficulty, as real members on one set), preferences 0/1."""
    difficulty = rng.random(n)
    for tokens, w in zip([1e12, 2e12, 3e12], wins):
        for seed in seeds:
            p = (difficulty < w + rng.normal(0, 0.005)).astype(np.float64)
            scores = write_scores(path, {"alpaca_eval": {task: {"win_rate": p, "index": np.arange(n)}}})
            sft = {"data_name": tuning, "lr": 2e-6, "seed": seed, "model": f"m{tokens:g}"}
            row = AlpacaEvalRow(task=task, suite_model="allenai/OLMo-1B-hf", pretrain_tokens=int(tokens), sft=sft)
            row.sft_data, row.win_rate, row.n_total = tuning, float(p.mean()), n
            append_record(path, {**row.to_dict(), "scores": scores})


def test_report_tests_win_rate_with_the_family(tmp_path):
    """Win rate drops 10 points at the last member (on 1000 instructions, 2 SFT seeds): a turn named in
    the family's verdict, beside an accuracy task; the generalist average leaves the win rate out."""
    rng = np.random.default_rng(3)
    res = tmp_path / "results.jsonl"
    task = "alpaca_eval/weighted_alpaca_eval_gpt4_turbo"
    _alpaca_rows(res, "hh", task, [0.40, 0.45, 0.35], 1000, rng)
    for t, accs in (("ot_arc_easy", [0.5, 0.5, 0.5]), ("ot_copa", [0.6, 0.6, 0.6])):
        for tokens, acc in zip([1e12, 2e12, 3e12], accs):
            for seed in (0, 1):
                c = (rng.random(1000) < acc).astype(np.float64)
                scores = write_scores(res, {"lm_eval": {t: {"acc": c}}})
                sft = {"data_name": "hh", "lr": 2e-6, "seed": seed, "model": f"m{tokens:g}"}
                row = {
                    "kind": "lm_eval",
                    "task": t,
                    "acc": float(c.mean()),
                    "pretrain_tokens": tokens,
                    "scores": scores,
                }
                append_record(res, row | {"suite_model": "allenai/OLMo-1B-hf", "sft_data": "hh", "sft": sft})
    assert len(read_records(res)) == 18
    (fam,) = collect_suite(load_rows(res))
    decide_suite([fam], tolerance=0.01)
    win = next(c for c in fam.curves if c.task == task)
    assert win.metric == "win_rate" and win.runs == [2, 2, 2] and win.run_var is not None
    assert win.turn and win.tokens[win.best] == 2e12 and win.drop == pytest.approx(0.10, abs=0.03)
    assert fam.verdict == "catastrophic overtraining" and task in fam.reason
    avg = average_curve(fam)
    accs = [c for c in fam.curves if c.metric == "acc"]
    assert len(accs) == 2 and avg.acc == pytest.approx([(a + b) / 2 for a, b in zip(accs[0].acc, accs[1].acc)])

    from overtrain.evaluate.report import make_report

    _, text, paths = make_report([str(res)], tmp_path / "report")
    assert f"| {task} | win_rate |" in text and "tuned on **hh**: catastrophic overtraining" in text
    assert any(p.name.startswith("suite_") for p in paths)


def test_grid_plans_alpaca_eval_after_each_sft_run(tmp_path, fake_hub):
    """``instruct.alpaca_eval``: one alpaca-eval job per tuned model, after its SFT run, with its compute;
    off by default, and then the grid's jobs and fingerprint are those from before the field."""
    from overtrain.core.paths import CONFIG_ROOT
    from overtrain.launch.plan import expand, plan_summary
    from overtrain.launch.spec import grid_fingerprint, load_grid

    olmo1b = str(CONFIG_ROOT / "grids" / "section2-olmo1b.yaml")
    plain = load_grid(olmo1b, [f"results_dir={tmp_path}"])
    assert plain.instruct.alpaca_eval is None
    assert not any(j.kind == "alpaca-eval" for j in expand(plain))
    spec = load_grid(olmo1b, [f"results_dir={tmp_path}", "instruct.alpaca_eval={args: [limit=200]}"])
    assert grid_fingerprint(spec) != grid_fingerprint(plain)
    jobs = expand(spec)
    sft = {j.id: j for j in jobs if j.kind == "instruct"}
    ae = [j for j in jobs if j.kind == "alpaca-eval"]
    assert len(ae) == len(sft) == 2 * len(spec.suite.tokens or spec.suite.revisions)
    for j in ae:
        (after,) = j.after
        assert j.argv[1] == sft[after].info["out"] and "judge=weighted_alpaca_eval_gpt4_turbo" in j.argv
        assert "limit=200" in j.argv and any(a.startswith("results=") for a in j.argv)
        assert j.flops == pytest.approx(2 * 805 * 600 * 1.18e9, rel=0.01)  # 2N per token, suite.params 1.18B
    assert plan_summary(spec, jobs)["by_kind"]["alpaca-eval"]["jobs"] == len(ae)
