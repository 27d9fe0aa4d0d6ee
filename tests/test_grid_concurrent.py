"""Two ``grid run`` at once on one results dir: every job runs exactly once (job locks), and a
second process in a locked run directory fails at once naming the holder."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from overtrain.core.jsonl import read_records
from overtrain.core.lock import LOCK_FILE, Lock, LockHeld, hold, holder

pytestmark = pytest.mark.duration(15)  # seconds, about: conftest starts the longest modules first

REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, data_dir: Path) -> Path:
    grid = {
        "name": "concurrent",
        "results_dir": str(tmp_path / "results"),
        "data_dir": str(data_dir),
        "pretrain": {
            "config": "configs/pretrain/demo.yaml",
            "models": ["tiny"],
            "budgets": ["2K"],
            "overrides": [
                "global_batch_size=4",
                "micro_batch_size=4",
                "seq_len=64",
                "schedule.warmup_tokens=256",
                "eval.every_steps=1000",
                "eval.val_tokens=256",
                "checkpoint.every_steps=1000",
            ],
        },
        "finetune": {
            "config": "configs/finetune/demo.yaml",
            "tasks": ["rte"],
            "lrs": [1.0e-3],
            "overrides": ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256"],
        },
        "hardware": {"name": "CPU", "peak_tflops": 0.1, "mfu": 0.3},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_two_concurrent_grid_runs_run_every_job_once(tmp_path, small_c4):
    grid = _grid(tmp_path, small_c4)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "overtrain", "grid", "run", str(grid), "gpus=0"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(outs)

    started = collections.Counter(m for out in outs for m in re.findall(r"^  start (\S+)", out, re.M))
    jobs = {"pretrain/tiny_2K", "sweep/tiny_2K_final_rte"}
    assert {j: started[j] for j in jobs} == dict.fromkeys(jobs, 1), outs  # every job exactly once
    assert "running elsewhere" in "".join(outs) or "by another runner" in "".join(outs)

    rows = read_records(tmp_path / "results")
    ft = collections.Counter(
        (r["checkpoint_sha256"], r["lr"], bool(r.get("selected"))) for r in rows if r.get("kind") == "finetune"
    )
    assert len(ft) == 2 and set(ft.values()) == {1}  # the LR's row and the tuned-LR row, once each


def test_a_second_process_gets_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    path = tmp_path / "run" / LOCK_FILE
    with hold(path, "pretrain"):
        assert holder(path)["pid"] == os.getpid()
        code = f"from overtrain.core.lock import hold\nwith hold({str(path)!r}, 'pretrain'): pass"
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
        assert other.returncode != 0
        assert f"pid {os.getpid()}" in other.stderr and "in use" in other.stderr
    assert holder(path) is None

    # A holder killed while holding: the kernel drops its flock; the file still names it.
    code = f"import os\nfrom overtrain.core.lock import Lock\nLock({str(path)!r}, 'sweep').acquire()\nos._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ)).returncode == 9
    assert holder(path) is None and path.read_text().strip()
    lock = Lock(path, "pretrain").acquire()
    try:
        assert lock.took_over["what"] == "sweep" and lock.took_over["pid"] != os.getpid()
        with pytest.raises(LockHeld, match="in use"):
            Lock(path, "again").acquire()  # another open file in this process: also refused
    finally:
        lock.release()
