"""Sharded, parallel, resumable preparation: one input shard -> one output part.

Layout written (format_version 2, read by ``overtrain.data.c4``)::

    OUT/plan.json              the settings that fix the output; a rerun with other settings is refused
    OUT/val/part-NNNNN.npy     flat tokens of validation shard NNNNN (raw, EOS after every document)
    OUT/val/part-NNNNN.json    its manifest entry (source, bytes, tokens, documents, sha256)
    OUT/val/part-NNNNN.digests 16-byte blake2b digest of each of its documents (no-copy guarantee)
    OUT/train/part-NNNNN.npy, part-NNNNN.json
    OUT/meta.json              every entry (the two manifests); written last: the dataset is finished

Invariants:

- Part k of a split comes from shard k of that split (input order, each glob sorted) and nothing
  else; its bytes depend only on the shard, the tokenizer and the validation digests, never on
  the number of workers, the timing or an earlier kill.
- A part is written under a temporary name, fsynced and renamed, then its entry: a part is
  finished iff its entry exists and the file has the entry's size and sha256. A rerun verifies
  finished parts (in the workers) and redoes the others, so a killed run resumes and ends
  byte-identical to an uninterrupted one.
- Validation first; every training worker gets the set of validation digests and drops training
  documents with one of them (counted per part): no validation document is trained on.
- ``max_tokens``: training parts are taken in order until their tokens reach max_tokens (whole
  parts); later parts are not started, and any already written are removed.
- Each worker reads its own shard (no parent stream), a chunk of ``chunk_chars`` characters at a
  time: memory per worker = tokenizer + digest set + one chunk, never a whole shard.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...core.atomic import atomic_write_bytes, atomic_write_text
from ...core.errors import DataError
from .documents import LOCAL_SUFFIXES, read_file
from .encoder import Encoder, ValCopies
from .parts import verify_part

DIGEST = 16  # bytes per validation document digest (ValCopies.digest)
HUB_PREFIX = "hf://datasets/"


@dataclass
class Shard:
    """One unit of work: an input file -> ``OUT/{split}/part-{index:05d}.npy``."""

    split: str  # "train" | "val"
    index: int
    source: str  # a local path, or hf://datasets/REPO/FILE (fetched by the worker)
    revision: str | None = None  # hub revision
    limit: int | None = None  # use only the first N documents (max_docs)
    val_digests: str | None = None  # train: file of validation document digests whose copies are dropped
    take: np.ndarray | None = None  # hold-out: per used document, True = keep in this split

    @property
    def name(self) -> str:
        return f"{self.split}/part-{self.index:05d}"


def hub_shards(dataset: str, config: str | None, split: str, revision: str | None) -> list[str]:
    """The hub data files of one split, by name (``{config}/*{split}*``, sorted), as hf:// sources."""
    from huggingface_hub import HfApi  # heavy: huggingface_hub, only hub sources (workers stay light)

    pattern = f"{config}/*{split}*" if config else f"*{split}*"
    try:
        files = HfApi().list_repo_files(dataset, repo_type="dataset", revision=revision)
    except Exception as e:  # no network, unknown repo: user-facing
        raise DataError(f"{dataset}: cannot list data files on the hub: {type(e).__name__}: {e}") from None
    names = sorted(f for f in files if fnmatch.fnmatch(f, pattern) and f.endswith(LOCAL_SUFFIXES))
    if not names:
        raise DataError(f"{dataset}: no data files match '{pattern}' (config '{config}', split '{split}')")
    return [f"{HUB_PREFIX}{dataset}/{n}" for n in names]


def _local(shard: Shard) -> Path:
    if not shard.source.startswith(HUB_PREFIX):
        return Path(shard.source)
    from huggingface_hub import hf_hub_download  # heavy: huggingface_hub, only hub sources (workers stay light)

    repo_file = shard.source[len(HUB_PREFIX) :]
    owner, name, file = repo_file.split("/", 2)
    try:
        return Path(hf_hub_download(f"{owner}/{name}", file, repo_type="dataset", revision=shard.revision))
    except Exception as e:
        raise DataError(f"{shard.source}: download failed: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------------------------
# In a worker


@dataclass
class Worker:
    out: Path
    encoder: Encoder
    text_field: str
    chunk_chars: int
    digests_file: str | None = None
    val_digests: frozenset = frozenset()

    def digests(self, path: str | None) -> frozenset:
        """The validation digests in ``path``, read once per worker."""
        if path != self.digests_file:
            data = Path(path).read_bytes() if path else b""
            self.val_digests = frozenset(data[i : i + DIGEST] for i in range(0, len(data), DIGEST))
            self.digests_file = path
        return self.val_digests


_WORKER: Worker | None = None


def init_worker(out: str, tokenizer: str, dtype: str, text_field: str, chunk_chars: int) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER = Worker(Path(out), Encoder(tokenizer, dtype), text_field, chunk_chars)


def run_shard(shard: Shard) -> dict:
    """Verify a finished part, or write it; returns its manifest entry (+ ``digests`` for val)."""
    w = _WORKER
    final = w.out / f"{shard.name}.npy"
    entry_path = final.with_suffix(".json")
    if entry_path.is_file():
        return _finished(shard, final, entry_path, w.encoder.dtype.name)
    return _write(shard, final, entry_path, w)


def _finished(shard: Shard, final: Path, entry_path: Path, dtype: str) -> dict:
    entry = json.loads(entry_path.read_text())
    where = f"{entry_path} (a finished part; delete both files to redo it, or pass overwrite=true)"
    verify_part(final, entry, dtype, where)
    if entry["source"] != shard.source:
        raise DataError(
            f"{entry_path}: made from {entry['source']}, but this run's shard {shard.index} is {shard.source}"
        )
    src = Path(shard.source)
    if not shard.source.startswith(HUB_PREFIX) and src.is_file() and src.stat().st_size != entry["source_bytes"]:
        raise DataError(f"{src}: {src.stat().st_size:,} bytes now, {entry['source_bytes']:,} in {where}")
    if shard.split == "val":
        digests = final.with_suffix(".digests").read_bytes()
        if len(digests) != DIGEST * entry["documents"]:
            raise DataError(f"{final.with_suffix('.digests')}: not {entry['documents']} digests ({where})")
        entry["digests"] = digests
    return entry | {"resumed": True}


def _documents(shard: Shard, path: Path, text_field: str, counter: list[int]) -> Iterator[str]:
    for text in itertools.islice(read_file(path, text_field), shard.limit):
        counter[0] += 1
        yield text


def _write(shard: Shard, final: Path, entry_path: Path, w: Worker) -> dict:
    path = _local(shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    records, digests, sha = [0], bytearray(), hashlib.sha256()
    val_digests = w.digests(shard.val_digests)
    tokens = documents = dropped = 0
    docs = _documents(shard, path, w.text_field, records)
    if shard.take is not None:
        docs = itertools.compress(docs, shard.take)
    try:
        with open(tmp, "wb") as f:
            buf, size = [], 0
            for text in itertools.chain(docs, [None]):  # None: flush the last chunk
                if text is not None:
                    d = ValCopies.digest(text)
                    if shard.split == "val":
                        digests += d
                    elif d in val_digests:
                        dropped += 1
                        continue
                    buf.append(text)
                    size += len(text)
                if buf and (text is None or size >= w.chunk_chars):
                    ids = w.encoder(buf).tobytes()
                    f.write(ids)
                    sha.update(ids)
                    tokens += len(ids) // w.encoder.dtype.itemsize
                    documents += len(buf)
                    buf, size = [], 0
            f.flush()
            os.fsync(f.fileno())
        if records[0] == 0:
            raise DataError(f"{shard.source}: no documents (empty shard)")
        entry = {
            "file": f"{shard.name}.npy",
            "source": shard.source,
            "bytes": tokens * w.encoder.dtype.itemsize,
            "tokens": tokens,
            "documents": documents,
            "records": records[0],
            "source_bytes": path.stat().st_size,
            "sha256": sha.hexdigest(),
        }
        if shard.split == "train":
            entry["dropped_val_duplicates"] = dropped
        else:
            atomic_write_bytes(final.with_suffix(".digests"), bytes(digests))
        os.replace(tmp, final)
        atomic_write_text(entry_path, json.dumps(entry, indent=2) + "\n")  # last: the part is finished
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return entry | ({"digests": bytes(digests)} if shard.split == "val" else {})


# ----------------------------------------------------------------------------------------------
# In the parent


class Workers:
    """``n`` spawned processes (or this one, for n = 1) that run shards; one pool for both splits."""

    def __init__(self, out: Path, n: int, tokenizer: str, dtype: str, text_field: str, chunk_chars: int):
        self.args = (str(out), tokenizer, dtype, text_field, chunk_chars)
        self.n, self.pool = n, None
        if n > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(n, ctx, init_worker, self.args)
        else:
            self.saved = os.environ.get("TOKENIZERS_PARALLELISM")
            init_worker(*self.args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        elif self.saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = self.saved

    def run(self, shards: list[Shard], stop_tokens: int | None = None, desc: str = "") -> list[dict]:
        """Entries of ``shards`` in order; with ``stop_tokens``, the shortest prefix reaching it.

        Parts after that prefix (written by a worker that ran ahead, or by an earlier run) are removed.
        """
        entries: list[dict] = []
        enough = lambda: stop_tokens is not None and sum(e["tokens"] for e in entries) >= stop_tokens  # noqa: E731
        with tqdm(total=len(shards), desc=desc, unit="part", disable=None, file=sys.stderr) as bar:
            if self.pool is None:
                for shard in shards:
                    if enough():
                        break
                    entries.append(run_shard(shard))
                    bar.update(1)
            else:
                todo, pending = iter(shards), deque()
                try:
                    while True:
                        while len(pending) < 2 * self.n and not enough():  # every worker busy, few queued
                            shard = next(todo, None)
                            if shard is None:
                                break
                            pending.append(self.pool.submit(run_shard, shard))
                        if not pending or enough():
                            break
                        entries.append(pending.popleft().result())
                        bar.update(1)
                finally:
                    for fut in pending:
                        fut.cancel()
                    wait([f for f in pending if not f.cancelled()])  # ran ahead: let them finish before cleanup
        if stop_tokens is not None:
            out = Path(self.args[0])
            for shard in shards[len(entries) :]:
                for suffix in (".npy", ".json", ".digests"):
                    (out / f"{shard.name}{suffix}").unlink(missing_ok=True)
        return entries


def remove_temporaries(out: Path) -> None:
    """Temporary files of a killed run (hidden ``.NAME.tmp...``; never a finished part)."""
    for d in (out, out / "train", out / "val"):
        for p in d.glob(".*.tmp*"):
            p.unlink(missing_ok=True)
