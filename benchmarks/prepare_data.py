"""prepare-data (layout=parts, the sharded path) vs bare `tokenizers` on the same text, in one run.

    .venv/bin/python benchmarks/prepare_data.py [--shards 4] [--repeat 2] [--workers 1,2] [--trials 3]

Input: the real C4 sample (data/c4, 1000 documents): documents 50.. x --repeat, cut into --shards
gzipped JSON-lines shards as C4's own files are, form the training set; documents 0..49 the
validation file. prepare-data is timed end to end (worker start-up, reading and parsing each
shard in its worker, validation digests, tokenizing, writing and hashing each part, meta.json).
The baseline is one bare single-threaded `encode_batch_fast` call over the same texts already in
memory (TOKENIZERS_PARALLELISM=false): the tokenizing work of one worker and nothing else.

Reported: tokens/s (wall) and tokens per CPU-second (this process + reaped workers) per worker
count; 2 workers / 1 worker; peak RSS per worker process (the largest reaped child, or this
process's growth for workers=1) for shards of 1x and 4x the size (bounded: it must not grow with
the shard); and a projection of hours and disk for C4-en at 130B training tokens on 16/64/256
cores from the measured tokens per CPU-second of one worker (assumes one worker per core, no
other load, and input read at least as fast as it is tokenized).

Targets (issue 13): one worker >= 0.9 x bare encode_batch_fast; 2 workers >= 1.7 x one on an
idle 2-core machine. The load average is printed: on a shared machine wall-clock ratios mean little.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overtrain.core.paths import data_root
from overtrain.data.c4 import prepare as prep
from overtrain.data.tokenizer import load_tokenizer

C4_EN_TRAIN_GZ_BYTES = 305e9  # allenai/c4 en: 1024 train files, ~305 GB gzipped (~356M documents)
TARGET_TOKENS = 130e9


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (reaped) children, e.g. prepare-data's workers."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bare_tokens_per_sec(texts: list[str]) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of one encode_batch_fast call, single-threaded."""
    tok = load_tokenizer()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t, c = time.perf_counter(), cpu_seconds()
    enc = tok.encode_batch_fast(texts, add_special_tokens=False)
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    tokens = sum(len(e.ids) for e in enc) + len(texts)  # + EOS per document, as prepare-data counts
    return tokens / dt, tokens / dc


