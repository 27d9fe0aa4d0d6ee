"""A split stored as a manifest of OLMo-format parts, read as one flat token array.

A part is a raw flat ``uint16``/``uint32`` file (no ``.npy`` header, as OLMo's ``MemMapDataset``
and ``dolma tokens`` write it); a manifest lists parts in order, each with its byte size, token
count, document count and sha256. The split's token stream is the concatenation of its parts in
manifest order: global token t is token ``t - start[k]`` of part ``k = max{k : start[k] <= t}``
with ``start = cumsum([0] + tokens)``. A split of one part is exactly that part's memmap, so the
single-file layout is the one-part case of this one (same windows, same batches).

``check_part`` is the cheap check run on every open (the file exists; size = tokens x itemsize,
a whole number of tokens); ``verify_part`` adds the sha256 (a full read).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...core.errors import DataError

HASH_BLOCK = 1 << 24  # bytes read at a time when hashing a part


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def check_part(path: Path, dtype: str, tokens: int | None, where: str) -> int:
    """The part's token count; a DataError naming the file if it is missing, resized or ragged."""
    if not path.is_file():
        raise DataError(f"{path}: missing (listed in {where})")
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size % itemsize:
        raise DataError(
            f"{path}: {size:,} bytes is not a whole number of {dtype} tokens ({itemsize} bytes each): "
            "truncated, or not a flat token file of this dtype"
        )
    if tokens is not None and size != tokens * itemsize:
        raise DataError(
            f"{path}: {size:,} bytes, but {where} says {tokens:,} tokens x {dtype} = {tokens * itemsize:,} bytes "
            "(truncated or replaced?)"
        )
    return size // itemsize


def verify_part(path: Path, entry: dict, dtype: str, where: str) -> None:
    """``check_part`` and the sha256 recorded in ``entry`` (a full read of the file)."""
    check_part(path, dtype, entry["tokens"], where)
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise DataError(f"{path}: sha256 differs from {where} (the file was changed after it was written)")


class PartTokens:
    """Read-only concatenation of flat token memmaps: ``len``, slices and integer-array indexing."""

    def __init__(self, paths: list[Path], dtype: str, counts: list[int]):
        self.dtype = np.dtype(dtype)
        keep = [(p, n) for p, n in zip(paths, counts) if n > 0]  # an empty part holds no tokens (no memmap)
        self.parts = [np.memmap(p, dtype=self.dtype, mode="r", shape=(n,)) for p, n in keep]
        self.starts = np.cumsum([0] + [n for _, n in keep], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __array__(self, dtype=None, copy=None):
        out = self[0 : len(self)]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, max(start, stop))
        idx = np.asarray(key)
        if idx.ndim == 0:
            return self._range(int(idx) % len(self), int(idx) % len(self) + 1)[0]
        flat = idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + len(self), flat)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} tokens")
        which = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.parts[k][flat[sel] - self.starts[k]]
        return out.reshape(idx.shape)

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop): a view when inside one part, else a copy across parts."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        first = min(max(first, 0), max(len(self.parts) - 1, 0))
        if not self.parts or stop <= start:
            return np.empty(0, dtype=self.dtype)
        s0 = start - int(self.starts[first])
        if stop <= self.starts[first + 1]:
            return self.parts[first][s0 : stop - int(self.starts[first])]
        pieces, k = [], first
        while k < len(self.parts) and self.starts[k] < stop:
            lo = max(start, int(self.starts[k])) - int(self.starts[k])
            hi = min(stop, int(self.starts[k + 1])) - int(self.starts[k])
            pieces.append(self.parts[k][lo:hi])
            k += 1
        return np.concatenate(pieces)


def open_parts(root: Path, entries: list[dict], dtype: str, where: str) -> tuple[list[Path], list[int]]:
    """Paths (relative ones under ``root``) and token counts of a manifest, each part checked."""
    paths, counts = [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "file" not in e or not isinstance(e.get("tokens"), int):
            raise DataError(f"{where}: part {i} has no 'file' and integer 'tokens'")
        p = Path(e["file"])
        p = p if p.is_absolute() else root / p
        counts.append(check_part(p, dtype, e["tokens"], where))
        paths.append(p)
    return paths, counts
