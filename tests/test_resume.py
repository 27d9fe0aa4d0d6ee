"""Exact resume: SIGKILL a CPU run after its first checkpoint (or SIGTERM it mid-run: it saves the
step it is at and exits 75), rerun the same command, and get the same losses, the same final loss
and bit-identical parameters as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from overtrain.core.checkpoint import latest_checkpoint
from overtrain.core.config import load_config
from overtrain.core.paths import REPO_ROOT
from overtrain.core.preempt import EXIT_PREEMPTED
from overtrain.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.duration(35)  # seconds, about: conftest starts the longest modules first

STEPS = 30


@pytest.fixture(scope="module")
def data_dir(small_c4):
    return small_c4


def overrides(data_dir, run_dir):
    kw = {
        "data.dir": data_dir,
        "run_dir": run_dir,
        "budget_tokens": STEPS * 128,
        "seq_len": 32,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "eval.val_tokens": 256,
        "eval.every_steps": 5,
        "eval.batch_size": 8,
        "log.every_steps": 1,
        "checkpoint.every_steps": 4,
        "checkpoint.keep_last": 2,
        "schedule.warmup_tokens": 384,
        "device": "cpu",
    }
    return [f"{k}={v}" for k, v in kw.items()]


def trajectory(run_dir):
    """Everything in metrics.jsonl except timings."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in ("tokens_per_sec", "mfu")})
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """The uninterrupted run, in this process on one thread (as the subprocesses run)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(load_config(PretrainConfig, "demo", overrides(data_dir, run_dir), kind="pretrain"))
    finally:
        torch.set_num_threads(n)
    return run_dir


def assert_same_run(resumed, straight, resumes=1):
    a, b = trajectory(resumed), trajectory(straight)
    assert a == b  # every step's loss, grad norm and LR, and every evaluation, exactly
    assert [r["step"] for r in a if "loss" in r] == list(range(1, STEPS + 1))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (resumed, straight))
    assert sa["resumes"] == resumes and sb["resumes"] == 0
    assert sa["c4_val_ppl"] == sb["c4_val_ppl"] and sa["tokens_seen"] == sb["tokens_seen"]

    final = f"checkpoints/step-{STEPS:08d}"
    wa = torch.load(resumed / final / "model.pt", weights_only=True)
    wb = torch.load(straight / final / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(resumed / final / "optim.pt", weights_only=True)["state"]
    ob = torch.load(straight / final / "optim.pt", weights_only=True)["state"]
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


def test_sigterm_saves_the_step_exits_75_and_resumes_exactly(tmp_path, data_dir, straight):
    run_dir = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "overtrain", "pretrain", "demo", *overrides(data_dir, run_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 240
    while proc.poll() is None and time.time() < deadline:  # a few steps in, between checkpoints or not
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1].decode()
    assert proc.returncode == EXIT_PREEMPTED, f"rc {proc.returncode}: {err[-2000:]}"
    assert "got SIGTERM" in err and "stopped on SIGTERM after step" in err
    stopped_at = max(json.loads(line)["step"] for line in metrics.read_text().splitlines())
    assert 0 < stopped_at < STEPS and not (run_dir / "summary.json").exists()
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step-{stopped_at:08d}"  # nothing lost

    resumed = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {stopped_at})" in resumed.stderr
    assert_same_run(run_dir, straight)


def test_sigkill_then_resume_is_exact(tmp_path, data_dir, straight):
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "overtrain", "pretrain", "demo", *overrides(data_dir, killed)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while latest_checkpoint(killed / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    err = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (killed / "summary.json").exists()
    at_kill = latest_checkpoint(killed / "checkpoints")
    assert at_kill is not None and int(at_kill.name.split("-")[1]) < STEPS

    half_written = killed / "checkpoints" / ".tmp-step-00000099-1"  # as a kill during a save leaves it
    half_written.mkdir(exist_ok=True)

    resumed = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {at_kill}" in resumed.stderr
    assert not half_written.exists()

    assert_same_run(killed, straight)
