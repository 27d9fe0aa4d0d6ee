"""The power figure (``evaluate.report.stats.detectable_worsening``, what the report and ``grid plan``
state) against the report's own decision: at the worsening it returns, the report's turn test finds
it in 80% of simulated studies.

``test_the_figure_is_the_reports_detection_rate`` runs the report's real pipeline
(``report.stats.simulate``: per-example scores, the paired bootstrap, the pooled run variance, the
Satterthwaite t reference, Holm over the family) on N = 2000 studies of a planned setting; the
rejection rate's binomial standard error at 0.8 is sqrt(0.8 * 0.2 / 2000) = 0.0089, the margin 3 of
them (0.027). The draws are seeded: deterministic; the margin says how far an exact figure may land.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from overtrain.evaluate.report.stats import (
    RunVariance,
    Samples,
    _components,
    _runs,
    curve_replicates,
    detectable,
    detectable_worsening,
    detection_rate,
    point,
    pool_runs,
    simulate,
    t_ppf,
    t_sf,
    turn_test,
)

POWER, ALPHA = 0.8, 0.05


@pytest.mark.parametrize("seeds, probe", [(1, 3), (3, 0)])
def test_the_figure_is_the_reports_detection_rate(seeds, probe):
    """A planned study (1 model, ID and C4: 2 curves of 6 budgets, 10 tests; RTE's 277 examples, the
    calibration's noise; one seed with a probe of 3 at the first and the last budget (4 df per
    metric), or 3 seeds (12 df)), converted as ``grid plan`` does: sigma^2 = run_sd^2 + (1 - rho)
    example_sd^2 / n per run, Var(d) = (1/S_a + 1/S_b) sigma^2. The worsening sits on the
    comparison with the fewest runs (the one the figure is the largest for); the rest of that curve
    is far above its best budget and the other curve is flat. ~2 s each."""
    n, example_sd, noise_sd, run_sd, studies = 277, 0.3, 0.1, 0.01, 2000
    runs = _runs(seeds, probe, 6)
    df = sum(r - 1 for r in runs)  # one curve per metric: its cells are the pool
    weights = [1 / runs[-1] + 1 / r for r in runs[:-1]]
    sigma2 = run_sd**2 + noise_sd**2 / n  # (1 - rho) example_sd^2 = noise_sd^2
    delta = detectable_worsening(0.0, max(weights) * sigma2, df, 10)
    truth = np.full(6, 0.5)
    truth[int(np.argmax(weights))], truth[-1] = 0.0, delta
    _, rejected = simulate(
        np.random.default_rng(seeds), [truth, np.zeros(6)], studies, n, seeds, probe, example_sd, noise_sd, run_sd,
        replicates=200,
    )  # fmt: skip
    margin = 3 * math.sqrt(POWER * (1 - POWER) / studies)
    assert abs(rejected[:, 0].mean() - POWER) < margin, (delta, rejected[:, 0].mean())
    assert rejected[:, 1].mean() < 0.05 + margin  # the flat curve: the family's level


def test_examples_part_and_satterthwaite_reference():
    """With a known example part beside the estimated run part (share f < 1), the report's reference
    (``_components``: Satterthwaite df from the estimate) rejects at the figure in 80% of 20,000
    draws (binomial sd 0.0028; margin 3 of them); the chi-square draws stand for the pooled estimate."""
    v_ex, v_run, nu, tests, draws = 7e-5, 2e-4, 4, 30, 20_000
    delta = detectable_worsening(v_ex, v_run, nu, tests)
    rng = np.random.default_rng(3)
    d = rng.normal(delta, math.sqrt(v_ex + v_run), draws)
    rv = RunVariance(v_run * rng.chisquare(nu, draws) / nu, np.zeros(draws), nu, 2)
    v, df = _components(np.full((draws, 1), v_ex), np.ones(1), rv)
    rate = np.mean(t_sf(d / np.sqrt(v[:, 0]), df[:, 0]) <= ALPHA / tests)
    assert abs(rate - POWER) < 3 * math.sqrt(POWER * (1 - POWER) / draws), (delta, rate)
    assert detection_rate(delta, v_ex, v_run, nu, ALPHA / tests) == pytest.approx(POWER, abs=1e-6)
    # the same total variance all estimated (f = 1: the noncentral t) needs more; t_nu's quantile
    # alone (the estimate's uncertainty ignored) would claim less than the test finds
    assert detectable_worsening(0.0, v_ex + v_run, nu, tests) > delta
    naive = float(t_ppf(1 - ALPHA / tests, nu) + t_ppf(POWER, nu)) * math.sqrt(v_ex + v_run)
    assert naive < detectable_worsening(0.0, v_ex + v_run, nu, tests)


def test_known_variances_and_edge_cases():
    z = 2.807033768343811 + 0.8416212335729143  # normal quantiles 1 - 0.05/20 and 0.8
    assert detectable_worsening(0.005**2, 1e-4, math.inf, 20) == pytest.approx(z * math.sqrt(0.005**2 + 1e-4), 1e-9)
    assert detectable_worsening(1e-4, 0.0, 4, 20) == pytest.approx(z * 0.01, rel=1e-9)  # no run part: examples only
    assert detectable_worsening(0.0, 1e-4, 4, 20) > detectable_worsening(0.0, 1e-4, 40, 20)  # few df cost
    assert detectable_worsening(0.0, 1e-4, 4, 20) < detectable_worsening(0.0, 1e-4, 4, 40)  # a larger family costs
    assert detectable_worsening(0.0, None, 0, 20) is None  # the run variance not measured: nothing is detectable
    with pytest.raises(ValueError, match="tests=0"):
        detectable_worsening(0.0, 1e-4, 4, 0)


def test_detectable_uses_the_curves_own_variances():
    """``detectable`` (the report's per-curve figure) recovers each comparison's run part from its
    Satterthwaite df and states the largest ``detectable_worsening`` over the comparisons."""
    rng = np.random.default_rng(5)
    runs = [3, 1, 1, 3]
    pts = [Samples(0.7 + rng.normal(0, 0.1, (r, 200)) + rng.normal(0, 0.01, (r, 1))) for r in runs]
    rv = pool_runs(pts)
    y = np.array([float(point(p)) for p in pts])
    test = turn_test(y, curve_replicates(pts, rng, 200), runs, rv)
    assert test.run_df == rv.df == 4
    share = np.sqrt(rv.df / test.df)  # c s^2 / v
    want = max(
        detectable_worsening(v * (1 - f), v * f, 4, 12) for v, f in zip(test.se**2, share)
    )  # fmt: skip
    assert detectable(test, 12) == pytest.approx(want, rel=1e-12)
