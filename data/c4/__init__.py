"""A prepared C4 directory (``overtrain prepare-data``, ``overtrain.data.c4.prepare``), read.

Two layouts, both read here (see DESIGN.md, Data)::

    single file (format_version 1)        manifest of parts (format_version 2)
    DIR/train.npy, DIR/val.npy            DIR/train/part-NNNNN.npy ..., DIR/val/part-NNNNN.npy ...
    DIR/meta.json: splits.S.file          DIR/meta.json: splits.S.parts = [{file, tokens, bytes, ...}]

Token files are flat ids, raw (no .npy header, as OLMo's MemMapDataset reads them), EOS after
every document. meta.json holds tokenizer, vocab_size, eos_token_id, dtype and the splits; it is
written last: its presence means "finished". A manifest's part may be an absolute path outside
DIR (``prepare-data from_npy=``: tokens made elsewhere, not copied). ``tokens(split)`` is one flat
array either way (``overtrain.data.c4.parts.PartTokens`` concatenates parts in manifest order).

``open_prepared`` validates everything it can before any work starts (every problem a
``DataError`` naming the file and field); ``open_for_model`` also checks that a model can read
the token ids (its vocabulary size and EOS); ``load_c4`` is the evaluated prefix of the held-out
validation tokens, opened that way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ...core.model_spec import check_vocab
from ...core.paths import expand_path
from .parts import PartTokens, open_parts

PREPARED_SPLITS = ("train", "val")  # the token files of a prepared directory (not task splits)


@dataclass
class PreparedData:
    """A finished ``prepare-data`` directory. ``tokens(split)`` is a read-only flat token array."""

    path: Path
    meta: dict

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][self._split(split)]["tokens"])

    def tokens(self, split: str) -> np.memmap | PartTokens:
        split = self._split(split)
        info = self.meta["splits"][split]
        if "parts" in info:
            paths, counts = open_parts(self.path, info["parts"], self.meta["dtype"], str(self.meta_path))
            return PartTokens(paths, self.meta["dtype"], counts)
        return np.memmap(
            self.path / self.meta["splits"][split]["file"],
            dtype=self.meta["dtype"],
            mode="r",
            shape=(self.num_tokens(split),),
        )

    def check_vocab(self, model_spec) -> None:
        """DataError naming meta.json and the field if ``model_spec``'s model (a ``core.model_spec.ModelSpec``)
        cannot read these token ids: ``core.model_spec.check_vocab``, the one vocabulary check."""
        meta = self.meta
        check_vocab(
            model_spec, meta["vocab_size"], str(self.meta_path), meta["eos_token_id"], meta.get("tokenizer"), DataError
        )

    def _split(self, split: str) -> str:
        if split not in self.meta["splits"]:
            raise DataError(f"{self.meta_path}: no split '{split}' (has {', '.join(self.meta['splits'])})")
        return split


def open_prepared(path: str | os.PathLike) -> PreparedData:
    """Open and validate a prepared directory; every problem is a DataError naming file and field."""
    root = Path(expand_path(path))
    if not root.is_dir():
        raise DataError(f"{root}: prepared data directory not found (run `overtrain prepare-data out={root} ...`)")
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path}: missing: the directory is unfinished or not from prepare-data (meta.json is written last)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{meta_path}: unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object")
    for key in ("vocab_size", "eos_token_id", "dtype", "splits"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing field '{key}'")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{meta_path}: field 'dtype' is {meta['dtype']!r}; expected 'uint16' (or 'uint32')")
    if meta["dtype"] == "uint16" and meta["vocab_size"] > 1 << 16:
        raise DataError(f"{meta_path}: field 'dtype' uint16 cannot hold vocab_size {meta['vocab_size']}")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in PREPARED_SPLITS:
        info = meta["splits"].get(split)
        if isinstance(info, dict) and isinstance(info.get("parts"), list):  # a manifest of parts
            _, counts = open_parts(root, info["parts"], meta["dtype"], f"{meta_path} (splits.{split}.parts)")
            if sum(counts) != info.get("tokens") or sum(counts) == 0:
                raise DataError(
                    f"{meta_path}: splits.{split}.tokens is {info.get('tokens')!r} but its parts hold {sum(counts):,}"
                )
            continue
        if not isinstance(info, dict) or not isinstance(info.get("tokens"), int) or "file" not in info:
            raise DataError(f"{meta_path}: field 'splits.{split}' missing or without 'file' and integer 'tokens'")
        file = root / info["file"]
        if not file.is_file():
            raise DataError(f"{file}: missing (listed in {meta_path} as splits.{split}.file)")
        size, want = file.stat().st_size, info["tokens"] * itemsize
        if size != want or want == 0:
            raise DataError(
                f"{file}: {size:,} bytes, but {meta_path} says splits.{split}.tokens = "
                f"{info['tokens']:,} x {meta['dtype']} = {want:,} bytes (truncated or replaced?)"
            )
    return PreparedData(root, meta)


def open_for_model(path: str | os.PathLike, spec) -> PreparedData:
    """``open_prepared``, then ``check_vocab``: a prepared directory whose token ids ``spec``'s model reads."""
    data = open_prepared(path)
    data.check_vocab(spec)
    return data


def load_c4(c4_dir: str | os.PathLike, spec, max_tokens: int | None, seq_len: int) -> np.ndarray:
    """The evaluated prefix of a prepared directory's held-out C4 validation tokens (never trained on).

    The directory's tokenizer must match the model's vocabulary and EOS (``open_for_model``).
    """
    data = open_for_model(c4_dir, spec)
    tokens = data.tokens("val")
    if len(tokens) < seq_len + 1:
        raise DataError(f"{data.path}: {len(tokens)} validation tokens, need at least {seq_len + 1} for one window")
    n = len(tokens) if max_tokens is None else min(len(tokens), max(1, max_tokens // seq_len) * seq_len + 1)
    return np.asarray(tokens[:n])
