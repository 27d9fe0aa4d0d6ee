"""prepare-data, ``layout=parts``: plan the shards, resume or start, run them, write the manifests.

    prepare_parts(cfg, out, t0)  text shards -> OUT/{val,train}/part-NNNNN.npy (``overtrain.data.c4.shard_worker``)
    own_tokens(cfg, out, t0)     a manifest over existing OLMo-format parts (``from_npy=``), not copied

Shards: one per input file (local, or a hub data file listed by name). ``max_docs`` and the
hold-out need document counts, so only then are the inputs counted first (small data); otherwise
each worker checks its own shard, and a bad shard fails its part only (the error names the file
and line; other parts stay finished; no meta.json is written, so nothing looks finished).

Resume: ``OUT/plan.json`` (written first) holds every setting the bytes depend on; a rerun with
the same plan continues (finished parts verified by size and sha256), one with another plan is
refused unless ``overwrite=true``.

A Slurm job array (``stage=``, ``launch/slurm.py`` writes the scripts): ``stage=plan`` once
(plan.json, the validation parts and their digests), then ``stage=shards task=I/T`` per array task
(training shards ``task_range(I/T)``: contiguous, every shard in exactly one task; tasks share
nothing but finished files, never write plan.json, and remove only their own shards' temporaries),
then ``stage=merge`` (every needed part finished, else an error naming them; all verified; the
max_tokens prefix kept; meta.json). The result is the one ``stage=all`` writes, byte for byte.

Bring your own tokens: each part's size must be a whole number of ``dtype`` tokens, its ids
below the tokenizer's vocabulary and its documents closed by the tokenizer's EOS (a part from
another tokenizer fails one of these); the entries (absolute paths, sizes, tokens, documents,
sha256) are computed by ``workers`` processes.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ...core.atomic import atomic_write_bytes, atomic_write_text
from ...core.errors import ConfigError, DataError
from ..tokenizer import tokenizer_meta
from .documents import LocalDocuments, expand_inputs
from .holdout import HOLDOUT_RULE, holdout_mask, holdout_size
from .parts import check_part, sha256_file
from .shard_worker import Shard, Workers, hub_shards, remove_temporaries

FORMAT_VERSION = 2
NPY_BLOCK = 1 << 24  # tokens per block when scanning an existing part


def _shards(cfg) -> tuple[list[Shard], list[Shard], dict]:
    """(val shards, train shards, hold-out description)."""
    if cfg.hf_dataset:
        rev, cfg_name = cfg.hf_revision, cfg.hf_config or None
        mk = lambda split, name: [  # noqa: E731
            Shard(split, i, s, rev) for i, s in enumerate(hub_shards(cfg.hf_dataset, cfg_name, name, rev))
        ]
        return mk("val", cfg.val_split), mk("train", cfg.train_split), {"rule": "separate source"}
    train = expand_inputs(cfg.train, "train")
    holdout = cfg.val_docs is not None or cfg.val_fraction is not None
    if not holdout:
        val = expand_inputs(cfg.val, "val")
        both = set(train) & set(val)
        if both:
            raise DataError(f"{sorted(both)[0]}: given in both train= and val=; validation must be held out")
        return (
            _limited("val", val, cfg.max_val_docs, cfg),
            _limited("train", train, cfg.max_docs, cfg),
            {"rule": "separate source"},
        )
    pool = LocalDocuments(train, cfg.text_field, cfg.max_docs)
    n = pool.scan()
    n_val = holdout_size(n, cfg.val_docs, cfg.val_fraction)
    mask = holdout_mask(n, n_val, cfg.seed)
    val, tr, start = [], [], 0
    for i, (path, records) in enumerate(zip(train, pool.records)):
        take = mask[start : start + records]
        val.append(Shard("val", i, str(path), limit=records, take=take))
        tr.append(Shard("train", i, str(path), limit=records, take=~take))
        start += records
    info = {
        "rule": "document hash",
        "seed": cfg.seed,
        "pool_documents": n,
        "val_documents": n_val,
        "val_docs": cfg.val_docs,
        "val_fraction": cfg.val_fraction,
        "selection": HOLDOUT_RULE,
    }
    return val, tr, info


def _limited(split: str, paths: list[Path], max_docs: int | None, cfg) -> list[Shard]:
    if max_docs is None:
        return [Shard(split, i, str(p)) for i, p in enumerate(paths)]
    docs = LocalDocuments(paths, cfg.text_field, max_docs)
    docs.scan()  # documents per file up to max_docs (later files unused)
    return [Shard(split, i, str(p), limit=n) for i, (p, n) in enumerate(zip(paths, docs.records))]


def _plan(cfg, tok: dict, val: list[Shard], train: list[Shard], holdout: dict) -> dict:
    def src(shards):  # names only: each finished part checks its own source's size (a fixed shard is redone alone)
        return [s.source for s in shards]

    return {
        "format_version": FORMAT_VERSION,
        "tokenizer_sha256": tok["tokenizer_sha256"],
        "dtype": tok["dtype"],
        "text_field": cfg.text_field,
        "val": src(val),
        "train": src(train),
        "limits": [[s.limit for s in val], [s.limit for s in train]],
        "holdout": holdout,
        "max_tokens": cfg.max_tokens,
        "hf_revision": cfg.hf_revision,
    }


def _start(out: Path, plan: dict, overwrite: bool) -> int:
    """Create OUT or resume it; returns the number of finished parts found."""
    if out.exists() and not out.is_dir():
        raise DataError(f"out={out}: exists and is not a directory")
    if overwrite and out.exists():
        shutil.rmtree(out)
    plan_path = out / "plan.json"
    for p in out.glob(".plan.json.tmp*"):  # killed while writing the plan: as if never started
        p.unlink(missing_ok=True)
    if out.is_dir() and any(out.iterdir()):
        if (out / "meta.json").exists():
            raise DataError(
                f"out={out}: holds a finished prepared dataset (meta.json); pass overwrite=true to replace it"
            )
        if not plan_path.is_file():
            raise DataError(
                f"out={out}: is not empty (no meta.json: an unfinished or unrelated directory); "
                "pass overwrite=true to replace it"
            )
        old = json.loads(plan_path.read_text())
        if old != json.loads(json.dumps(plan)):
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != json.loads(json.dumps(plan)).get(k))
            raise DataError(
                f"{plan_path}: an unfinished preparation with other settings ({', '.join(diff)} differ); "
                "pass overwrite=true to start again"
            )
        remove_temporaries(out)
        return sum(1 for split in ("train", "val") for _ in (out / split).glob("part-*.json"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
    return 0


def _split_info(entries: list[dict]) -> dict:
    parts = [{k: v for k, v in e.items() if k not in ("digests", "resumed")} for e in entries]
    info = {
        "tokens": sum(p["tokens"] for p in parts),
        "documents": sum(p["documents"] for p in parts),
        "parts": parts,
        "sources": [{"path": p["source"], "bytes": p.get("source_bytes"), "records": p.get("records")} for p in parts],
    }
    if parts and "dropped_val_duplicates" in parts[0]:
        info["dropped_val_duplicates"] = sum(p["dropped_val_duplicates"] for p in parts)
    return info


def prepare_parts(cfg, out: Path, t0: float) -> dict:
    tok = tokenizer_meta(cfg.tokenizer)
    val, train, holdout = _shards(cfg)
    plan = _plan(cfg, tok, val, train, holdout)
    if cfg.stage == "shards":
        return _array_task(cfg, out, plan, train, tok)
    if cfg.stage == "merge":
        _check_merge(out, plan, val, train, cfg.max_tokens)
    finished = _start(out, plan, cfg.overwrite)
    if finished:
        print(f"resuming {out}: {finished} finished parts (verified, not redone)", file=sys.stderr)
    n = min(cfg.workers, max(len(val), len(train)))
    workers = Workers(out, n, cfg.tokenizer, tok["dtype"], cfg.text_field, cfg.chunk_chars)
    try:
        val_entries = workers.run(val, desc="val")
        digests = out / "val" / "digests.bin"  # every training worker drops copies of these documents
        atomic_write_bytes(digests, b"".join(e["digests"] for e in val_entries))
        if cfg.stage == "plan":
            return {"stage": "plan", "val": _split_info(val_entries), "train_shards": len(train)}
        for s in train:
            s.val_digests = str(digests)
        train_entries = workers.run(train, cfg.max_tokens, desc="train")
    finally:
        workers.close()
    splits = {"val": _split_info(val_entries), "train": _split_info(train_entries)}
    dropped = splits["train"].get("dropped_val_duplicates", 0)
    for name, info in splits.items():
        if info["tokens"] == 0:  # e.g. every training document is a copy of a validation one
            raise DataError(f"{name} split is empty ({dropped} training documents were copies of validation documents)")
    if cfg.max_tokens is not None:
        splits["train"]["max_tokens"] = cfg.max_tokens
        if splits["train"]["tokens"] < cfg.max_tokens:
            print(
                f"warning: max_tokens={cfg.max_tokens:,} but all {len(train)} training shards hold only "
                f"{splits['train']['tokens']:,} tokens",
                file=sys.stderr,
            )
    meta = {
        "format": "olmo-memmap",
        "format_version": FORMAT_VERSION,
        "layout": "parts",
        **tok,
        "text_field": cfg.text_field,
        "splits": splits,
        "holdout": holdout,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")  # last: the dataset is finished
    return meta


# ----------------------------------------------------------------------------------------------
# A Slurm job array: plan once, shards per task, merge


def task_range(task: str, n: int) -> range:
    """Shards of array task ``I/T`` out of ``n``: [floor(I n / T), floor((I + 1) n / T)), contiguous,
    sizes differing by at most one, together every shard once."""
    try:
        i, t = (int(x) for x in task.split("/"))
    except ValueError:
        i, t = -1, 0
    if not 0 <= i < t:
        raise ConfigError(f"task={task}: expected I/T with 0 <= I < T (array task I of T), e.g. 0/16")
    return range(i * n // t, (i + 1) * n // t)


def _joined_plan(out: Path, plan: dict, stage: str) -> None:
    """An array stage works in a directory that ``stage=plan`` made with the same settings."""
    plan_path = out / "plan.json"
    if not plan_path.is_file():
        raise DataError(f"{plan_path}: missing; run prepare-data stage=plan (once) before stage={stage}")
    old = json.loads(plan_path.read_text())
    if old != json.loads(json.dumps(plan)):
        diff = sorted(k for k in set(old) | set(plan) if old.get(k) != json.loads(json.dumps(plan)).get(k))
        raise DataError(
            f"{plan_path}: written by stage=plan with other settings ({', '.join(diff)} differ); "
            f"every stage needs the same settings"
        )


def _array_task(cfg, out: Path, plan: dict, train: list[Shard], tok: dict) -> dict:
    """``stage=shards``: the training shards of array task ``cfg.task`` (finished ones verified)."""
    mine = [train[i] for i in task_range(cfg.task, len(train))]
    result = {"stage": "shards", "task": cfg.task, "shards": [s.index for s in mine]}
    if (out / "meta.json").is_file():
        print(f"{out}: already finished (meta.json); nothing to do for task {cfg.task}", file=sys.stderr)
        return result | {"train": _split_info([])}
    _joined_plan(out, plan, "shards")
    digests = out / "val" / "digests.bin"
    if not digests.is_file():
        raise DataError(f"{digests}: missing; stage=plan did not finish (it writes the validation parts first)")
    for s in mine:
        s.val_digests = str(digests)
        for p in (out / "train").glob(f".part-{s.index:05d}.*tmp*"):  # this task's own, from a killed run
            p.unlink(missing_ok=True)
    if not mine:
        return result | {"train": _split_info([])}
    workers = Workers(out, min(cfg.workers, len(mine)), cfg.tokenizer, tok["dtype"], cfg.text_field, cfg.chunk_chars)
    try:
        entries = workers.run(mine, desc=f"train {cfg.task}")
    finally:
        workers.close()
    return result | {"train": _split_info(entries)}


def stage_summary(result: dict, out: str) -> str:
    if result["stage"] == "plan":
        v = result["val"]
        return (
            f"planned {out}: {result['train_shards']} training shards for the array tasks; "
            f"val {v['tokens']:,} tokens / {v['documents']:,} docs written"
        )
    t, idx = result["train"], result["shards"]
    span = f"shards {idx[0]}-{idx[-1]}" if idx else "no shards (more tasks than shards)"
    return f"task {result['task']}: {span}: {len(t['parts'])} parts, {t['tokens']:,} tokens / {t['documents']:,} docs"


def _check_merge(out: Path, plan: dict, val: list[Shard], train: list[Shard], max_tokens: int | None) -> None:
    """``stage=merge``: every validation part and every training part up to max_tokens is finished."""
    _joined_plan(out, plan, "merge")
    missing, total = [s.name for s in val if not (out / f"{s.name}.json").is_file()], 0
    for s in train:
        if max_tokens is not None and total >= max_tokens:
            break
        entry = out / f"{s.name}.json"
        if entry.is_file():
            total += json.loads(entry.read_text())["tokens"]
        else:
            missing.append(s.name)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{out}: {len(missing)} parts are not finished ({', '.join(missing[:5])}{more}): an array task failed "
            "or has not run (see its log); rerun those tasks (stage=shards task=I/T), then stage=merge"
        )


# ----------------------------------------------------------------------------------------------
# Bring your own tokens


def scan_npy(args: tuple[str, str, int, int]) -> dict:
    """Manifest entry of an existing flat token file; DataError if it cannot be this tokenizer's."""
    path, dtype, vocab_size, eos = args
    p = Path(path)
    n = check_part(p, dtype, None, "from_npy")
    if n == 0:
        raise DataError(f"{p}: empty part (no tokens)")
    arr = np.memmap(p, dtype=dtype, mode="r", shape=(n,))
    docs, top = 0, 0
    for i in range(0, n, NPY_BLOCK):
        block = np.asarray(arr[i : i + NPY_BLOCK])
        docs += int(np.count_nonzero(block == eos))
        top = max(top, int(block.max()))
    if top >= vocab_size:
        raise DataError(
            f"{p}: holds token id {top}, but the tokenizer has {vocab_size} ids (a part from another tokenizer, "
            "or the wrong dtype=?)"
        )
    if docs == 0:
        raise DataError(
            f"{p}: no EOS token (id {eos}) in {n:,} tokens: a part from another tokenizer, or the wrong dtype=?"
        )
    return {
        "file": str(p),
        "source": str(p),
        "bytes": p.stat().st_size,
        "tokens": n,
        "documents": docs,
        "ends_with_eos": bool(arr[n - 1] == eos),
        "sha256": sha256_file(p),
    }


