"""Calibration of the report's turn decision (``overtrain.evaluate.report.stats``) on synthetic
studies with known truth and run-to-run shifts, and its building blocks (bootstrap, pooled run
variance, Student's t, Holm, power). The rates asserted here are those of report.stats' docstring
and README.md, on fewer studies (the margins are for the count used); vectorized (~20 s)."""

import math

import numpy as np
import pytest
from overtrain.evaluate.report.stats import (
    Samples,
    curve_replicates,
    detectable_worsening,
    holm,
    holm_rows,
    interval,
    mean_interval,
    point,
    pool_runs,
    simulate,
    simulate_suite,
    stack,
    t_ppf,
    t_sf,
    turn_test,
)

pytestmark = pytest.mark.duration(13)  # seconds, about: conftest starts the longest modules first

FLAT = np.zeros(6)  # 6 budgets, as the paper's 4B..128B
TURN = np.array([0.04, 0.02, 0.0, 0.0, 0.01, 0.03])  # improves 4%, then 3% worse at the largest budget
FAMILY = 4  # curves tested together: 2 models x (ID, C4)
SUITE_FLAT = np.full(4, 0.6)  # 4 members' accuracy
SUITE_TURN = np.array([0.55, 0.58, 0.64, 0.58])  # rises 9 points, then drops 6 at the last member


def margin(rate: float, n: int) -> float:
    """Two binomial standard errors."""
    return 2 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize(("seeds", "probe", "studies"), [(1, 0, 200), (1, 3, 400), (2, 0, 400), (3, 0, 400)])
def test_calibration(seeds, probe, studies):
    """Controlled study (section 3), every run shifted by its own 1% (module doc, "Calibration"):
    one run per point is never a turn; with a probe or seeds the false-positive rate is the nominal
    5%, and at 3 seeds a 3% turn is found."""
    rng = np.random.default_rng(10 * seeds + probe)
    tests, turned = simulate(rng, [FLAT] * FAMILY, studies, seeds=seeds, probe=probe)
    if not probe and seeds == 1:
        assert not any(t.runs_measured for t in tests) and not turned.any()  # "cannot tell: one run per point"
        tests, turned = simulate(rng, [TURN * 3] + [FLAT] * (FAMILY - 1), studies, seeds=1)
        assert not turned.any()  # not even a 9% turn: examples alone never make one
        return
    fpr = turned.any(1).mean()  # family-wise: any curve of a flat study called a turn
    assert fpr <= 0.05 + margin(0.05, studies), fpr
    tests, turned = simulate(rng, [TURN] + [FLAT] * (FAMILY - 1), studies, seeds=seeds, probe=probe)
    detected = turned[:, 0].mean()
    assert detected >= {3: 0.55, 2: 0.25, 1: 0.15}[seeds], detected  # documented: 68.0%, 35.2%, 24.7% (probe)
    assert turned[:, 1:].any(1).mean() <= 0.05 + margin(0.05, studies)  # the flat ones stay flat
    # a 3% turn is never called "no catastrophic overtraining" at a 1% tolerance
    assert np.all([t.upper <= math.log(1.01) for t in tests], 0).mean() <= 0.05
    best = tests[0].best[turned[:, 0]]
    assert np.isin(best, [2, 3, 4]).mean() >= 0.95  # placed at or next to the true best budgets (2, 3)


def test_calibration_suite():
    """A Section 2 suite, one SFT run per member with a probe (3 seeds at the first and last
    member), each run 1 accuracy point off: the nominal 5%; one run per member: never a turn."""
    studies, rng = 300, np.random.default_rng(7)
    _, turned = simulate_suite(rng, [SUITE_FLAT] * 4, studies, probe=3)
    assert turned.any(1).mean() <= 0.05 + margin(0.05, studies)
    _, turned = simulate_suite(rng, [SUITE_TURN] + [SUITE_FLAT] * 3, studies, seeds=3, n=1000)
    assert turned[:, 0].mean() >= 0.75  # documented: 86.7%
    tests, turned = simulate_suite(rng, [SUITE_TURN] * 4, 50)
    assert not turned.any() and not tests[0].runs_measured


def test_run_variance_is_pooled_with_its_df():
    """``pool_runs`` recovers a known run sd from 3 runs per cell (and its example part), counts
    (runs - 1) df per cell, ignores one-run cells; the t reference matches printed tables."""
    rng = np.random.default_rng(3)
    n, run_sd, noise_sd = 300, 0.02, 0.2
    cells = [Samples(rng.normal(0, noise_sd, (3, n)) + rng.normal(0, run_sd, (3, 1))) for _ in range(200)]
    rv = pool_runs(cells + [Samples(rng.normal(0, 1, (1, n)))])
    assert rv.df == 400 and rv.cells == 200
    expected = run_sd**2 + noise_sd**2 / n  # one run's statistic: its shift and its examples' noise
    assert rv.var == pytest.approx(expected, rel=3 * math.sqrt(2 / 400))  # 3 sd of a 400-df variance
    assert rv.within == pytest.approx(noise_sd**2 / n, rel=0.02)  # 180,000 residuals: precise
    assert pool_runs([Samples(np.zeros((1, n)))]) is None
    # Student's t: printed tables (4 digits), the normal at inf, and sf inverts ppf
    nu = np.array([1.0, 2.0, 5.0, 10.0, 30.0, np.inf])
    assert t_ppf(0.975, nu) == pytest.approx([12.706, 4.303, 2.571, 2.228, 2.042, 1.960], abs=6e-4)
    assert t_ppf(0.8, nu) == pytest.approx([1.376, 1.061, 0.920, 0.879, 0.854, 0.842], abs=6e-4)
    assert t_sf(t_ppf(0.9975, nu), nu) == pytest.approx(0.0025, rel=1e-5)
    assert t_sf(np.array([-np.inf, 0.0, np.inf]), 3.0).tolist() == [1.0, 0.5, 0.0]
    lo, hi = mean_interval([1.0, 3.0])  # sd sqrt 2, n 2: half-width t_{0.975,1} sqrt2 / sqrt2
    assert (hi - 2.0) == pytest.approx(12.706, abs=6e-4) and math.isnan(mean_interval([1.0])[0])
    # power (tests/test_power.py checks it against the report's test): known variances, the normal
    # quantiles (1 - 0.05/20 and 0.8) times the sd; none without a run variance
    z = 2.807033768343811 + 0.8416212335729143
    assert detectable_worsening(0.005**2, 1e-4, math.inf, 20) == pytest.approx(z * math.sqrt(0.005**2 + 1e-4), 1e-9)
    assert detectable_worsening(0.005**2, 1e-4, 4, 20) > detectable_worsening(0.005**2, 1e-4, 40, 20)  # df cost
    assert detectable_worsening(0.005**2, None, 0, 20) is None


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
