"""Calibration of the report's turn decision (``overtrain.evaluate.report_stats``) on synthetic
studies with known truth, and its building blocks (bootstrap, Holm). The rates measured here are
stated in report_stats' docstring and README.md; the simulation is vectorized (a few seconds)."""

import math

import numpy as np
import pytest
from overtrain.evaluate.report_stats import (
    Samples,
    curve_replicates,
    holm,
    holm_rows,
    interval,
    point,
    simulate,
    stack,
    turn_test,
)

FLAT = np.zeros(6)  # 6 budgets, as the paper's 4B..128B
TURN = np.array([0.04, 0.02, 0.0, 0.0, 0.01, 0.03])  # improves 4%, then 3% worse at the largest budget
FAMILY = 4  # curves tested together: 2 models x (ID, C4)


def margin(rate: float, n: int) -> float:
    """Two binomial standard errors."""
    return 2 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize(("seeds", "studies"), [(1, 1000), (3, 300)])
def test_calibration(seeds, studies):
    rng = np.random.default_rng(seeds)
    tests, turned = simulate(rng, [FLAT] * FAMILY, studies, seeds=seeds)
    fpr = turned.any(1).mean()  # family-wise: any curve of a flat study called a turn
    assert fpr <= 0.05 + margin(0.05, studies), fpr
    no = np.all([t.upper <= math.log(1.05) for t in tests], 0).mean()  # flat, tolerance 5%: "no"
    assert no >= 0.9, no

    tests, turned = simulate(rng, [TURN] + [FLAT] * (FAMILY - 1), studies, seeds=seeds)
    detected = turned[:, 0].mean()
    assert detected >= 0.8 if seeds == 1 else detected >= 0.5, detected
    assert turned[:, 1:].any(1).mean() <= 0.05 + margin(0.05, studies)  # the flat ones stay flat
    # a 3% turn is never called "no catastrophic overtraining" at a 1% tolerance
    assert np.all([t.upper <= math.log(1.01) for t in tests], 0).mean() <= 0.05
    best = tests[0].best[turned[:, 0]]
    assert np.isin(best, [2, 3, 4]).mean() >= 0.95  # placed at or next to the true best budgets (2, 3)


def test_bootstrap_is_paired_and_intervals_cover():
    rng = np.random.default_rng(0)
    n = 500
    difficulty = rng.normal(0.7, 0.3, n)
    pts = [Samples(difficulty[None] + 0.01 * i + rng.normal(0, 0.02, (1, n))) for i in range(3)]
    reps = curve_replicates(pts, rng, 2000)
    assert reps.shape == (2000, 3)
    lo, hi = interval(reps)
    y = np.array([float(point(p)) for p in pts])
    assert np.all(lo < np.exp(y)) and np.all(np.exp(y) < hi)
    # paired: the differences are far more precise than the points (shared difficulty cancels)
    assert np.std(reps[:, 2] - reps[:, 0]) < 0.2 * np.std(reps[:, 0])
    t = turn_test(y, reps)
    assert t.p[0] < 1e-6 and t.best == 0  # 2% worse, paired: certain

    # a ratio metric (C4: NLL summed per window / tokens) and the pooling over seeds
    s = stack([np.array([10.0, 20.0]), np.array([30.0, 30.0])], [np.array([10, 10]), np.array([10, 10])])
    assert s.seeds == 2 and float(point(s)) == pytest.approx(math.log((math.exp(1.5) + math.exp(3.0)) / 2))
    assert stack([np.zeros(3), np.zeros(4)]) is None  # different examples: not paired


def test_holm():
    p = [np.array([0.001, 0.04]), np.array([0.012, 0.5])]
    assert [list(r) for r in holm(p)] == [[True, False], [True, False]]  # 0.001 <= .05/4, 0.012 <= .05/3
    assert list(holm_rows(np.array([0.03, 0.04]))) == [False, False]  # 0.03 > .05/2: stop
    assert holm([np.zeros(0)])[0].size == 0
