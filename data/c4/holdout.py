"""The seeded document-level hold-out: validation documents drawn from one pool (only ``train=`` given).

Document i is held out iff its key splitmix64(i XOR splitmix64(seed)) is among the n_val smallest
(``HOLDOUT_RULE``, recorded in meta.json): the split depends only on (documents, n_val, seed), never
on the order of work or the number of workers.
"""

from __future__ import annotations

import numpy as np

from ...core.errors import DataError


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


HOLDOUT_RULE = "val = the n_val document indices with the smallest splitmix64(index XOR splitmix64(seed))"


def holdout_size(n_docs: int, val_docs: int | None, val_fraction: float | None) -> int:
    """Validation documents held out of ``n_docs``: ``val_docs``, else round(``val_fraction`` x n_docs);
    a DataError when the hold-out would leave either side empty."""
    n_val = val_docs if val_docs is not None else round(val_fraction * n_docs)
    if not 0 < n_val < n_docs:
        raise DataError(
            f"train: hold-out of {n_val} documents out of {n_docs} leaves an empty "
            f"{'validation' if n_val <= 0 else 'training'} set"
        )
    return n_val


def holdout_mask(n_docs: int, n_val: int, seed: int) -> np.ndarray:
    """Boolean mask over document indices: True = validation. Depends only on (n_docs, n_val, seed)."""
    keys = _splitmix64(np.arange(n_docs, dtype=np.uint64) ^ _splitmix64(np.array([seed], dtype=np.uint64)))
    mask = np.zeros(n_docs, dtype=bool)
    mask[np.argpartition(keys, n_val - 1)[:n_val]] = True
    return mask
