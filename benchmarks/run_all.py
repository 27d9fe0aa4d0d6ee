"""Run every benchmark in benchmarks/ quickly (small settings, CPU-sized) and report which ran.

    .venv/bin/python benchmarks/run_all.py [--only NAME[,NAME]] [--timeout 600]      (make bench)

Proves each benchmark runs end to end on this machine; the figures of a quick run are not the
ones to record (each script's own defaults are; see benchmarks/README.md). A script without an
entry in QUICK runs with its defaults. Each runs in its own process; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Small settings per script: seconds on 2 CPU cores.
QUICK = {
    "prepare_data.py": ["--repeat", "1", "--workers", "1", "--trials", "1"],
    "eval_throughput.py": ["--examples", "8", "--batch-size", "8", "--trials", "1", "--steps", "2"],
    "pretrain_throughput.py": [
        "--models",
        "tiny",
        "--seq-len",
        "128",
        "--micro-batch",
        "2",
        "--global-batch",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--compile",
        "off",
        "--loader-tokens",
        "4M",
        "--loader-steps",
        "5",
    ],
    "sweep_throughput.py": [
        "--model",
        "tiny",
        "--k",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
    ],
    "gpu_check.py": ["--dry-run"],  # CPU: tiny shapes; the GPU run is `make gpu-check`
}
# This runner, modules the others import, and the GPU machine's wheel tool.
NOT_BENCHMARKS = {"run_all.py", "gpt_baseline.py", "gpu_report.py", "gpu_wheels.py"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated script names (default: all)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per script")
    args = ap.parse_args()

    scripts = sorted(p.name for p in HERE.glob("*.py") if p.name not in NOT_BENCHMARKS and not p.name.startswith("_"))
    if args.only:
        wanted = {s if s.endswith(".py") else s + ".py" for s in args.only.split(",")}
        unknown = wanted - set(scripts)
        if unknown:
            ap.error(f"--only: no such benchmark {sorted(unknown)} (have {scripts})")
        scripts = [s for s in scripts if s in wanted]

    results = []
    for name in scripts:
        cmd = [sys.executable, str(HERE / name), *QUICK.get(name, [])]
        note = "" if name in QUICK else "  (no quick settings known: its defaults)"
        print(f"\n=== {name}{note}\n$ {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        results.append((name, rc, time.perf_counter() - t))

    print("\nbenchmark                  status     seconds")
    for name, rc, seconds in results:
        print(f"{name:<27}{'ok' if rc == 0 else f'FAILED ({rc})':<11}{seconds:>7.1f}")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
