"""ETAs in logs without a terminal: pre-training and sweep lines carry elapsed time, ETA and
tokens/s; ``grid run`` prints per-job and whole-grid ETAs from measured throughput."""

from __future__ import annotations

import re

import pytest
from overtrain.cli import main
from overtrain.core.eta import Eta, fmt_duration
from overtrain.finetune.sweep import run_sweep
from overtrain.launch.plan import Job
from overtrain.launch.runner import Throughput
from test_finetune import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
LINE = re.compile(r"elapsed \d+:\d\d:\d\d \| ETA (\d+:\d\d:\d\d|\?)")


def test_eta_arithmetic():
    now = [100.0]
    eta = Eta(total=10, start=2, clock=lambda: now[0])
    assert eta.text(2) == "elapsed 0:00:00 | ETA ?"  # nothing done in this session yet
    now[0] += 30  # 3 steps of this session in 30 s: 10 s a step, 5 to go
    assert eta.remaining(5) == pytest.approx(50.0) and eta.text(5) == "elapsed 0:00:30 | ETA 0:00:50"
    assert fmt_duration(93784) == "1d 2:03:04" and fmt_duration(None) == "?" and fmt_duration(float("inf")) == "?"


def test_grid_throughput():
    rates = Throughput()
    a, b = Job("sweep/a", "sweep", [], [], None, flops=2e12), Job("sweep/b", "sweep", [], [], None, flops=4e12)
    report = Job("report", "report", [], [], None)
    assert rates.job_seconds(a) is None and rates.grid_seconds([b], 10.0) is None
    rates.finished(a, 20.0)  # 1e11 FLOP/s for sweeps
    assert rates.job_seconds(b) == pytest.approx(40.0) and rates.job_seconds(report) is None
    assert rates.grid_seconds([b, report], wall=10.0) == pytest.approx(20.0)  # 2e12 FLOPs per wall second so far


def test_sweep_and_pretraining_lines_carry_eta(tmp_path, small_c4, capsys):
    make_checkpoint(tmp_path / "pre")
    small = ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256", "eval_batch_size=16"]
    args = [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={tmp_path / 'sweep'}", f"c4={small_c4}", *small]
    run_sweep("demo", args + ["lrs=[1e-3, 1e-2]", "max_steps=4"], progress=True)  # stderr is no terminal here
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if ": step " in line]
    assert len(steps) == 2 * 4 and all(LINE.search(s) and " tokens/s" in s for s in steps), err
    assert "step 4/4" in steps[-1] and "ETA 0:00:00" in steps[-1]
    lrs = [line for line in err.splitlines() if line.startswith("sweep rte: lr ")]
    assert "(1/2) | elapsed 0:00:00 | ETA ?" in lrs[0] and LINE.search(lrs[1]) and "ETA ?" not in lrs[1]

    from test_pretrain import overrides

    assert main(["pretrain", "demo", *overrides(small_c4, tmp_path / "run", budget_tokens=512)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ") and "loss" in line]
    assert lines and all(LINE.search(s) and " tokens/s" in s for s in lines)
