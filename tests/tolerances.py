"""Float tolerances of the suite, each derived from the precision of what it compares.

Two computations of the same value in fp32 that differ only in summation order (batch shape,
thread count, SIMD kernel: ATEN_CPU_CAPABILITY, MKL code path) differ by rounding. The standard
forward-error bound of an inner product of n terms (Higham, *Accuracy and Stability*, 3.1) is
|fl(x.y) - x.y| <= gamma_n |x|.|y|, gamma_n = n u / (1 - n u), u = 2^-24 (fp32 unit roundoff).
A log-likelihood is a chain of such products and a log-softmax; we compare it (never its
exponent, a perplexity, which turns an absolute error in the log into a relative one of the same
size and so fails for large perplexities) with ``rel=loglik_rtol(n)``, n the longest inner
product in the network. Bugs this suite looks for (a wrong mask, a wrong example, a padded row
in the softmax) move a log-likelihood by >= 1e-3 relative: far above these bounds.

Exact comparisons remain where they hold by construction (the same kernels on the same inputs
in the same order: bit-identical resume, a deterministic data order, integer counts).
"""

from __future__ import annotations

U32 = 2.0**-24  # fp32 unit roundoff (half the machine epsilon)


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n: the relative error bound of a length-n fp32 inner product or sum."""
    return n * u / (1 - n * u)


def loglik_rtol(model_spec) -> float:
    """Relative tolerance of fp32 log-likelihoods of one model computed in two summation orders.

    The longest inner product is the MLP's down-projection, mlp_ratio * d_model terms (256 for
    the tiny model: 1.5e-5).
    """
    return gamma(model_spec.mlp_ratio * model_spec.d_model)
