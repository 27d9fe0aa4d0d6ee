"""The report's statistics: paired bootstrap intervals over evaluation examples and seeds, and the
calibrated turn decision that replaces a fixed-percentage rule.

Samples. A curve point (one cell: a checkpoint, a task, an LR or the tuned LR) holds the
per-example scores of each of its S rows (seeds: pre-training and fine-tuning) as ``Samples``:
``values`` (S, n) and, for a ratio metric, ``weights`` (S, n). Per row s, the statistic is

    mean metric (classification ID NLL, accuracy):  stat_s = sum_j v_sj / n
    ratio metric (LM ID NLL, C4 NLL per window):     stat_s = sum_j v_sj / sum_j w_sj   (w = tokens)

and the point is ``log(mean_s exp(stat_s))`` for perplexities (the log of the mean perplexity over
seeds that the tables show) or ``mean_s stat_s`` for accuracy.

Paired bootstrap (``curve_replicates``). Replicate b draws multinomial counts over the n examples
(the same examples are evaluated at every budget and by every seed, so one draw serves the whole
curve: differences between budgets are paired) and, with S > 1, S seeds with replacement (the same
draw for every point when the points have the same seeds; the replicates' spread is then widened
by sqrt(S / (S - 1)), as resampling S seeds shrinks their variance by (S - 1) / S). B = ``REPLICATES``. Intervals are the
2.5 and 97.5 percentiles of the replicates; points whose example counts differ are resampled apart.

Decision (``turn_tests``, ``holm``). Lower is better; y = log perplexity per budget, R the (B, k)
replicates. For every earlier budget i < k-1, the one-sided test of "the largest budget is worse
than budget i":

    d_i = y[k-1] - y[i],  se_i = sd_b(R[b, k-1] - R[b, i]),  p_i = 1 - Phi(d_i / se_i)

A curve *turns* when one of its p_i is rejected by Holm's step-down procedure at ALPHA = 0.05 over
every test of the family (all budgets, models and metrics of one task's tuned-LR curves; the
fixed-LR curves of a task form a second family). A rejection at any i implies the largest budget
is worse than the best one. The turn is placed at the best budget (the point estimates' argmin).
"No catastrophic overtraining" needs the opposite evidence: for every curve, the one-sided 95%
upper bound of the worsening from the best budget to the largest, d_best + z_0.95 se_best, is at
most ``log(1 + tolerance)`` (the smallest worsening that matters; default 1%); otherwise, with no
turn, the answer is "cannot tell: intervals too wide".

Calibration (tests/test_report_stats.py; ``simulate``): synthetic studies with known truth, 6
budgets, a test set of RTE's size (277 examples), per-example NLL sd 0.3 of which 0.1 is noise
specific to the budget (the rest is the example's difficulty, shared), a family of 4 curves
(2 models x ID and C4) tested together; 1000 simulated studies per cell (B = 400 replicates):

    truth                                                  1 seed      3 seeds (seed sd 0.01)
    flat: some curve called a turn (family-wise FPR)        5.3%        4.4%
    one curve improves 4%, then worsens 3% at the largest:
        detected                                           90.9%       68.1%
    flat: "no catastrophic overtraining", tolerance 5%      99.9%       92.7%
    flat: "no catastrophic overtraining", tolerance 1%       0%          0%
    turning 3%: "no catastrophic overtraining", tol. 1%      0%          0%

So the false-positive rate is the nominal 5% (Holm controls it; the binomial margin of 1000
studies is +-1.4%), a 3% turn is found nine times in ten with one seed, and a flat curve is not
confirmed flat to within 1% on 277 examples: the report then says "cannot tell: intervals too
wide" rather than "no". The test asserts FPR <= 5% + 2 binomial standard errors, detection >= 80%
(1 seed) and >= 50% (3 seeds); README.md, "Report and verdict", repeats the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REPLICATES = 1000  # bootstrap replicates per curve
ALPHA = 0.05  # family-wise error rate of the turn decision, and 1 - the intervals' coverage
Z_UPPER = 1.6448536269514722  # z_0.95: one-sided upper bound of a worsening


@dataclass
class Samples:
    """One curve point's per-example scores: ``values`` (S seeds, n examples), ``weights`` (S, n)
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
        return self.values.shape[-2]


def stack(arrays: list[np.ndarray], weights: list[np.ndarray] | None = None, log: bool = True) -> Samples | None:
    """``Samples`` of several rows' per-example arrays (None when their lengths differ: not paired)."""
    if not arrays or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        return None
    w = None if weights is None else np.stack([np.asarray(x, dtype=np.float64) for x in weights])
    return Samples(np.stack([np.asarray(a, dtype=np.float64) for a in arrays]), w, log)