def own_tokens(cfg, out: Path, t0: float) -> dict:
    tok = tokenizer_meta(cfg.tokenizer)
    dtype = cfg.dtype or tok["dtype"]
    if dtype == "uint16" and tok["vocab_size"] > 1 << 16:
        raise DataError(f"dtype=uint16 cannot hold the tokenizer's {tok['vocab_size']} ids")
    files = {
        k: [str(p) for p in expand_inputs(v, k, suffixes=(".npy", ".bin"))]
        for k, v in (("from_npy", cfg.from_npy), ("val_npy", cfg.val_npy))
    }
    both = set(files["from_npy"]) & set(files["val_npy"])
    if both:
        raise DataError(f"{sorted(both)[0]}: given in both from_npy= and val_npy=; validation must be held out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not cfg.overwrite:
            raise DataError(f"out={out}: exists and is not empty; pass overwrite=true to replace it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    jobs = [(f, dtype, tok["vocab_size"], tok["eos_token_id"]) for k in ("val_npy", "from_npy") for f in files[k]]
    if cfg.workers > 1:
        with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
            entries = pool.map(scan_npy, jobs, chunksize=1)
    else:
        entries = [scan_npy(j) for j in jobs]
    n_val = len(files["val_npy"])
    splits = {"val": _split_info(entries[:n_val]), "train": _split_info(entries[n_val:])}
    meta = {
        "format": "olmo-memmap",
        "format_version": FORMAT_VERSION,
        "layout": "parts",
        **tok,
        "dtype": dtype,
        "splits": splits,
        "holdout": {"rule": "separate files (given: from_npy= / val_npy=)"},
        "from_npy": {"train": cfg.from_npy, "val": cfg.val_npy},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta
