"""``evaluate.power.min_detectable_worsening`` against simulated studies: at the worsening it
returns, the one-sided test at Holm's first step rejects in 80% of simulated studies.

Each case draws N = 4000 studies (vectorised), so the rejection rate's binomial standard error at
power 0.8 is sqrt(0.8 * 0.2 / 4000) = 0.0063; the margin is 3 of them (0.019). The draws are
seeded, so the test is deterministic; the margin says how far from 0.8 an exact formula may land.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from overtrain.evaluate.power import difference_sd, min_detectable_worsening, t_isf, t_sf

N, POWER, ALPHA = 4000, 0.8, 0.05
MARGIN = 3 * math.sqrt(POWER * (1 - POWER) / N)
_Z = __import__("statistics").NormalDist()


def paired_points(rng, delta, run_sd, example_sd, corr, n, runs):
    """d = y2 - y1 of N studies: per-run shifts (runs each point) and the same n examples at both
    budgets, an example's two deviations correlated ``corr`` (the paired design)."""
    u = rng.normal(0.0, run_sd, (N, 2, runs)).mean(-1)
    shared = rng.normal(0.0, 1.0, (N, n, 1))
    e = example_sd * (math.sqrt(corr) * shared + math.sqrt(1 - corr) * rng.normal(0.0, 1.0, (N, n, 2)))
    y = u + e.mean(1)
    return delta + y[:, 1] - y[:, 0]


@pytest.mark.parametrize("runs, family", [(1, 10), (3, 1)])
def test_known_variances_reach_the_power(runs, family):
    """Run and example noise with known variances: the rejection rate at the returned worsening is 0.8."""
    run_sd, example_sd, corr, n = 0.01, 0.3, 0.89, 277
    rel = min_detectable_worsening(run_sd, example_sd, n, runs, family, example_corr=corr)
    d = paired_points(np.random.default_rng(runs), math.log1p(rel), run_sd, example_sd, corr, n, runs)
    se, _ = difference_sd(run_sd, example_sd, n, runs, corr)
    rate = np.mean(d / se > _Z.inv_cdf(1 - ALPHA / family))
    assert abs(rate - POWER) < MARGIN, (rel, rate)
    assert np.std(d) == pytest.approx(se, rel=0.05)  # the paired variance formula (sd of 4000 draws: +-1.1%)


def test_estimated_run_variance_uses_the_noncentral_t():
    """Run noise only, its variance pooled from 3 other cells of 2 runs (3 degrees of freedom): the
    t statistic d / se_hat rejects at t_{3, 1 - alpha/m} in 80% of studies at the returned worsening."""
    run_sd, runs, cells, family = 0.02, 2, 3, 4
    df = cells * (runs - 1)
    rel = min_detectable_worsening(run_sd, 0.0, 100, runs, family, run_df=df, log=False)
    rng = np.random.default_rng(7)
    d = paired_points(rng, rel, run_sd, 0.0, 0.5, 1, runs)
    other = rng.normal(0.0, run_sd, (N, cells, runs))
    s2 = ((other - other.mean(-1, keepdims=True)) ** 2).sum((-1, -2)) / df
    rate = np.mean(d / np.sqrt(2 * s2 / runs) > t_isf(ALPHA / family, df))
    assert abs(rate - POWER) < MARGIN, (rel, rate)
    known = min_detectable_worsening(run_sd, 0.0, 100, runs, family, log=False)
    assert rel > 1.3 * known  # 3 degrees of freedom cost a third more than a known variance


def test_estimated_run_variance_beside_known_example_noise():
    """The one-seed study with a noise probe: 1 run per cell, the run variance from 2 probed cells of
    3 seeds (4 df), the example part known; the test's critical value is t_{4, 1 - alpha/m} (valid
    whatever the run share). At the returned worsening it rejects in 80% of studies."""
    run_sd, example_sd, corr, n, family, cells, seeds = 0.01, 0.3, 0.89, 277, 30, 2, 3
    df = cells * (seeds - 1)
    rel = min_detectable_worsening(run_sd, example_sd, n, 1, family, run_df=df, example_corr=corr)
    rng = np.random.default_rng(11)
    d = paired_points(rng, math.log1p(rel), run_sd, example_sd, corr, n, 1)
    probe = rng.normal(0.0, run_sd, (N, cells, seeds))
    s2 = ((probe - probe.mean(-1, keepdims=True)) ** 2).sum((-1, -2)) / df
    se_hat = np.sqrt(2 * s2 + 2 * (1 - corr) * example_sd**2 / n)
    rate = np.mean(d / se_hat > t_isf(ALPHA / family, df))
    assert abs(rate - POWER) < MARGIN, (rel, rate)
    # more examples never make a worsening harder to detect (the critical value does not depend on n)
    more = [
        min_detectable_worsening(run_sd, example_sd, k, 1, family, run_df=df, example_corr=corr)
        for k in (83, 277, 3534)
    ]
    assert more == sorted(more, reverse=True)


def test_t_tail_and_edge_cases():
    # t_{4, 0.995} = 4.604 and t_{30, 0.995} = 2.750 (tables); the noncentral tail by simulation above
    assert t_isf(0.005, 4) == pytest.approx(4.604095, abs=1e-5)
    assert t_isf(0.005, 30) == pytest.approx(2.749996, abs=1e-5)
    assert t_sf(0.0, 3.0) == pytest.approx(0.5, abs=1e-6)
    # the t critical value is valid whatever the run part's share f of the variance: size <= level
    level = ALPHA / 30
    assert all(t_sf(t_isf(level, df), df, 0.0, f) <= level for df in (2.0, 4.0, 12.0) for f in (0.9, 0.5, 0.1))
    # one run per point and no probe: the run variance is unmeasured, nothing is detectable
    assert min_detectable_worsening(0.01, 0.3, 277, 1, 10, run_df=0) == math.inf
    # relative: exp(delta) - 1 of the log-perplexity difference; more examples, runs: smaller
    delta = min_detectable_worsening(0.01, 0.3, 277, 1, 10, log=False)
    assert min_detectable_worsening(0.01, 0.3, 277, 1, 10) == pytest.approx(math.expm1(delta), rel=1e-12)
    assert min_detectable_worsening(0.01, 0.3, 2770, 3, 10) < min_detectable_worsening(0.01, 0.3, 277, 1, 10)
    with pytest.raises(ValueError, match="runs_per_cell=0"):
        min_detectable_worsening(0.01, 0.3, 277, 0, 10)
