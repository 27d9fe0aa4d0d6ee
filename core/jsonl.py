"""Append-only JSONL files (``results.jsonl``, ``metrics.jsonl``): one JSON object per line, safe under kills
and concurrent writers.

This is the file store: it writes and reads *records*, the plain dicts on disk, whatever their keys.
``core.rows`` is the schema over the same ``results.jsonl`` files: ``core.rows.load_rows`` reads them as
typed rows (one dataclass per kind, keys checked) and is the reader to call for results; use
``read_records`` only where the dicts must stay as written (re-encoding a file, a key lookup that must
not fail on another kind's row, files that are not results).

``append_record`` takes an exclusive ``fcntl`` lock on the file, then writes the whole line with a
single ``write`` and fsyncs it, so records from concurrent processes never interleave and a record is
either on disk whole or not at all. A writer killed mid-write can still leave a torn tail (no
final newline); readers ignore it (counted, warned) and the next ``append_record`` repairs it under
the lock: a tail that parses as a record gets its newline, anything else is cut off (its job never
finished, so it will be rerun). Readers take no lock: a record being written is just a torn tail.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError

RESULTS_FILE = "results.jsonl"

_thread_lock = threading.Lock()  # fcntl locks are per process; this one orders threads within it


def _jsonable(obj):
    """numpy scalars/arrays, paths and sets as plain JSON values."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"record value {obj!r} ({type(obj).__name__}) is not JSON-serializable")


def encode_record(record: dict) -> bytes:
    """One full line. NaN/inf stay as Python's ``NaN``/``Infinity`` (a diverged run is a result)."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a dict, got {type(record).__name__}")
    return (json.dumps(record, default=_jsonable) + "\n").encode()


def _parse(line: bytes):
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _repair_tail(fd: int) -> None:
    """Under the lock: make the file end at a line boundary before appending (see module doc)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    # Find the start of the unterminated tail (read backwards in blocks).
    start, pos = 0, size
    while pos > 0:
        n = min(65536, pos)
        pos -= n
        block = os.pread(fd, n, pos)
        nl = block.rfind(b"\n")
        if nl >= 0:
            start = pos + nl + 1
            break
    tail = os.pread(fd, size - start, start)
    if _parse(tail) is not None:
        os.write(fd, b"\n")
    else:
        os.ftruncate(fd, start)


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one line of ``path`` (created with its parents): locked, one write, fsync."""
    data = encode_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock:
        # read access too: a torn tail is inspected before appending
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)  # POSIX record lock: also honoured over NFS
            try:
                _repair_tail(fd)
                written = os.write(fd, data)
                while written < len(data):  # regular files write fully; this is a safety net
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def results_files(source: str | os.PathLike) -> list[Path]:
    """The JSONL files named by a file, a directory (every ``results.jsonl`` below it, else its
    ``*.jsonl``) or a glob pattern. Raises ``DataError`` when nothing matches."""
    text = os.fspath(source)
    p = Path(text)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted(p.rglob(RESULTS_FILE)) or sorted(p.glob("*.jsonl"))
        if not found:
            raise DataError(f"{p}: no {RESULTS_FILE} (or *.jsonl) in this directory")
        return found
    if glob.has_magic(text):
        found = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        if not found:
            raise DataError(f"{text}: no file matches this pattern")
        return found
    raise DataError(f"{p}: results file not found")


def iter_records(path: str | os.PathLike, torn: list | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, record) of one file. An unparsable *last* line without a newline is a torn
    write: skipped and recorded in ``torn`` (as ``"file:line"``). Any other bad line raises
    ``DataError`` naming file and line: that is corruption, not an interrupted append."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read results ({e.strerror})") from None
    lines = data.split(b"\n")
    last = len(lines) - 1  # lines[last] is b"" when the file ends with a newline
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            if i == last:
                if torn is not None:
                    torn.append(f"{path}:{i + 1}")
                continue
            raise DataError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}")
        yield i + 1, record


class Records(list):
    """A list of records that also says where they came from: ``files`` read, ``where`` ("file:line")
    per record, ``torn`` final lines skipped."""

    files: list[Path]
    where: list[str]
    torn: list[str]


def read_records(source: str | os.PathLike | list, warn: bool = True) -> Records:
    """All records of one or more results files (file, directory, glob, or a list of those), each file once.

    Each record is the dict on disk, no keys added (``overtrain.core.rows.load_rows`` parses them into
    typed rows); ``Records.where`` says where each came from, ``Records.torn`` lists the torn final lines
    skipped (a ``UserWarning`` says how many when ``warn``)."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    files: list[Path] = []
    for s in sources:
        files += [f for f in results_files(s) if f not in files]
    out = Records()
    out.files, out.where, out.torn = files, [], []
    for f in files:
        for line, record in iter_records(f, out.torn):
            out.append(record)
            out.where.append(f"{f}:{line}")
    if out.torn and warn:
        warnings.warn(
            f"ignored {len(out.torn)} torn final line(s) (interrupted writes): {', '.join(out.torn)}", stacklevel=2
        )
    return out
