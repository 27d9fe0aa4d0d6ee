"""Comparing the report's tables across versions."""

from __future__ import annotations

import csv
from pathlib import Path


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def same_columns(new: list[list[str]], old: list[list[str]]) -> bool:
    """``new`` holds ``old``'s table unchanged: the same rows with the same leading columns and values;
    columns a later version appends (perturb.csv's t intervals, issue 21) are allowed."""
    return len(new) == len(old) and all(n[: len(o)] == o for n, o in zip(new, old))
