"""What a study could have seen: the smallest worsening its turn test detects at a given power.

The report's turn test (``evaluate.report_stats``) compares two points of one curve: the largest
budget's against an earlier one's, d = y[k-1] - y[i] with y the log perplexity (lower is better).
Each point is one cell's mean over R runs (seeds) of

    y_rb = mu_b + u_rb + mean_j e_jb          u_rb ~ (0, run_sd^2): a whole run's shift
                                            e_jb ~ (0, example_sd^2): example j's deviation

and the same n examples are scored at every budget (the paired design): an example's deviations
at two budgets are correlated, corr(e_j1, e_j2) = rho (``example_corr``), because most of what
makes an example hard is the example, not the checkpoint. So the per-example difference has
variance 2 (1 - rho) example_sd^2, smaller than a single point's for rho > 1/2, and

    Var(d) = 2 * (run_sd^2 / R + (1 - rho) * example_sd^2 / n).

The run shifts of the two points are independent (different checkpoints, different fine-tuning
runs); the example part does not shrink with R (every run scores the same examples). ASSUMPTION:
rho = 0.5 by default, where 2 (1 - rho) example_sd^2 = example_sd^2, i.e. ``example_sd`` is then
the sd of the per-example *difference* between two budgets, what a caller who measured it passes;
for a planned study rho is an assumption (the report calibration's simulation uses 0.3 sd, of
which 0.1 is specific to the budget: rho = 1 - (0.1 / 0.3)^2 = 0.89; ``launch.spec.NoiseLevel``).

The test is one-sided at Holm's first step, alpha / m over a family of m tests (the most
stringent step: the smallest worsening the family detects when it is the only one). With the
variances known (``run_df=None``) the smallest detectable worsening at power 1 - beta is

    delta = (z_{1 - alpha/m} + z_{1 - beta}) * sqrt(Var(d)).

With the run variance estimated on ``run_df`` = nu degrees of freedom (pooled over cells with
replicates, or a noise probe) and the example part known, the statistic is
T = d / sqrt(Var_run * V / nu + Var_ex), V ~ chi^2_nu: with f = Var_run / Var(d) the run part's
share and lambda = delta / sqrt(Var(d)),

    P(T > c) = E_V[ Phi(lambda - c * sqrt(f V / nu + 1 - f)) ],

a noncentral t with nu degrees of freedom when f = 1. A test cannot know f (it depends on the
unknown run variance), so its critical value is the t quantile c = t_{nu, 1 - alpha/m}: the size is
alpha / m at f = 1 and below it for f < 1 (T's tail is lighter), so c is valid whatever f. (Tuning c
to the true f, or a Welch-Satterthwaite df, would make more examples *raise* the figure: a test
whose size holds only at one run variance.) delta = lambda * sqrt(Var(d)) with P(T > c) = 1 - beta
at the true f: exact, not an approximation. ``run_df=0``: the run variance is not measured (one
run per point, no probe) and no worsening is detectable: inf (the report says "cannot tell").

Quantiles without scipy (not a dependency): z from ``statistics.NormalDist``; the tail above as
the integral over the chi scale s = sqrt(V / nu) by the midpoint rule on ``GRID`` cells of
u = sqrt(s / top) (t quantiles to ~1e-4 relative at 1 df, ~1e-9 at 2 or more: far below a
simulation's binomial margin).

The result is relative: exp(delta) - 1 for a log perplexity (``log=True``: 0.03 = a perplexity 3%
higher), delta itself for a mean (accuracy). tests/test_power.py checks it against simulated studies.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np
import torch

GRID = 4_000  # midpoint cells of the chi-scale integral
_Z = NormalDist()


@functools.lru_cache(maxsize=64)
def _chi_scale(df: float) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints s and probability weights of s = sqrt(V / df), V ~ chi^2_df (weights sum to 1)."""
    top = 1.0 + 40.0 / math.sqrt(2.0 * df)  # ~28 sd above the mean: the tail beyond is < 1e-15
    u = (np.arange(GRID) + 0.5) / GRID
    s = top * u * u  # s = top u^2: cells crowd near 0, where t's far tail lives for few df
    logf = (
        math.log(2.0 * df) + np.log(s) + (df / 2 - 1) * np.log(df * s * s) - df * s * s / 2
        - (df / 2) * math.log(2.0) - math.lgamma(df / 2)
    )  # fmt: skip
    w = np.exp(logf) * 2.0 * top * u / GRID  # density x ds/du x du
    return s, w / w.sum()


