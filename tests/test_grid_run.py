"""Running a grid end to end on CPU, killing it mid-way, and resuming: no row lost or duplicated."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from grid_process import start_grid_run
from overtrain.core.jsonl import read_records
from overtrain.core.paths import data_root

pytestmark = pytest.mark.duration(45)  # seconds, about: conftest starts the longest modules first


def _grid(tmp_path: Path) -> Path:
    c4 = data_root() / "c4"
    grid = {
        "name": "kill-test",
        "results_dir": str(tmp_path / "results"),
        "prepare": {
            "train": [str(c4 / "c4-sample.00000-of-00001.json.gz")],
            "val": [str(c4 / "c4-sample.01.json.gz"), str(c4 / "c4-sample.02.json.gz")],
            "out": "data/c4",
        },
        "pretrain": {
            "config": "configs/pretrain/demo.yaml",
            "models": ["tiny"],
            "budgets": ["8K", "16K"],
            "overrides": [
                "global_batch_size=8",
                "micro_batch_size=8",
                "seq_len=64",
                "schedule.warmup_tokens=1K",
                "eval.every_steps=1000",
                "eval.val_tokens=2K",
                "checkpoint.every_steps=1000",
            ],
        },
        "finetune": {
            "config": "configs/finetune/demo.yaml",
            "tasks": ["rte"],
            "lrs": [1.0e-4, 1.0e-3],
            "overrides": ["max_examples={train: 16, validation: 16, test: 16}", "c4_max_tokens=1024"],
        },
        "perturb": {"gammas": [0.5], "seeds": [0], "val_tokens": 1024},
        "hardware": {"name": "CPU", "peak_tflops": 0.1, "mfu": 0.3},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _run(grid: Path) -> subprocess.Popen:
    return start_grid_run(grid, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))


def test_kill_during_grid_then_resume_loses_and_duplicates_nothing(tmp_path):
    grid = _grid(tmp_path)
    results = tmp_path / "results"

    # Run until the first fine-tuning row lands, then kill the runner and all its jobs at once.
    proc = _run(grid)
    deadline = time.time() + 240
    killed = False
    while time.time() < deadline and proc.poll() is None:
        rows = list((results / "sweeps").glob("*/results.jsonl")) if (results / "sweeps").is_dir() else []
        if any(p.stat().st_size > 0 for p in rows):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    assert killed, "the grid finished (or timed out) before a fine-tuning row appeared:\n" + proc.stdout.read()

    # Same command again: it resumes and finishes.
    again = _run(grid)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "already done" in out
    assert "(forked from the warm process" in (results / "logs" / "report.log").read_text()  # CPU: launch/forked.py

    rows = read_records(results)
    ft = [r for r in rows if r.get("kind") == "finetune"]
    per_lr = collections.Counter((r["checkpoint_sha256"], r["task"], r["lr"], bool(r.get("selected"))) for r in ft)
    assert all(n == 1 for n in per_lr.values()), per_lr  # nothing duplicated
    checkpoints = {r["checkpoint_sha256"] for r in ft}
    assert len(checkpoints) == 2  # both budgets swept
    assert sum(1 for k in per_lr if not k[3]) == 2 * 2  # every (budget, lr): nothing lost
    assert sum(1 for k in per_lr if k[3]) == 2  # one tuned-LR row per sweep
    perturb = [r for r in rows if r.get("kind") == "perturb"]
    assert len(perturb) == 2
    assert (results / "report" / "report.md").is_file()

    # A third run has nothing left to do but the report.
    third = _run(grid)
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0, out
    assert "1 to run" in out
    assert len([r for r in read_records(results) if r.get("kind") == "finetune"]) == len(ft)