def _per_seed(s: Samples, counts: np.ndarray | None) -> np.ndarray:
    """Per-seed statistics: (..., S) without ``counts``, (..., B, S) with example counts (B, n)."""
    if counts is None:
        num = s.values.sum(-1)
        den = s.weights.sum(-1) if s.weights is not None else float(s.n)
    else:
        num = np.swapaxes(s.values @ counts.T, -1, -2)  # BLAS: (..., S, n) @ (n, B)
        den = np.swapaxes(s.weights @ counts.T, -1, -2) if s.weights is not None else float(s.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def _pool(stat: np.ndarray, log: bool) -> np.ndarray:
    """Pool over the last (seed) axis: log of the mean perplexity, or the mean."""
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
    """(..., B, k) bootstrap replicates of the curve's points, paired over examples and seeds (module doc)."""
    paired_n = len({p.n for p in points}) == 1
    paired_s = len({p.seeds for p in points}) == 1
    shared_counts = _counts(rng, points[0].n, replicates) if paired_n else None
    shared_seeds = rng.integers(0, points[0].seeds, (replicates, points[0].seeds)) if paired_s else None
    cols = []
    for p in points:
        counts = shared_counts if paired_n else _counts(rng, p.n, replicates)
        stat = _per_seed(p, counts)  # (..., B, S)
        if p.seeds > 1:
            idx = shared_seeds if paired_s else rng.integers(0, p.seeds, (replicates, p.seeds))
            stat = np.take_along_axis(stat, np.broadcast_to(idx, stat.shape), axis=-1)
        col = _pool(stat, p.log)
        if p.seeds > 1:  # resampling S seeds shrinks their variance by (S-1)/S: undo it
            centre = point(p)[..., None]
            col = centre + (col - centre) * math.sqrt(p.seeds / (p.seeds - 1))
        cols.append(col)
    return np.stack(cols, axis=-1)


def _counts(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """(B, n) multinomial counts of n draws with replacement (one bincount: fast)."""
    idx = rng.integers(0, n, (replicates, n)) + n * np.arange(replicates)[:, None]
    return np.bincount(idx.ravel(), minlength=replicates * n).reshape(replicates, n).astype(np.float64)


def interval(reps: np.ndarray, log: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals (1 - ALPHA) of each point, on the metric's scale (perplexity: exp)."""
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(reps, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)], axis=-2)
    return (np.exp(lo), np.exp(hi)) if log else (lo, hi)


@dataclass
class TurnTest:
    """The tests of one curve (module doc), or of a batch of curves (leading axes)."""

    p: np.ndarray  # (..., k-1) one-sided p-values, budget i vs the largest
    best: np.ndarray  # (...) argmin of the point estimates
    worse: np.ndarray  # (...) y[-1] - y[best] (log)
    upper: np.ndarray  # (...) worse + Z_UPPER * se (log); -inf where the best is the largest budget


_erfc = np.frompyfunc(math.erfc, 1, 1)


def turn_test(y: np.ndarray, reps: np.ndarray) -> TurnTest:
    """The turn tests from point estimates ``y`` (..., k) and replicates (..., B, k), log scale."""
    y = np.asarray(y, dtype=np.float64)
    d = y[..., -1:] - y[..., :-1]
    with np.errstate(invalid="ignore"):
        se = np.nanstd(reps[..., -1:] - reps[..., :-1], axis=-2)
        z = np.where(se > 0, d / np.where(se > 0, se, 1.0), np.where(d > 0, np.inf, -np.inf))
    z = np.where(np.isnan(z), -np.inf, z)  # undefined (inf - inf): no evidence of worsening
    p = (0.5 * _erfc(z / math.sqrt(2.0))).astype(np.float64)
    best = np.argmin(y, axis=-1)
    last = best == y.shape[-1] - 1
    b = np.minimum(best, y.shape[-1] - 2)[..., None]
    worse = np.where(last, 0.0, np.take_along_axis(d, b, -1)[..., 0])
    upper = np.where(last, -np.inf, worse + Z_UPPER * np.take_along_axis(se, b, -1)[..., 0])
    return TurnTest(p, best, worse, upper)


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


def simulate(
    rng: np.random.Generator,
    truths: list[np.ndarray],
    studies: int,
    n: int = 277,
    seeds: int = 1,
    example_sd: float = 0.3,
    noise_sd: float = 0.1,
    seed_sd: float = 0.01,
    replicates: int = 400,
) -> tuple[list[TurnTest], np.ndarray]:
    """``studies`` synthetic studies at once, for calibration: each a family of curves with true
    log-perplexity offsets ``truths`` (each (k,)); per-example NLL = 0.7 + difficulty (shared by
    budgets and seeds) + budget noise (sd ``noise_sd``; total per-example sd ``example_sd``) + a
    seed offset per seed and budget (sd ``seed_sd``, with several seeds). Returns each curve's
    ``TurnTest`` (batched over studies) and the Holm rejections (studies, curves): does it turn."""
    tests = []
    for m in truths:
        k = len(m)
        base = 0.7 + rng.normal(0, math.sqrt(max(example_sd**2 - noise_sd**2, 0.0)), (studies, 1, 1, n))
        vals = base + np.asarray(m)[None, None, :, None] + rng.normal(0, noise_sd, (studies, seeds, k, n))
        if seeds > 1:
            vals = vals + rng.normal(0, seed_sd, (studies, seeds, k, 1))
        pts = [Samples(vals[:, :, i, :]) for i in range(k)]
        y = np.stack([point(p) for p in pts], axis=-1)
        tests.append(turn_test(y, curve_replicates(pts, rng, replicates)))
    p = np.concatenate([t.p for t in tests], axis=-1)  # (studies, curves x (k-1))
    rej = holm_rows(p).reshape(studies, len(truths), -1)
    return tests, rej.any(-1)
