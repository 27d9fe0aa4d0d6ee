"""Documents in, token ids out: the pieces both prepare-data layouts share.

Readers: local ``.json``/``.json.gz``/``.jsonl``/``.parquet`` files (``read_file``: every problem
a ``DataError`` naming the file and line) and a hub split streamed through ``datasets``. The
hold-out rule (a seeded document-level split of one pool), the ``Encoder`` (texts -> one flat
array, EOS after every document) and ``ValCopies`` (16-byte blake2b digests of validation
documents, so that training copies of them are dropped).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ...core.paths import expand_path
from ..tokenizer import eos_token_id, load_tokenizer

LOCAL_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".parquet")


# ----------------------------------------------------------------------------------------------
# Reading documents


@dataclass
class LocalDocuments:
    """Local files, in the order given (each glob sorted)."""

    paths: list[Path]
    text_field: str = "text"
    max_docs: int | None = None
    records: list[int] = field(default_factory=list)  # documents used per file, set by scan()

    def describe(self) -> list[dict]:
        return [{"path": str(p), "bytes": p.stat().st_size, "records": n} for p, n in zip(self.paths, self.records)]

    def scan(self) -> int:
        """Parse and check every record that will be used (errors name file and line); count them."""
        self.records, left = [], self.max_docs
        for p in self.paths:
            if left == 0:  # max_docs reached: later files are not used
                break
            n = sum(1 for _ in itertools.islice(read_file(p, self.text_field), left))
            if n == 0:
                raise DataError(f"{p}: no documents (empty file)")
            self.records.append(n)
            left = None if left is None else left - n
        return sum(self.records)

    def documents(self) -> Iterator[str]:
        docs = itertools.chain.from_iterable(read_file(p, self.text_field) for p in self.paths)
        return itertools.islice(docs, self.max_docs)


@dataclass
class HubDocuments:
    """One split of a hub dataset, streamed through ``datasets.load_dataset``."""

    dataset: str
    config: str | None
    split: str
    revision: str | None = None
    text_field: str = "text"
    max_docs: int | None = None

    @property
    def name(self) -> str:
        return f"{self.dataset} ({self.config or 'default'}, split '{self.split}')"

    def describe(self) -> list[dict]:
        return [
            {
                "hub": self.dataset,
                "config": self.config,
                "split": self.split,
                "revision": self.revision,
                "max_docs": self.max_docs,
            }
        ]

    def _open(self):
        import datasets  # heavy: datasets (~1 s), only the hub path

        try:
            return datasets.load_dataset(
                self.dataset, name=self.config, split=self.split, streaming=True, revision=self.revision
            )
        except Exception as e:  # network, unknown dataset/config/split: all user-facing
            raise DataError(
                f"{self.name}: cannot open from the hub: {type(e).__name__}: {e} "
                "(no network? use train=/val= with local files)"
            ) from None

    def scan(self) -> int | None:
        """Open the stream and check its first record (the count is unknown when streaming)."""
        for _ in itertools.islice(self.documents(), 1):
            return None
        raise DataError(f"{self.name}: no documents")

    def documents(self) -> Iterator[str]:
        records = iter(self._open())
        for i in itertools.count() if self.max_docs is None else range(self.max_docs):
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as e:
                raise DataError(f"{self.name}: reading record {i} failed: {type(e).__name__}: {e}") from None
            yield _text_of(record, self.text_field, f"{self.name}, record {i}")


def _text_of(record, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with a '{field}' field, got {type(record).__name__}")
    if field not in record:
        raise DataError(
            f"{where}: record has no field '{field}' (fields: {', '.join(map(str, record))}); pick one with text_field="
        )
    text = record[field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{field}' is {type(text).__name__}, not a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\\ud800" escape: not text
        raise DataError(f"{where}: field '{field}' is not valid Unicode (lone surrogate escape)") from None
    return text


def read_file(path: Path, field: str) -> Iterator[str]:
    """Texts of one local file; every problem becomes a DataError naming the file (and line)."""
    if path.name.endswith(".parquet"):
        yield from _read_parquet(path, field)
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            first = True
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if first and line.lstrip().startswith(b"["):  # a .json holding one array
                    yield from _read_json_array(path, line + f.read(), field)
                    return
                first = False
                try:
                    record = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start} of the line)") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
                yield _text_of(record, field, f"{path}:{lineno}")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _read_json_array(path: Path, data: bytes, field: str) -> Iterator[str]:
    try:
        records = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected JSON lines or one JSON array of records")
    for i, record in enumerate(records):
        yield _text_of(record, field, f"{path}: record {i}")


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa  # heavy: pyarrow, only parquet inputs
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read as parquet: {e}") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no column '{field}' (columns: {', '.join(names)}); pick one with text_field=")
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column '{field}' is {kind}, not a string column")
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is None:
                raise DataError(f"{path}: row {row}: column '{field}' is null")
            row += 1
            yield text


def expand_inputs(patterns: Iterable[str], key: str, suffixes: tuple[str, ...] = LOCAL_SUFFIXES) -> list[Path]:
    """Files named by paths/globs, each glob sorted, in the order given; errors name the pattern."""
    out: list[Path] = []
    for pattern in patterns:
        text = expand_path(pattern)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise DataError(f"{key}={pattern}: the glob matches no files")
        else:
            matches = [text]
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise DataError(f"{key}={p}: no such file")
            if p.is_dir():
                raise DataError(f"{key}={p}: is a directory; give files or a glob such as '{p}/*.json.gz'")
            if not p.name.endswith(suffixes):
                raise DataError(f"{key}={p}: unsupported file type (expected {', '.join(suffixes)})")
            if not os.access(p, os.R_OK):
                raise DataError(f"{key}={p}: not readable (permissions)")
            if p.stat().st_size == 0:
                raise DataError(f"{key}={p}: empty file")
            p = p.resolve()
            if p not in out:
                out.append(p)
    return out


# ----------------------------------------------------------------------------------------------
# Hold-out


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


# ----------------------------------------------------------------------------------------------
# Tokenizing


class Encoder:
    """Texts -> one flat array: each document's ids (no special tokens) followed by EOS."""

    def __init__(self, tokenizer: str, dtype: str):
        self.tok = load_tokenizer(tokenizer)
        self.eos = eos_token_id(self.tok)
        self.dtype = np.dtype(dtype)
        # encode_batch_fast skips char offsets we do not need; same ids as encode_batch
        self.encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)

    def __call__(self, texts: list[str]) -> np.ndarray:
        ids = [e.ids for e in self.encode(texts, add_special_tokens=False)]
        for doc in ids:
            doc.append(self.eos)
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=sum(map(len, ids)))


class ValCopies:
    """Remembers validation documents (16-byte digests) and drops exact copies from training."""

    def __init__(self):
        self.digests: set[bytes] = set()
        self.dropped = 0

    @staticmethod
    def digest(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def remember(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            self.digests.add(self.digest(text))
            yield text

    def drop_copies(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            if self.digest(text) in self.digests:
                self.dropped += 1
                continue
            yield text
