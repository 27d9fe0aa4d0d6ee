"""How the report writes its numbers, shared by the text, the figures and the transfer table.

fmt_tokens(4e9) = '4B'    fmt_tokens(1.5e9) = '1.5B'    fmt_lr(3e-4) = '3e-4'
fmt_num(x, digits) = x to ``digits`` significant digits (whole numbers from 10**digits: large perplexities)
fmt_pct(0.042) = '4.2%'   (below 0.01: the fraction itself, '0.005')
"""

from __future__ import annotations

import math

import numpy as np

METRIC_WORDS = {"id": "ID perplexity", "c4": "C4 perplexity"}  # the perplexity metrics' names in text


def fmt_tokens(n: float) -> str:
    """4e9 -> '4B', 96000 -> '96K', 1.5e9 -> '1.5B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def fmt_lr(lr: float) -> str:
    return np.format_float_scientific(lr, trim="-", exp_digits=1)


def fmt_num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return ""
    if math.isinf(x):
        return "inf"
    if abs(x) >= 10**digits:  # large perplexities (an untrained model): whole numbers, not 5.097e+04
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def fmt_pct(x: float) -> str:
    return f"{x:.3g}" if x < 0.01 else f"{x * 100:.3g}%"
