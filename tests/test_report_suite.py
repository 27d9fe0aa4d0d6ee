"""The report's Section 2 part on generated suite rows: a real turn is called a turn, a flat suite on
few documents is "cannot tell", a flat suite on many is "no", and the figure and table are written."""

from __future__ import annotations

import numpy as np
import pytest
from overtrain.core.results import append_row
from overtrain.core.rows import load_rows, write_scores
from overtrain.evaluate.report import make_report
from overtrain.evaluate.report_suite import average_curve, collect_suite, decide_suite

TOKENS = [1.0e12, 2.0e12, 2.3e12, 3.0e12]


def _write(path, tuning: str, task: str, accs: list[float], n: int, rng: np.random.Generator) -> None:
    """Rows of one (tuning, task) curve: member m answers document j correctly with probability
    accs[m]; half the documents' outcomes follow one shared difficulty (paired, as real members on
    one test set), the other half are drawn per member."""
    difficulty, shared = rng.random(n), rng.random(n) < 0.5
    for tokens, acc in zip(TOKENS, accs):
        correct = np.where(shared, difficulty < acc, rng.random(n) < acc).astype(np.float64)
        scores = write_scores(path, {"lm_eval": {task: {"acc": correct}}})
        row = {"kind": "lm_eval", "task": task, "acc": float(correct.mean()), "pretrain_tokens": tokens}
        row |= {"suite_model": "allenai/OLMo-1B-hf", "scores": scores, "checkpoint": f"m{tokens:g}"}
        if tuning != "base":
            row["sft_data"] = tuning
        append_row(path, row)


def test_turn_flat_and_wide(tmp_path):
    rng = np.random.default_rng(1)
    res = tmp_path / "results.jsonl"
    # tuned on hh: ARC rises to 2.3T then drops 8 points at 3T (on 2000 documents: far beyond noise)
    _write(res, "hh", "ot_arc_easy", [0.50, 0.55, 0.58, 0.50], 2000, rng)
    _write(res, "hh", "ot_piqa", [0.60, 0.61, 0.62, 0.62], 2000, rng)
    # tuned on tulu: flat within 0.2 points on 20000 documents: "no" at a 1-point tolerance
    _write(res, "tulu", "ot_arc_easy", [0.55, 0.552, 0.551, 0.552], 20000, rng)
    # base: flat on 30 documents: "cannot tell"
    _write(res, "base", "ot_arc_easy", [0.5, 0.5, 0.5, 0.5], 30, rng)

    fams = collect_suite(load_rows(res))
    decide_suite(fams, tolerance=0.01)
    by = {f.tuning: f for f in fams}
    assert by["hh"].verdict == "catastrophic overtraining"
    arc = next(c for c in by["hh"].curves if c.task == "ot_arc_easy")
    assert arc.turn and arc.tokens[arc.best] == 2.3e12 and arc.drop == pytest.approx(0.08, abs=0.01)
    assert not next(c for c in by["hh"].curves if c.task == "ot_piqa").turn
    assert by["tulu"].verdict == "no catastrophic overtraining"
    assert by["base"].verdict == "cannot tell" and "too wide" in by["base"].reason
    # intervals hold their points; the average is the mean of the tasks
    for f in fams:
        for c in f.curves:
            assert all(lo <= a <= hi for lo, a, hi in zip(c.lo, c.acc, c.hi))
    avg = average_curve(by["hh"])
    assert avg.acc == pytest.approx([(a + b) / 2 for a, b in zip(arc.acc, by["hh"].curves[1].acc)])

    _, text, paths = make_report([str(res)], tmp_path / "report")
    assert "Checkpoint suites" in text and "tuned on **hh**: catastrophic overtraining" in text
    assert any(p.name.startswith("suite_") for p in paths)


def test_without_scores_cannot_tell(tmp_path):
    res = tmp_path / "results.jsonl"
    for tokens, acc in zip(TOKENS, [0.6, 0.7, 0.7, 0.4]):
        append_row(res, {"kind": "lm_eval", "task": "t", "acc": acc, "pretrain_tokens": tokens, "suite_model": "s"})
    fams = collect_suite(load_rows(res))
    decide_suite(fams, tolerance=0.01)
    assert fams[0].verdict == "cannot tell" and "per-example scores" in fams[0].reason
