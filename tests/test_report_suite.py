"""The report's Section 2 part on generated suite rows: a real turn is called a turn, a flat suite on
few documents is "cannot tell", a flat suite on many is "no", and the figure and table are written."""

from __future__ import annotations

import numpy as np
import pytest
from overtrain.core.jsonl import append_record
from overtrain.core.rows import load_rows, write_scores
from overtrain.evaluate.report import make_report
from overtrain.evaluate.report.suite_part import average_curve, collect_suite, decide_suite

TOKENS = [1.0e12, 2.0e12, 2.3e12, 3.0e12]


def _write(path, tuning: str, task: str, accs: list[float], n: int, rng, seeds=(0,), run_sd=0.0, lr=2e-6) -> None:
    """Rows of one (tuning, task) curve: run (SFT seed) s of member m answers document j correctly
    with probability accs[m] + its run shift (sd ``run_sd``); half the documents' outcomes follow
    one shared difficulty (paired, as real members on one test set), the other half are drawn per
    run. PIQA rows carry acc_norm (0.05 above acc) as lm-eval writes it."""
    difficulty, shared = rng.random(n), rng.random(n) < 0.5
    for tokens, acc in zip(TOKENS, accs):
        for seed in seeds:
            p = acc + rng.normal(0, run_sd)
            correct = np.where(shared, difficulty < p, rng.random(n) < p).astype(np.float64)
            metrics = {"acc": correct} | ({"acc_norm": np.roll(correct, 1)} if "piqa" in task else {})
            scores = write_scores(path, {"lm_eval": {task: metrics}})
            row = {"kind": "lm_eval", "task": task, "pretrain_tokens": tokens, "scores": scores}
            row |= {k: float(v.mean()) for k, v in metrics.items()}
            row |= {"suite_model": "allenai/OLMo-1B-hf", "checkpoint": f"m{tokens:g}"}
            if tuning != "base":
                sft = {"data_name": tuning, "lr": lr, "seed": seed, "out": f"o{seed}", "model": f"m{tokens:g}"}
                row |= {"sft_data": tuning, "sft": sft}
            append_record(path, row)


def test_turn_flat_and_wide(tmp_path):
    rng = np.random.default_rng(1)
    res = tmp_path / "results.jsonl"
    # tuned on hh (2 SFT seeds, runs 0.5 points apart): ARC rises to 2.3T then drops 8 points at 3T
    # (on 2000 documents: far beyond the noise)
    _write(res, "hh", "ot_arc_easy", [0.50, 0.55, 0.58, 0.50], 2000, rng, (0, 1), 0.005)
    _write(res, "hh", "ot_piqa", [0.60, 0.61, 0.62, 0.62], 2000, rng, (0, 1), 0.005)
    # tuned on tulu: flat within 0.2 points on 20000 documents, runs 0.1 points apart: "no" at 1 point
    _write(res, "tulu", "ot_arc_easy", [0.55, 0.552, 0.551, 0.552], 20000, rng, (0, 1), 0.001)
    # base: flat on 30 documents: "cannot tell"; the last member best on 30 documents: still "cannot
    # tell" (the bound is against every earlier member, not minus infinity)
    _write(res, "base", "ot_arc_easy", [0.5, 0.5, 0.5, 0.5], 30, rng)
    _write(res, "base", "ot_arc_challenge", [0.5, 0.5, 0.5, 0.6], 30, rng)

    fams = collect_suite(load_rows(res))
    decide_suite(fams, tolerance=0.01)
    by = {f.tuning: f for f in fams}
    assert by["hh"].verdict == "catastrophic overtraining"
    arc = next(c for c in by["hh"].curves if c.task == "ot_arc_easy")
    assert arc.turn and arc.tokens[arc.best] == 2.3e12 and arc.drop == pytest.approx(0.08, abs=0.015)
    piqa = next(c for c in by["hh"].curves if c.task == "ot_piqa")
    assert not piqa.turn and piqa.metric == "acc_norm" and arc.metric == "acc" and piqa.runs == [2, 2, 2, 2]
    assert "SFT runs (run-to-run sd" in by["hh"].reason and "80% power" in by["hh"].reason
    assert by["tulu"].verdict == "no catastrophic overtraining"
    assert by["base"].verdict == "cannot tell" and "too wide" in by["base"].reason
    assert "ot_arc_challenge" in by["base"].reason and "documents only" in by["base"].reason
    # intervals hold their points; the average is the mean of the tasks
    for f in fams:
        for c in f.curves:
            assert all(lo <= a <= hi for lo, a, hi in zip(c.lo, c.acc, c.hi))
    avg = average_curve(by["hh"])
    assert avg.acc == pytest.approx([(a + b) / 2 for a, b in zip(arc.acc, piqa.acc)])

    _, text, paths = make_report([str(res)], tmp_path / "report")
    assert "Checkpoint suites" in text and "tuned on **hh**: catastrophic overtraining" in text
    assert "| ot_piqa | acc_norm |" in text
    assert any(p.name.startswith("suite_") for p in paths)


def test_one_sft_run_and_learning_rates_apart(tmp_path):
    """One SFT run per member (none repeated): "cannot tell", even for a clear drop; runs of two
    learning rates at one checkpoint are two families, never one pooled as seeds."""
    rng = np.random.default_rng(2)
    res = tmp_path / "results.jsonl"
    _write(res, "hh", "ot_arc_easy", [0.50, 0.55, 0.58, 0.50], 2000, rng, lr=2e-6)
    _write(res, "hh", "ot_arc_easy", [0.60, 0.60, 0.60, 0.60], 2000, rng, lr=2e-5)
    fams = collect_suite(load_rows(res))
    decide_suite(fams, tolerance=0.01)
    assert len(fams) == 2 and {f.settings for f in fams} == {"lr=2e-06", "lr=2e-05"}
    assert all(f.verdict == "cannot tell" and "one run per point" in f.reason for f in fams)
    assert all(c.runs == [1, 1, 1, 1] and not c.turn for f in fams for c in f.curves)


def test_without_scores_cannot_tell(tmp_path):
    res = tmp_path / "results.jsonl"
    for tokens, acc in zip(TOKENS, [0.6, 0.7, 0.7, 0.4]):
        append_record(res, {"kind": "lm_eval", "task": "t", "acc": acc, "pretrain_tokens": tokens, "suite_model": "s"})
    fams = collect_suite(load_rows(res))
    decide_suite(fams, tolerance=0.01)
    assert fams[0].verdict == "cannot tell" and "per-example scores" in fams[0].reason
