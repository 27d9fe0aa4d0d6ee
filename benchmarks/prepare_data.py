"""prepare-data throughput vs bare `tokenizers` batch encoding of the same text, in one run.

    .venv/bin/python benchmarks/prepare_data.py [--repeat 3] [--workers 1,2] [--trials 3]

Input: the real C4 sample (data/c4, 1000 documents): documents 50.. form the training file
(concatenated --repeat times to lengthen the run), documents 0..49 the validation file, so
prepare-data tokenizes exactly the texts the baseline encodes. prepare-data is timed end to end
(scan, worker start-up, tokenizing, writing, meta.json). The baseline is one
`Tokenizer.encode_batch` call over all texts already in memory, single-threaded
(TOKENIZERS_PARALLELISM=false), i.e. the work of one prepare-data worker; `encode_batch_fast` is
shown too. Best of --trials, measurements interleaved so that machine noise hits all alike.

Targets: prepare-data with 1 worker >= 0.8 x the baseline; N workers ~ N x (near-linear).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from overtrain.core.config import data_root
from overtrain.data import c4_prepare as prep
from overtrain.data.tokenizer import load_tokenizer


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (reaped) children, e.g. prepare-data's workers."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bare_tokens_per_sec(texts: list[str], method: str) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of one batch call, single-threaded."""
    tok = load_tokenizer()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t, c = time.perf_counter(), cpu_seconds()
    enc = getattr(tok, method)(texts, add_special_tokens=False)
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    tokens = sum(len(e.ids) for e in enc) + len(texts)  # + EOS per document, as prepare-data counts
    return tokens / dt, tokens / dc


def prepare_tokens_per_sec(train: Path, val: Path, out: Path, workers: int) -> tuple[float, float, int]:
    cfg = prep.PrepareConfig(train=[str(train)], val=[str(val)], out=str(out), overwrite=True, workers=workers)
    t, c = time.perf_counter(), cpu_seconds()
    meta = prep.prepare(cfg)  # joins its worker processes before returning: their CPU time counts
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    return tokens / dt, tokens / dc, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="copies of the C4 sample in the training file")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--trials", type=int, default=3)
    a = ap.parse_args()
    workers = [int(w) for w in a.workers.split(",")]

    with gzip.open(data_root() / "c4" / "c4-sample.00000-of-00001.json.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    val_records, train_records = records[:50], records[50:] * a.repeat
    texts = [r["text"] for r in val_records + train_records]

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, recs in (("train.jsonl", train_records), ("val.jsonl", val_records)):
            (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
        best: dict[str, float] = {}  # name -> best tokens/s; name + "/cpu" -> best tokens/CPU-s
        tokens = None

        def record(name, wall, cpu):
            best[name] = max(best.get(name, 0.0), wall)
            best[name + "/cpu"] = max(best.get(name + "/cpu", 0.0), cpu)

        for _ in range(a.trials):
            for method in ("encode_batch", "encode_batch_fast"):
                record(method, *bare_tokens_per_sec(texts, method))
            for w in workers:
                *rates, tokens = prepare_tokens_per_sec(tmp / "train.jsonl", tmp / "val.jsonl", tmp / "out", w)
                record(f"w{w}", *rates)

    base, base_cpu = best["encode_batch"], best["encode_batch/cpu"]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} (other processes compete for the CPUs)"
    )
    print(
        f"text: {len(texts):,} C4 documents, {sum(map(len, texts)):,} chars, {tokens:,} tokens "
        f"(with EOS); best of {a.trials}"
    )
    print(f"{'what':<36}{'tokens/s':>11}{'ratio':>7}{'tokens/CPU-s':>14}{'ratio':>7}")
    rows = [
        ("bare encode_batch (1 thread)", "encode_batch"),
        ("bare encode_batch_fast (1 thread)", "encode_batch_fast"),
    ]
    rows += [(f"prepare-data workers={w}", f"w{w}") for w in workers]
    for label, key in rows:
        wall, cpu = best[key], best[key + "/cpu"]
        print(f"{label:<36}{wall:>11,.0f}{wall / base:>7.2f}{cpu:>14,.0f}{cpu / base_cpu:>7.2f}")
    if 1 in workers:
        for w in workers:
            if w > 1:
                print(
                    f"scaling workers={w} / workers=1: {best[f'w{w}'] / best['w1']:.2f} x wall-clock rate "
                    f"(ideal {w}); CPU efficiency {best[f'w{w}/cpu'] / best['w1/cpu']:.2f} (ideal 1)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
