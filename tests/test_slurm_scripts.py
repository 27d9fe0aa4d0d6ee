"""The batch scripts' shell logic without a scheduler: ``run_resumable`` of the generated common.sh
run by bash with fake ``scontrol`` / ``sleep`` on PATH that record their calls. The real scheduler
is in tests/test_slurm.py (slow, root only); these run everywhere in about a second."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from overtrain.core.paths import CONFIG_ROOT
from overtrain.launch.plan import expand
from overtrain.launch.slurm import SlurmOptions, write_slurm
from overtrain.launch.spec import load_grid

DEMO = str(CONFIG_ROOT / "grids" / "demo.yaml")
REPO = Path(__file__).resolve().parents[1]


def _fake(bin_dir: Path, name: str, body: str) -> None:
    p = bin_dir / name
    p.write_text(f"#!/bin/bash\n{body}\n")
    p.chmod(0o755)


@pytest.fixture
def common(tmp_path) -> tuple[Path, Path, dict]:
    """(common.sh, the calls log, env): fake scontrol (exit $SCONTROL_RC) and sleep log their arguments."""
    spec = load_grid(DEMO, [f"results_dir={tmp_path / 'results'}"])
    (tmp_path / "results").mkdir()
    write_slurm(spec, expand(spec), tmp_path / "slurm", SlurmOptions(gpus_per_node=0))
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _fake(bin_dir, "scontrol", f'echo "scontrol $*" >> {calls}; exit "${{SCONTROL_RC:-0}}"')
    _fake(bin_dir, "sleep", f'echo "sleep $*" >> {calls}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    return tmp_path / "slurm" / "common.sh", calls, env


def _run(common: Path, env: dict, args: str) -> subprocess.CompletedProcess:
    script = f"source {common}\nrun_resumable {args}\necho returned $?\n"
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


# A worker that stops on request: core.preempt.Preempted (the marker, exit 75), behind a launcher
# that turns a worker's 75 into 1 as torchrun does.
PREEMPTED = f"""{sys.executable} -c 'from overtrain.core.preempt import Preempted; raise Preempted("saved")'; exit 1"""


def test_a_preempted_step_behind_torchrun_requeues_the_job_and_exits_0(common):
    sh, calls, env = common
    r = _run(sh, env, f"- 0 bash -c {shlex.quote(PREEMPTED)}")
    assert r.returncode == 0 and "returned" not in r.stdout, r.stdout + r.stderr  # exit 0 before returning
    assert "requeueing 42 (exit 1, state saved)" in r.stdout and "requeued 42" in r.stdout
    assert calls.read_text() == "scontrol requeue 42\n"
    marker = sh.parent.parent / "results" / "state" / "preempted" / "42"
    assert '"message": "saved"' in marker.read_text()  # left for the post-mortem; removed by the next run


def test_an_array_task_requeues_itself_by_array_id(common):
    sh, calls, env = common
    r = _run(sh, dict(env, SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="3"), "- 0 bash -c 'exit 75'")
    assert r.returncode == 0 and "requeued 7_3" in r.stdout, r.stdout + r.stderr
    assert calls.read_text() == "scontrol requeue 7_3\n"


def test_a_failure_is_not_requeued_and_a_stale_marker_is_removed_first(common):
    sh, calls, env = common
    marker = sh.parent.parent / "results" / "state" / "preempted" / "42"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}\n")  # from an earlier, preempted session of this job
    r = _run(sh, env, "- 0 bash -c 'echo boom; exit 1'")
    assert r.returncode == 0 and "returned 1" in r.stdout and "requeue" not in r.stdout, r.stdout + r.stderr
    assert not calls.exists() and not marker.exists()


def test_a_controller_that_refuses_the_requeue_is_retried_then_the_job_fails_with_75(common):
    sh, calls, env = common
    r = _run(sh, dict(env, SCONTROL_RC="1"), "- 0 bash -c 'exit 75'")
    assert r.returncode == 75 and "could not requeue 42" in r.stderr, r.stdout + r.stderr
    lines = calls.read_text().splitlines()
    assert lines.count("scontrol requeue 42") == 5 and "sleep 5" in lines


def test_done_marker_skips_and_success_writes_it(common, tmp_path):
    sh, calls, env = common
    done = tmp_path / "state" / "x.done"
    r = _run(sh, env, f"{done} 1 true")
    assert "returned 0" in r.stdout and '"slurm_job": "42"' in done.read_text()
    r = _run(sh, env, f"{done} 1 false")
    assert "already done" in r.stdout and "returned 0" in r.stdout
