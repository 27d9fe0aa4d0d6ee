"""The report's statistics: the model of a curve point (true curve + run shift + example noise), the
paired bootstrap over examples, the run variance pooled over a family, Student's t reference with
its degrees of freedom, the Holm-corrected turn decision, and what a study could have detected.

Samples. A curve point (one cell: a checkpoint, a task, an LR or the tuned LR) holds the
per-example scores of each of its S rows (runs: seeds of pre-training and fine-tuning) as
``Samples``: ``values`` (S, n) and, for a ratio metric, ``weights`` (S, n). Per run s:

    mean metric (classification ID NLL, accuracy):  stat_s = sum_j v_sj / n
    ratio metric (LM ID NLL, C4 NLL per window):     stat_s = sum_j v_sj / sum_j w_sj   (w = tokens)

and the point is ``log(mean_s exp(stat_s))`` for perplexities (the log of the mean perplexity over
runs that the tables show) or ``mean_s stat_s`` for accuracy.

Model. Every row is one run: stat_s(i) = mu(i) + u_s + e_s(i), with mu the true curve at budget i,
u_s ~ (0, sigma_u^2) the run's shift (data order, initialization, pre-training seed: it moves the
whole point, every example) and e_s the example noise, mean over the same n examples at every
budget (the paired design). Runs at different budgets are different runs: independent shifts.

Paired bootstrap over examples (``curve_replicates``). Replicate b draws multinomial counts over
the n examples, one draw for the whole curve (paired: differences between budgets cancel what the
examples share), and recomputes every point from its runs. B = ``REPLICATES``. It measures the
example noise (shared and run-specific) of the points and their differences; it cannot see u.

Run variance (``pool_runs``). In every cell c with S_c >= 2 runs, the runs' statistics give
SS_c = sum_s (stat_s - mean stat)^2 with S_c - 1 df; pooled over every cell of a (task, metric)
family (all models, budgets, LRs; distinct cells once):

    s^2 = sum_c SS_c / nu,  nu = sum_c (S_c - 1)          estimates sigma_u^2 + sigma_e^2 / n
    s_e^2 / n = sum_c sum_sj (r_sj - r_s.)^2 / ((n - 1) n nu)   its example part (r: run residuals)

With one run per point in every cell there is no estimate (None): the report then never decides
("cannot tell: one run per point, run-to-run variation not measured"). A noise probe (extra seeds
at a few cells) gives one that applies to every cell of the family.

Reference distribution (``_components``). For d_i = y[k-1] - y[i] with S_a, S_b runs at the two
budgets, c = 1/S_a + 1/S_b, bootstrap variance v_b over examples:

    v = max(v_b - c s_e^2/n, 0) + c s^2           (examples shared by the points; run variation)
    df = nu (v / (c s^2))^2                        (Satterthwaite: only c s^2 is uncertain)

and z_i = d_i / sqrt(v) is referred to Student's t with df (``t_sf``; no scipy: the regularized
incomplete beta). So 2 and 3 seeds are calibrated, not anti-conservative, and a large family's
probe counts for more than a small one's. Intervals (``interval``): y +- t_{0.975, df} sqrt(v) per
point (c = 1/S) with a run variance; the bootstrap's percentiles without one (examples only).

Decision (``turn_test``, ``holm``). Lower is better. For every earlier budget i < k-1 the one-sided
test of "the largest budget is worse than budget i", p_i = P(T_df > z_i). A curve *turns* when
one of its p_i is rejected by Holm's step-down procedure at ALPHA = 0.05 over every test of the
family (all budgets, models and metrics of one task's tuned-LR curves; the fixed-LR curves of a
task form a second family). The turn is placed at the best budget (the point estimates' argmin).
"No catastrophic overtraining" needs the opposite evidence against *every* earlier budget: the
one-sided 95% upper bound max_i (d_i + t_{0.95, df_i} sqrt(v_i)) is at most ``log(1 + tolerance)``
(an intersection-union test: no multiplicity correction); otherwise, with no turn, "cannot tell:
intervals too wide".

Power (``detectable_worsening``, ``detection_rate``, ``detectable``): what a study could have seen,
the one figure the report states per curve and ``grid plan`` per planned task. For one comparison,
d ~ N(delta, V_ex + V_run) with V_run = c sigma^2 the run part (estimated: s^2 on nu df) and V_ex
the examples' part beyond it (known: the bootstrap). The test rejects at Holm's first step, level
alpha / m over the family's m tests, iff d > t_{1 - alpha/m, df} sqrt(v) with the estimates
v = V_ex + V_run W, W ~ chi^2_nu / nu, and df = nu (v / (V_run W))^2 (the reference above); so

    P(reject) = E_W[ Phi((delta - t_{1 - alpha/m, df(W)} sqrt(v(W))) / sqrt(V_ex + V_run)) ],

integrated over the chi scale sqrt(W) by the midpoint rule on POWER_GRID cells (1024: within 1e-4
relative of 16,000 at 1 df, 1e-8 from 4 df), the critical values interpolated in 1/df where df
varies (``_t_table``), Phi to 1.2e-7 (``_phi``): a noncentral t when V_ex = 0, the normal when
V_run = 0 or nu = inf. The figure is the delta where it equals POWER = 0.8 (bisection). Not
(t_{1-alpha/m, nu} + t_{0.8, nu}) sqrt(V): with few df that ignores how far the estimate s^2 moves
the bound, and states a worsening the test finds less often than 80% (4 df, m = 30, V_ex = 0: 8%
too small). ``detectable``: a curve's figure, its comparisons' run parts V_run = v sqrt(nu / df)
recovered from their Satterthwaite df, the largest over the comparisons. tests/test_power.py checks
it against ``simulate`` (the report's decision on simulated studies).

Calibration (tests/test_report_stats.py; ``simulate``, ``simulate_suite``): synthetic studies
with known truth, every run shifted by its own run shift at every seed count.
Section 3 (``simulate``): 6 budgets, RTE's test size (277 examples), per-example NLL sd 0.3 of
which 0.1 is run-specific noise, both Student t with 5 df (heavier tails than normal), run shift sd
0.01 (1% in perplexity), a family of 4 curves (2 models x ID and C4, the run variance pooled per
metric); "turning": one curve improves 4%, then worsens 3% at the largest budget.
Section 2 (``simulate_suite``): 4 members, 4 tasks of 1000 documents (half their outcomes shared
by members and runs, half drawn per run), accuracy 0.6, SFT run shift sd 1 accuracy point;
"turning": one task rises 9 points, then drops 6 at the last member. 2000 studies per cell
(binomial margin of a 5% rate: +-1.0%); probe: 3 runs at the first and the last budget:

    | truth | 1 seed | 1 seed + probe | 2 seeds | 3 seeds |
    |---|---|---|---|---|
    | Section 3, flat: some curve called a turn (false-positive rate) | 0.0% (cannot tell) | 3.9% | 4.5% | 3.6% |
    | Section 3, improves 4% then worsens 3%: detected | 0.0% (cannot tell) | 24.7% | 35.2% | 68.0% |
    | Section 3, flat: "no catastrophic overtraining" at tolerance 5% | 0.0% (cannot tell) | 52.0% | 84.3% | 99.2% |
    | Section 2, flat: some task called a turn (false-positive rate) | 0.0% (cannot tell) | 3.0% | 2.5% | 3.5% |
    | Section 2, rises 9 points then drops 6: detected | 0.0% (cannot tell) | 35.1% | 47.0% | 86.7% |
    | Section 2, flat: "no catastrophic overtraining" at tolerance 3 points | 0.0% (cannot tell) | 0.3% | 0.9% | 8.0% |

One run per point is never a decision (the first column), whatever the truth: that is what one
seed can show. Every false-positive rate is within the nominal 5% (plus two binomial standard
errors); a 3% turn is found about two times in three with 3 seeds on RTE's size, a quarter of the
time with a probe, and a suite's 6-point drop 87% of the time with 3 SFT seeds. The test asserts these rates on fewer studies (margins for the count used);
README.md, "Report and verdict", repeats the table.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

REPLICATES = 1000  # bootstrap replicates per curve
ALPHA = 0.05  # family-wise error rate of the turn decision, and 1 - the intervals' coverage
POWER = 0.8  # the power at which ``detectable_worsening`` states what a study could have seen
Z_UPPER = 1.6448536269514722  # z_0.95: one-sided upper bound (normal: binomial checks, no run variance)
T_NORMAL_DF = 1e5  # t_sf: the normal beyond this many df (p within 1e-3 relative up to t = 5)
T_EXPANSION_DF = 20.0  # t_ppf: the Cornish-Fisher expansion from here on
T_TABLE = 400  # df nodes of the power figure's critical values (``_t_table``)
POWER_GRID = 1024  # chi-scale quadrature cells of the power figure (``detection_rate``)
T_TAILS = 5  # the calibration's example tails: Student t with this many degrees of freedom


@dataclass
class Samples:
    """One curve point's per-example scores: ``values`` (S runs, n examples), ``weights`` (S, n)
    for a ratio metric (None: a mean); ``log``: the point is a log perplexity (else a mean, accuracy).
    Leading axes (..., S, n) are a batch of independent points (the calibration's simulated studies)."""

    values: np.ndarray
    weights: np.ndarray | None = None
    log: bool = True

    @property
    def n(self) -> int:
        return self.values.shape[-1]

    @property
    def seeds(self) -> int:
        """Runs of the point (rows: seeds of pre-training and fine-tuning)."""
        return self.values.shape[-2]


def stack(arrays: list[np.ndarray], weights: list[np.ndarray] | None = None, log: bool = True) -> Samples | None:
    """``Samples`` of several rows' per-example arrays (None when their lengths differ: not paired)."""
    if not arrays or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        return None
    w = None if weights is None else np.stack([np.asarray(x, dtype=np.float64) for x in weights])
    return Samples(np.stack([np.asarray(a, dtype=np.float64) for a in arrays]), w, log)


def _per_seed(s: Samples, counts: np.ndarray | None) -> np.ndarray:
    """Per-run statistics: (..., S) without ``counts``, (..., B, S) with example counts (B, n)."""
    if counts is None:
        num = s.values.sum(-1)
        den = s.weights.sum(-1) if s.weights is not None else float(s.n)
    else:
        num = np.swapaxes(s.values @ counts.T, -1, -2)  # BLAS: (..., S, n) @ (n, B)
        den = np.swapaxes(s.weights @ counts.T, -1, -2) if s.weights is not None else float(s.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def _pool(stat: np.ndarray, log: bool) -> np.ndarray:
    """Pool over the last (run) axis: log of the mean perplexity, or the mean."""
    if not log:
        return stat.mean(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        m = stat.max(-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return (m + np.log(np.exp(stat - m).mean(-1, keepdims=True)))[..., 0]


def point(s: Samples) -> np.ndarray:
    """The point estimate (module doc): shape (...) of the batch axes."""
    return _pool(_per_seed(s, None), s.log)


def curve_replicates(points: list[Samples], rng: np.random.Generator, replicates: int = REPLICATES) -> np.ndarray:
    """(..., B, k) bootstrap replicates of the curve's points over examples, paired (one draw of
    example counts for every point of the same size; module doc). Runs are not resampled: their
    variation is the pooled run variance's (``pool_runs``)."""
    paired_n = len({p.n for p in points}) == 1
    shared_counts = _counts(rng, points[0].n, replicates) if paired_n else None
    cols = []
    for p in points:
        counts = shared_counts if paired_n else _counts(rng, p.n, replicates)
        cols.append(_pool(_per_seed(p, counts), p.log))
    return np.stack(cols, axis=-1)


def _counts(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """(B, n) multinomial counts of n draws with replacement (one bincount: fast)."""
    idx = rng.integers(0, n, (replicates, n)) + n * np.arange(replicates)[:, None]
    return np.bincount(idx.ravel(), minlength=replicates * n).reshape(replicates, n).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Run-to-run variation


@dataclass
class RunVariance:
    """The run variance of one (task, metric) family, pooled over its cells with 2+ runs (module
    doc): ``var`` = s^2 (between runs of a cell, of one run's statistic), ``within`` = its example
    part s_e^2 / n, ``df`` = sum of (runs - 1), ``cells`` = the cells it came from. Arrays over the
    batch axes in the calibration, floats in the report."""

    var: np.ndarray | float
    within: np.ndarray | float
    df: int
    cells: int

    def describe(self) -> str:
        return f"run-to-run sd {math.sqrt(float(self.var)):.2g} pooled over {self.cells} cells with repeated runs, {self.df} df"


def pool_runs(cells: list[Samples]) -> RunVariance | None:
    """The pooled run variance of a family's cells (those with 2+ runs count; None when none has).
    Every cell has the same batch axes."""
    ss = within = 0.0
    df = count = 0
    for c in cells:
        if c is None or c.seeds < 2:
            continue
        stat = _per_seed(c, None)  # (..., S): one run's statistic
        ss = ss + ((stat - stat.mean(-1, keepdims=True)) ** 2).sum(-1)
        # per-example contributions a_sj with mean_j a_sj = the run's statistic (ratio: v / mean w)
        a = c.values / (c.weights.mean(-1, keepdims=True) if c.weights is not None else 1.0)
        r = a - a.mean(-2, keepdims=True)  # run-specific part of each example ...
        r = r - r.mean(-1, keepdims=True)  # ... less its run mean (the run shift)
        within = within + (r**2).sum((-1, -2)) / ((c.n - 1) * c.n)
        df, count = df + c.seeds - 1, count + 1
    if not df:
        return None
    return RunVariance(ss / df, within / df, df, count)


def _components(vb: np.ndarray, c: np.ndarray, rv: RunVariance | None) -> tuple[np.ndarray, np.ndarray]:
    """(variance, degrees of freedom) of a point or difference with bootstrap variance ``vb`` over
    examples and run weight ``c`` (sum of 1/runs): module doc, "Reference distribution"."""
    if rv is None:
        return vb, np.full(np.shape(vb), np.inf)
    var, within = np.asarray(rv.var, dtype=np.float64), np.asarray(rv.within, dtype=np.float64)
    extra = (1,) * (np.ndim(vb) - np.ndim(var))  # batch axes of rv against (..., m) of vb
    var, within = var.reshape(var.shape + extra), within.reshape(within.shape + extra)
    v_run = c * var
    # s^2 holds the example part (E s^2 >= s_e^2 / n): never subtract more than it, so v >= v_b
    v = np.maximum(vb - c * np.minimum(within, var), 0.0) + v_run
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(v_run > 0, rv.df * (v / np.where(v_run > 0, v_run, 1.0)) ** 2, np.inf)
    return v, df


def interval(
    reps: np.ndarray,
    log: bool = True,
    y: np.ndarray | None = None,
    runs: list[int] | None = None,
    rv: RunVariance | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Intervals (1 - ALPHA) of each point, on the metric's scale (perplexity: exp). Without a run
    variance: the bootstrap's percentiles; with one: y +- t_{1-ALPHA/2, df} sqrt(v) (module doc)."""
    if rv is None:
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanpercentile(reps, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)], axis=-2)
    else:
        with np.errstate(invalid="ignore"):
            vb = np.nanvar(reps, axis=-2)
        v, df = _components(vb, 1.0 / np.asarray(runs, dtype=np.float64), rv)
        half = t_ppf(1 - ALPHA / 2, df) * np.sqrt(v)
        lo, hi = np.asarray(y) - half, np.asarray(y) + half
    return (np.exp(lo), np.exp(hi)) if log else (lo, hi)


# ---------------------------------------------------------------------------------------------
# Student's t (no scipy: the regularized incomplete beta by its continued fraction)

_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
_TINY = 1e-300


def _betacf(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b) (modified Lentz), elementwise, until every element converges."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0

    def fix(v):
        return np.where(np.abs(v) < _TINY, _TINY, v)

    c = np.ones_like(x)
    d = 1.0 / fix(1.0 - qab * x / qap)
    h = d.copy()
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / fix(1.0 + aa * d)
        c = fix(1.0 + aa / c)
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / fix(1.0 + aa * d)
        c = fix(1.0 + aa / c)
        delta = d * c
        h = h * delta
        if np.all(np.abs(delta - 1.0) < 1e-13):
            break
    return h


def _betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Regularized incomplete beta I_x(a, b) for 0 <= x <= 1."""
    x = np.clip(x, 0.0, 1.0)
    inner = (x > 0) & (x < 1)
    xs = np.where(inner, x, 0.5)
    with np.errstate(divide="ignore"):
        front = np.exp(_lgamma(a + b) - _lgamma(a) - _lgamma(b) + a * np.log(xs) + b * np.log1p(-xs))
    direct = xs < (a + 1.0) / (a + b + 2.0)
    out = np.where(
        direct,
        front * _betacf(a, b, np.where(direct, xs, 0.0)) / a,
        1.0 - front * _betacf(b, a, np.where(direct, 0.0, 1.0 - xs)) / b,
    )
    return np.where(inner, out, x)


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def t_sf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """P(T > t) for Student's t with ``df`` degrees of freedom (inf: the normal), elementwise."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(df, dtype=np.float64))
    normal = ~(df <= T_NORMAL_DF)  # inf, or so many df that the normal is as good
    out = np.empty(t.shape)
    out[normal] = 0.5 * _erfc(t[normal] / math.sqrt(2.0)) if normal.any() else 0
    if (~normal).any():
        tt, nu = t[~normal], df[~normal]
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.where(np.isfinite(tt), nu / (nu + tt * tt), 0.0)
        tail = 0.5 * _betainc(nu / 2.0, np.full_like(nu, 0.5), x)
        out[~normal] = np.where(tt > 0, tail, 1.0 - tail)
    return out


def t_ppf(q: float, df: np.ndarray) -> np.ndarray:
    """The q quantile (q >= 0.5) of Student's t with ``df`` degrees of freedom, elementwise: the
    Cornish-Fisher expansion in 1/df (Abramowitz & Stegun 26.7.5, to 1/df^4) from ``T_EXPANSION_DF``
    df on (relative error < 1e-4 there for q <= 0.9999), else bisection on log t to 1e-10 relative."""
    if not 0.5 <= q < 1:
        raise ValueError(f"t_ppf: q = {q} outside [0.5, 1)")
    df = np.asarray(df, dtype=np.float64)
    z = _z(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = 1.0 / df
        out = z + g * (z**3 + z) / 4
        out = out + g**2 * (5 * z**5 + 16 * z**3 + 3 * z) / 96
        out = out + g**3 * (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
        out = out + g**4 * (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    small = df < T_EXPANSION_DF
    if q > 0.5 and small.any():
        nu = df[small]
        lo, hi = np.full(nu.shape, math.log(1e-8)), np.full(nu.shape, math.log(1e8))
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            above = t_sf(np.exp(mid), nu) < 1 - q  # mid past the quantile
            lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
        out = np.array(out, dtype=np.float64)
        out[small] = np.exp(0.5 * (lo + hi))
    return out


def _z(q: float) -> float:
    """The normal q quantile (scalar bisection on erfc)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 0.5 * math.erfc(mid / math.sqrt(2.0)) > 1 - q else (lo, mid)
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# The decision


@dataclass
class TurnTest:
    """The tests of one curve (module doc), or of a batch of curves (leading axes)."""

    p: np.ndarray  # (..., k-1) one-sided p-values, budget i vs the largest
    best: np.ndarray  # (...) argmin of the point estimates
    worse: np.ndarray  # (...) the largest budget against the best earlier one: y[-1] - min y[:-1] (log)
    upper: np.ndarray  # (...) max over earlier budgets i of d_i + t_{0.95, df_i} se_i (log)
    se: np.ndarray  # (..., k-1) standard error of each d_i
    df: np.ndarray  # (..., k-1) its degrees of freedom (inf: examples only)
    runs_measured: bool = True  # False: no run variance (one run per point, none repeated): not a decision
    run_df: float = math.inf  # nu of the pooled run variance (inf: none; ``detectable`` recovers its share)


def turn_test(
    y: np.ndarray, reps: np.ndarray, runs: list[int] | None = None, rv: RunVariance | None = None
) -> TurnTest:
    """The turn tests from point estimates ``y`` (..., k), example replicates (..., B, k), runs per
    point and the family's run variance (None: examples only; module doc), log scale."""
    y = np.asarray(y, dtype=np.float64)
    k = y.shape[-1]
    runs_arr = np.ones(k) if runs is None else np.asarray(runs, dtype=np.float64)
    d = y[..., -1:] - y[..., :-1]
    with np.errstate(invalid="ignore"):
        vb = np.nanvar(reps[..., -1:] - reps[..., :-1], axis=-2)
    v, df = _components(vb, 1.0 / runs_arr[-1] + 1.0 / runs_arr[:-1], rv)
    se = np.sqrt(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(se > 0, d / np.where(se > 0, se, 1.0), np.where(d > 0, np.inf, -np.inf))
    z = np.where(np.isnan(z), -np.inf, z)  # undefined (inf - inf): no evidence of worsening
    p = t_sf(z, df)
    with np.errstate(invalid="ignore"):
        upper = np.max(d + t_ppf(0.95, df) * se, axis=-1)
    best, worse = np.argmin(y, axis=-1), np.max(d, axis=-1)
    return TurnTest(p, best, worse, upper, se, df, rv is not None, math.inf if rv is None else float(rv.df))


@functools.lru_cache(maxsize=64)
def _chi_scale(df: float) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints s and probability weights of s = sqrt(V / df), V ~ chi^2_df (weights sum to 1):
    the midpoint rule on ``POWER_GRID`` cells of u = sqrt(s / top), s = top u^2 (cells crowd near 0,
    where t's far tail lives for few df; ``top`` is ~28 sd above the mean: the tail beyond is < 1e-15)."""
    top = 1.0 + 40.0 / math.sqrt(2.0 * df)
    u = (np.arange(POWER_GRID) + 0.5) / POWER_GRID
    s = top * u * u
    logf = (
        math.log(2.0 * df) + np.log(s) + (df / 2 - 1) * np.log(df * s * s) - df * s * s / 2
        - (df / 2) * math.log(2.0) - math.lgamma(df / 2)
    )  # fmt: skip
    w = np.exp(logf) * 2.0 * top * u / POWER_GRID  # density x ds/du x du
    return s, w / w.sum()


@functools.lru_cache(maxsize=256)
def _t_table(level: float, run_df: float) -> tuple[np.ndarray, np.ndarray]:
    """log t_{1 - level, df} on ``T_TABLE`` points g = 1/df evenly from 0 (the normal) to 1/``run_df``,
    for linear interpolation in g (within 2e-5 relative of ``t_ppf`` from 1 df on: the quantile is
    smooth in 1/df, Cornish-Fisher's variable). A family's curves share the level and the pooled df:
    the report computes it once per family."""
    g = np.linspace(0.0, 1.0 / run_df, T_TABLE)
    with np.errstate(divide="ignore"):
        return g, np.log(t_ppf(1 - level, 1.0 / g))


_ERFCC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
          -0.82215223, 0.17087277)  # fmt: skip


def _phi(x: np.ndarray) -> np.ndarray:
    """The standard normal cdf, elementwise, 0.5 erfc(-x / sqrt 2) by the Chebyshev fit of Numerical
    Recipes' ``erfcc`` (relative error < 1.2e-7 everywhere: numpy has no erfc; torch's, on arrays
    this small, waits on its thread pool where a process already uses it)."""
    x = -np.asarray(x, dtype=np.float64) / math.sqrt(2.0)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in _ERFCC[::-1]:  # Horner
        poly = c + t * poly
    r = t * np.exp(-z * z + poly)
    return 0.5 * np.where(x >= 0, r, 2.0 - r)


def _rates(example_var: np.ndarray, run_var: np.ndarray, run_df: float, level: float):
    """``detection_rate`` as a function of delta, over arrays of comparisons (run_var > 0, run_df finite)."""
    s, w = _chi_scale(float(run_df))
    v_run = run_var[:, None] * s * s  # (comparisons, cells): the estimate of the run part
    v_hat = example_var[:, None] + v_run
    df = run_df * (v_hat / v_run) ** 2  # Satterthwaite's, per cell: from run_df (V_ex = 0) up
    if np.all(df == df.flat[0]):
        crit = t_ppf(1 - level, df.flat[0])
    else:
        g, log_crit = _t_table(level, float(run_df))
        crit = np.exp(np.interp(1.0 / df, g, log_crit))
    bound, sd = crit * np.sqrt(v_hat), np.sqrt(example_var + run_var)[:, None]
    return lambda d: (w * _phi((d[:, None] - bound) / sd)).sum(-1)


def detection_rate(delta: float, example_var: float, run_var: float, run_df: float, level: float) -> float:
    """P(the turn test rejects d at ``level``) when d ~ N(delta, example_var + run_var) (module doc,
    "Power"): the run part estimated on ``run_df`` df (inf: known), Satterthwaite's t reference."""
    v = example_var + run_var
    if v <= 0:
        return 1.0 if delta > 0 else 0.0
    if run_var <= 0 or not math.isfinite(run_df):
        return float(_phi(np.array([(delta - float(t_ppf(1 - level, np.inf)) * math.sqrt(v)) / math.sqrt(v)]))[0])
    return float(_rates(np.array([example_var]), np.array([run_var]), run_df, level)(np.array([delta]))[0])


def _figures(example_var: np.ndarray, run_var: np.ndarray, run_df: float, level: float, power: float) -> np.ndarray:
    """``detectable_worsening`` over arrays of comparisons: bisection on delta, all at once."""
    sd = np.sqrt(example_var + run_var)
    known = (run_var <= 0) | (not math.isfinite(run_df))
    out = float(t_ppf(1 - level, np.inf) + t_ppf(power, np.inf)) * sd  # known variances: normal quantiles
    if known.all():
        return out
    ex, run = example_var[~known], run_var[~known]
    rate = _rates(ex, run, run_df, level)
    lo, hi = np.zeros(ex.shape), 10.0 * np.sqrt(ex + run)
    while (low := rate(hi) < power).any():  # the rate rises with delta: double until it brackets
        lo, hi = np.where(low, hi, lo), np.where(low, 2.0 * hi, hi)
    for _ in range(60):  # 2^-60 of the bracket: exact to double precision
        mid = 0.5 * (lo + hi)
        below = rate(mid) < power
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    out[~known] = 0.5 * (lo + hi)
    return out


def detectable_worsening(
    example_var: float,
    run_var: float | None,
    run_df: float,
    tests: int,
    alpha: float = ALPHA,
    power: float = POWER,
) -> float | None:
    """The smallest worsening (log scale, or accuracy points) d of the largest budget from an earlier
    one that the turn test finds with probability ``power`` at Holm's first step, alpha / ``tests``
    (module doc, "Power"): Var(d) = ``example_var`` (the examples' part, known) + ``run_var`` (the run
    part, c sigma^2 with c = 1/S_a + 1/S_b, estimated on ``run_df`` df; inf: known). None: the run
    variance is not measured (``run_var`` None): the report does not decide, nothing is detectable."""
    if run_var is None:
        return None
    if tests < 1 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"tests={tests} >= 1, 0 < alpha={alpha} < 1, 0 < power={power} < 1 expected")
    return float(_figures(np.array([float(example_var)]), np.array([float(run_var)]), run_df, alpha / tests, power)[0])


def detectable(test: TurnTest, tests: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest worsening (log) of the largest budget from *any* earlier one that a curve's test
    finds with probability ``power`` in a family of ``tests`` tests: ``detectable_worsening`` with
    the curve's measured variances (the run part c s^2 = v sqrt(nu / df), from Satterthwaite's df),
    the largest over its comparisons."""
    v, df = np.ravel(test.se).astype(np.float64) ** 2, np.ravel(test.df).astype(np.float64)
    run = v * np.sqrt(test.run_df / df) if math.isfinite(test.run_df) else np.zeros_like(v)
    run = np.where(np.isfinite(df), run, 0.0)
    return float(np.max(_figures(np.maximum(v - run, 0.0), run, test.run_df, alpha / max(1, tests), power)))


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """The (1 - ALPHA) interval of the mean of a few independent values (noise seeds of a
    perturbation point): mean +- t_{1-ALPHA/2, n-1} sd / sqrt(n), sd with n - 1 (NaN bounds for n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return math.nan, math.nan
    half = float(t_ppf(1 - ALPHA / 2, np.float64(v.size - 1))) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()) - half, float(v.mean()) + half


def holm_rows(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections within each row of ``p`` (..., m): the family is the last axis."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ok = np.take_along_axis(p, order, -1) <= alpha / (m - np.arange(m))
    ok = np.cumprod(ok, axis=-1).astype(bool)  # step-down: stop at the first acceptance
    out = np.zeros_like(ok)
    np.put_along_axis(out, order, ok, -1)
    return out


def holm(p_values: list[np.ndarray], alpha: float = ALPHA) -> list[np.ndarray]:
    """Holm over every test of a family given as several arrays; one boolean array per input."""
    sizes = [np.asarray(p).size for p in p_values]
    if not sum(sizes):
        return [np.zeros(0, dtype=bool) for _ in p_values]
    flat = holm_rows(np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in p_values]), alpha)
    return np.split(flat, np.cumsum(sizes)[:-1])


# ---------------------------------------------------------------------------------------------
# Calibration (module doc; tests/test_report_stats.py)


def _runs(seeds: int, probe: int, k: int) -> list[int]:
    """Runs per budget: ``seeds`` everywhere, or with one seed and a probe, ``probe`` runs at the
    first and the last budget."""
    runs = [seeds] * k
    if seeds == 1 and probe > 1:
        runs[0] = runs[-1] = probe
    return runs


def _family(tests: list[TurnTest], studies: int) -> np.ndarray:
    """Holm over a simulated family's measured tests: (studies, curves) does it turn."""
    measured = [t.runs_measured for t in tests]
    out = np.zeros((studies, len(tests)), dtype=bool)
    if any(measured):
        p = np.concatenate([t.p for t, m in zip(tests, measured) if m], axis=-1)
        rej = holm_rows(p).reshape(studies, sum(measured), -1).any(-1)
        out[:, np.flatnonzero(measured)] = rej
    return out


def simulate(
    rng: np.random.Generator,
    truths: list[np.ndarray],
    studies: int,
    n: int = 277,
    seeds: int = 1,
    probe: int = 0,
    example_sd: float = 0.3,
    noise_sd: float = 0.1,
    run_sd: float = 0.01,
    metrics: int = 2,
    replicates: int = 400,
) -> tuple[list[TurnTest], np.ndarray]:
    """``studies`` synthetic controlled studies at once (module doc, "Calibration"): curve c (true
    log-perplexity offsets ``truths[c]``, (k,)) is metric c % ``metrics`` (the run variance is pooled
    per metric). Per-example NLL of run r at budget i = 0.7 + difficulty_j (shared by budgets and
    runs) + truth_i + the run's example noise (sd ``noise_sd``) + the run's shift u_r (sd
    ``run_sd``); example terms are Student t with ``T_TAILS`` df, scaled to their sd. Returns each
    curve's ``TurnTest`` (batched over studies) and Holm's rejections (studies, curves)."""
    k = len(truths[0])
    runs = _runs(seeds, probe, k)
    unit = 1.0 / math.sqrt(T_TAILS / (T_TAILS - 2))  # a t variate's sd is sqrt(df / (df - 2))
    shared_sd = math.sqrt(max(example_sd**2 - noise_sd**2, 0.0))
    points = []
    for m in truths:
        base = 0.7 + shared_sd * unit * rng.standard_t(T_TAILS, (studies, 1, n))
        pts = []
        for i, s in enumerate(runs):
            vals = base + m[i] + noise_sd * unit * rng.standard_t(T_TAILS, (studies, s, n))
            pts.append(Samples(vals + rng.normal(0, run_sd, (studies, s, 1))))
        points.append(pts)
    rvs = [pool_runs([p for c, pts in enumerate(points) if c % metrics == g for p in pts]) for g in range(metrics)]
    tests = []
    for c, pts in enumerate(points):
        y = np.stack([point(p) for p in pts], axis=-1)
        tests.append(turn_test(y, curve_replicates(pts, rng, replicates), runs, rvs[c % metrics]))
    return tests, _family(tests, studies)


def simulate_suite(
    rng: np.random.Generator,
    truths: list[np.ndarray],
    studies: int,
    n: int = 1000,
    seeds: int = 1,
    probe: int = 0,
    run_sd: float = 0.01,
    replicates: int = 400,
) -> tuple[list[TurnTest], np.ndarray]:
    """``studies`` synthetic Section 2 suites at once (module doc, "Calibration"): task c's members
    have true accuracies ``truths[c]`` ((k,), by tokens); run r (an SFT run) of member i answers
    document j correctly iff q_j < truth_i + u_r, with q_j shared by members and runs for half the
    documents and drawn per run for the other half, u_r the run's shift (sd ``run_sd``). Tested on
    the error 1 - accuracy, the run variance pooled per task, Holm over the tasks (as
    ``report.suite_part.decide_suite``)."""
    k = len(truths[0])
    runs = _runs(seeds, probe, k)
    tests = []
    for acc in truths:
        q, shared = rng.random((studies, 1, n)), rng.random((studies, 1, n)) < 0.5
        pts = []
        for i, s in enumerate(runs):
            u = rng.normal(0, run_sd, (studies, s, 1))
            own = rng.random((studies, s, n))
            pts.append(Samples(np.where(shared, q, own) < acc[i] + u, log=False))
        pts = [Samples(p.values.astype(np.float64), log=False) for p in pts]
        y = np.stack([point(p) for p in pts], axis=-1)
        tests.append(turn_test(1.0 - y, 1.0 - curve_replicates(pts, rng, replicates), runs, pool_runs(pts)))
    return tests, _family(tests, studies)