def write_shards(d: Path, records: list[dict], n: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        lines = "".join(json.dumps(r) + "\n" for r in records[k::n])
        (d / f"c4-train.{k:05d}-of-{n:05d}.json.gz").write_bytes(gzip.compress(lines.encode(), compresslevel=1))


def run_prepare(shards: Path, val: Path, out: Path, workers: int) -> tuple[float, float, int]:
    cfg = prep.PrepareConfig(
        train=[f"{shards}/c4-train.*.json.gz"], val=[str(val)], out=str(out), overwrite=True, workers=workers
    )
    t, c = time.perf_counter(), cpu_seconds()
    meta = prep.prepare(cfg)  # joins its worker processes before returning: their CPU time counts
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    tokens = meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"]
    return tokens / dt, tokens / dc, tokens


def worker_peak_rss_mb(shards: Path, val: Path, out: Path, workers: int) -> float:
    """Peak RSS (MB) of one worker: a fresh process per measurement, so earlier runs do not count."""
    code = (
        "import resource, sys\n"
        "from overtrain.data.c4 import prepare as prep\n"
        "from overtrain.data.tokenizer import load_tokenizer\n"
        f"load_tokenizer(); base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"prep.prepare(prep.PrepareConfig(train=['{shards}/c4-train.*.json.gz'], val=['{val}'], out='{out}', "
        f"overwrite=True, workers={workers}))\n"
        "me, kids = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        f"print(kids if {workers} > 1 else me)\n"
    )
    env = os.environ | {"TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(res.stdout.split()[-1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=4, help="training shards (one part each)")
    ap.add_argument("--repeat", type=int, default=2, help="copies of the C4 sample in the training set")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per worker (1x and 4x shards)")
    a = ap.parse_args()
    workers = [int(w) for w in a.workers.split(",")]

    with gzip.open(data_root() / "c4" / "c4-sample.00000-of-00001.json.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    val_records, train_records = records[:50], records[50:] * a.repeat
    texts = [r["text"] for r in val_records + train_records]
    chars_per_token = None

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "shards", train_records, a.shards)
        (tmp / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val_records))
        best: dict[str, float] = {}
        tokens = 0

        def record(name, wall, cpu):
            best[name] = max(best.get(name, 0.0), wall)
            best[name + "/cpu"] = max(best.get(name + "/cpu", 0.0), cpu)

        for _ in range(a.trials):  # interleaved, so that machine noise hits all alike
            record("bare", *bare_tokens_per_sec(texts))
            for w in workers:
                *rates, tokens = run_prepare(tmp / "shards", tmp / "val.jsonl", tmp / "out", w)
                record(f"w{w}", *rates)
        chars_per_token = sum(map(len, texts)) / tokens
        memory = {}
        if a.memory:
            write_shards(tmp / "big", train_records * 4, a.shards)
            for w in workers:
                for label, d in (("1x", tmp / "shards"), ("4x", tmp / "big")):
                    memory[(w, label)] = worker_peak_rss_mb(d, tmp / "val.jsonl", tmp / "mem", w)

    base, base_cpu = best["bare"], best["bare/cpu"]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} (other processes compete for the CPUs)"
    )
    print(
        f"text: {len(texts):,} C4 documents in {a.shards} training shards + 1 validation file, "
        f"{sum(map(len, texts)):,} chars, {tokens:,} tokens (with EOS), {chars_per_token:.2f} chars/token; "
        f"best of {a.trials}"
    )
    print(f"{'what':<40}{'tokens/s':>11}{'ratio':>7}{'tokens/CPU-s':>14}{'ratio':>7}")
    rows = [("bare encode_batch_fast (1 thread)", "bare")]
    rows += [(f"prepare-data layout=parts workers={w}", f"w{w}") for w in workers]
    for label, key in rows:
        wall, cpu = best[key], best[key + "/cpu"]
        print(f"{label:<40}{wall:>11,.0f}{wall / base:>7.2f}{cpu:>14,.0f}{cpu / base_cpu:>7.2f}")
    for w in workers:
        if w > 1 and 1 in workers:
            print(
                f"scaling workers={w} / workers=1: {best[f'w{w}'] / best['w1']:.2f} x wall-clock rate "
                f"(ideal {w}); CPU efficiency {best[f'w{w}/cpu'] / best['w1/cpu']:.2f} (ideal 1)"
            )
    for (w, label), mb in memory.items():
        print(f"peak RSS per worker, workers={w}, shards {label}: {mb:,.0f} MB")

    per_core = best.get("w1/cpu", best[f"w{workers[0]}/cpu"])
    sample = data_root() / "c4" / "c4-sample.00000-of-00001.json.gz"  # as C4 ships it: gzip of {text, timestamp, url}
    gz_per_token = sample.stat().st_size / (tokens * len(records) / len(texts))
    print(
        f"projection for C4-en, {TARGET_TOKENS / 1e9:.0f}B training tokens, at {per_core:,.0f} tokens/CPU-s per core:"
    )
    for cores in (16, 64, 256):
        hours = TARGET_TOKENS / (per_core * cores) / 3600
        print(f"  {cores:>3} cores: {hours:6.1f} h")
    print(
        f"  disk: parts {TARGET_TOKENS * 2 / 1e9:,.0f} GB (uint16); C4 input needed ~"
        f"{min(C4_EN_TRAIN_GZ_BYTES, TARGET_TOKENS * gz_per_token) / 1e9:,.0f} GB gzipped "
        f"(the C4 sample file: {gz_per_token:.2f} gzipped bytes per token)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
