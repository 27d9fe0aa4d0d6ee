"""A grid job forked from the warm process (launch/forked.py) is the command it stands for: the same
output, exit code and files as ``python -m overtrain ARGV``; a SIGTERM stops it with 75 after saving,
and the resumed run ends on the subprocess run's exact weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from overtrain.core.paths import REPO_ROOT
from overtrain.core.preempt import EXIT_PREEMPTED
from overtrain.launch import forked

pytestmark = pytest.mark.duration(20)  # seconds, about: conftest starts the longest modules first


def _wait(job: forked.ForkedJob, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    while job.poll() is None:
        assert time.time() < deadline, "the forked job did not end"
        time.sleep(0.05)
    return job.poll()


def _subprocess(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "overtrain", *argv]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_forked_output_and_exit_codes_are_the_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the runner's working directory is the job's, as for a subprocess
    env = dict(os.environ)
    log = tmp_path / "info.log"
    log.write_text("# the header the runner writes\n")
    job = forked.start(["info", "tiny"], log, env)
    assert _wait(job) == 0
    ref = _subprocess(["info", "tiny"], env)
    assert ref.returncode == 0 and log.read_text() == "# the header the runner writes\n" + ref.stdout  # appended
    bad = forked.start(["info", "nosuch"], tmp_path / "bad.log", env)
    assert _wait(bad) == 2  # one clear error (on stderr, into the log), exit 2
    assert (tmp_path / "bad.log").read_text().startswith("overtrain info: error: nosuch: no such file")
    assert not forked.available({**env, "OMP_NUM_THREADS": "7"})  # read at import: a subprocess instead
    assert forked.available({**env, "PYTEST_CURRENT_TEST": "another test"})  # read by nothing at import
    with pytest.raises(ValueError, match="environment differs"):
        forked.start(["info", "tiny"], tmp_path / "x.log", {**env, "OMP_NUM_THREADS": "7"})


def test_sigterm_stops_a_forked_pretraining_with_75_and_it_resumes_to_the_same_weights(tmp_path, small_c4, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    env = dict(os.environ)

    def argv(run: Path) -> list[str]:
        kw = {"data.dir": small_c4, "run_dir": run, "budget_tokens": 20 * 128, "seq_len": 32, "global_batch_size": 4}
        kw |= {"micro_batch_size": 2, "eval.val_tokens": 256, "eval.every_steps": 5, "log.every_steps": 1}
        kw |= {"checkpoint.every_steps": 4, "schedule.warmup_tokens": 384, "device": "cpu"}
        return ["pretrain", "demo", *(f"{k}={v}" for k, v in kw.items())]

    ref = _subprocess(argv(tmp_path / "ref"), env)
    assert ref.returncode == 0, ref.stdout[-3000:]

    run, log = tmp_path / "forked", tmp_path / "forked.log"
    job = forked.start(argv(run), log, env)
    metrics, deadline = run / "metrics.jsonl", time.time() + 240
    while job.poll() is None and time.time() < deadline:  # a few steps in
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGTERM)
    assert _wait(job) == EXIT_PREEMPTED, log.read_text()[-3000:]
    assert "stopped on SIGTERM after step" in log.read_text()
    assert not (run / "summary.json").exists()

    again = forked.start(argv(run), log, env)
    assert _wait(again) == 0, log.read_text()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == 1
    assert summary["c4_val_ppl"] == json.loads((tmp_path / "ref" / "summary.json").read_text())["c4_val_ppl"]
    final = "checkpoints/step-00000020/model.pt"
    a, b = (torch.load(d / final, weights_only=True) for d in (run, tmp_path / "ref"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
