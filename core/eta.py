"""Elapsed time, ETA and rates for log lines without a terminal (batch jobs, grid logs).

    ETA = elapsed / (done - start) x (total - done)

``done`` counts units (steps, LRs, FLOPs) finished since ``Eta`` was made at ``start`` units (a
resumed run's first step): the rate is this session's, so a resume's skipped work does not make
the ETA optimistic. Before any unit is done the ETA is unknown ("?").
"""

from __future__ import annotations

import math
import time


def fmt_duration(seconds: float | None) -> str:
    """3725 -> '1:02:05', 93784 -> '1d 2:03:04', None/inf -> '?'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


class Eta:
    def __init__(self, total: float, start: float = 0.0, clock=time.monotonic):
        self.total, self.start, self.clock = total, start, clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def remaining(self, done: float) -> float | None:
        """Seconds left at ``done`` units, at this session's rate; None before the first unit."""
        if done <= self.start:
            return None
        return self.elapsed() / (done - self.start) * max(0.0, self.total - done)

    def text(self, done: float) -> str:
        return f"elapsed {fmt_duration(self.elapsed())} | ETA {fmt_duration(self.remaining(done))}"