def t_sf(c: float, df: float, nc: float = 0.0, run_share: float = 1.0) -> float:
    """P(T > c) of the module doc: a noncentral t with ``df`` degrees of freedom and noncentrality
    ``nc`` when ``run_share`` (f) is 1; the estimated run part is that share of the variance."""
    s, w = _chi_scale(df)
    scale = np.sqrt(run_share * s * s + (1.0 - run_share))
    return float((w * torch.special.ndtr(torch.from_numpy(nc - c * scale)).numpy()).sum())


def _solve(f, target: float, lo: float, hi: float, increasing: bool) -> float:
    """x in [lo, hi] (hi doubled until it brackets) with monotone f(x) = target, by bisection."""
    while (f(hi) < target) == increasing:
        hi *= 2.0
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (f(mid) < target) == increasing else (lo, mid)
    return (lo + hi) / 2


@functools.lru_cache(maxsize=256)
def t_isf(level: float, df: float, run_share: float = 1.0) -> float:
    """The critical value c with P(T > c) = ``level`` < 1/2 at nc = 0 (``run_share`` 1: the t quantile t_{df, 1 - level})."""
    return _solve(lambda c: t_sf(c, df, 0.0, run_share), level, 0.0, 10.0, increasing=False)


def difference_sd(run_sd: float, example_sd: float, n_examples: int, runs_per_cell: int, example_corr: float = 0.5):
    """sqrt(Var(d)) of the module doc, and its run part Var_run = 2 run_sd^2 / R."""
    if n_examples < 1 or runs_per_cell < 1:
        raise ValueError(f"n_examples={n_examples} and runs_per_cell={runs_per_cell} must be >= 1")
    if not -1.0 <= example_corr <= 1.0:
        raise ValueError(f"example_corr={example_corr}: expected in [-1, 1]")
    var_run = 2.0 * run_sd**2 / runs_per_cell
    var = var_run + 2.0 * (1.0 - example_corr) * example_sd**2 / n_examples
    return math.sqrt(var), var_run


def min_detectable_worsening(
    run_sd: float,
    example_sd: float,
    n_examples: int,
    runs_per_cell: int,
    family_size: int,
    alpha: float = 0.05,
    power: float = 0.8,
    run_df: float | None = None,
    example_corr: float = 0.5,
    log: bool = True,
) -> float:
    """The smallest worsening (relative: 0.03 = 3%) the turn test detects with probability ``power``
    (module doc: paired difference of two curve points, Holm's first step alpha / family_size, one-sided)."""
    if family_size < 1 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"family_size={family_size} >= 1, 0 < alpha={alpha} < 1, 0 < power={power} < 1 expected")
    se, var_run = difference_sd(run_sd, example_sd, n_examples, runs_per_cell, example_corr)
    level = alpha / family_size
    z = _Z.inv_cdf(1.0 - level) + _Z.inv_cdf(power)
    if run_df is not None and run_df <= 0 and var_run > 0:
        return math.inf
    if run_df is None or var_run == 0.0 or run_df > 1e5:  # known variances (t = normal to < 1e-4 relative)
        delta = z * se
    else:
        share = var_run / se**2
        crit = t_isf(level, float(run_df))  # valid at every share (module doc)
        delta = _solve(lambda nc: t_sf(crit, run_df, nc, share), power, 0.0, z, increasing=True) * se
    return math.expm1(delta) if log else delta
    return math.expm1(delta) if log else delta
