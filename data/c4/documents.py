"""Documents in: the readers both prepare-data layouts share (hold-out: ``holdout``; tokens: ``encoder``).

Local ``.json``/``.json.gz``/``.jsonl``/``.parquet`` files (``read_file``: every problem a
``DataError`` naming the file and line; ``expand_inputs``: files and globs, each glob sorted) and a
hub split streamed through ``datasets``.
"""

from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...core.errors import DataError
from ...core.paths import expand_path

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
