"""A grid on a real Slurm: a one-node cluster (munged, slurmctld, slurmd on this host, CPU only)
started by the fixture, the grid submitted with ``grid submit`` (prepare-data as plan, an array of
2 tasks over 3 shards and a merge; pre-training via srun + torchrun with gloo; the sweep and
perturbation array; the report), the pre-training job signalled mid-run as Slurm does before a
time limit: it saves, requeues, resumes, and the rows equal those of ``grid run``. Needs root and Debian's slurm-wlm + munge (``.ci/run`` installs them);
without them these tests skip, saying so."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from grid_process import start_grid_run
from overtrain.core.jsonl import read_records
from overtrain.core.paths import data_root

pytestmark = pytest.mark.duration(70)  # seconds, about: conftest starts the longest modules first

REPO = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "srun")
HOW = "apt-get install -y slurm-wlm munge (as root; .ci/run does this)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


SLURM_CONF = """ClusterName=overtrain-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# at least 4 CPUs declared whatever the machine has (pre-training asks for 2): config_overrides keeps the node up
SlurmdParameters=config_overrides
MpiDefault=none
JobRequeue=1
KillWait=30
MinJobAge=600
NodeName={host} CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=short Nodes={host} MaxTime=5 State=UP
"""


def _idle(env: dict) -> bool:
    """Whether the node is idle (in every partition): no job holds it, none is completing."""
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return r.returncode == 0 and set(r.stdout.split()) == {"idle"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a fresh one-node cluster on this host (its daemons stop after the module)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing or os.geteuid() != 0:
        why = f"missing {', '.join(missing)}" if missing else "not root"
        pytest.skip(f"real-Slurm tests skipped ({why}); to run them: {HOW}")
    root = Path(f"/tmp/ot-slurm-{os.getpid()}")  # short: a unix socket path is at most 107 bytes
    shutil.rmtree(root, ignore_errors=True)
    for d in ("state", "spool", "munge"):
        (root / d).mkdir(parents=True)
    (root / "munge").chmod(0o700)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "munge.sock"
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=host,
            ctld_port=_free_port(),
            d_port=_free_port(),
            sock=sock,
            root=root,
            cpus=max(os.cpu_count() or 1, 4),
        )
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = []
    try:
        munge = [
            "munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
            f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed",
        ]  # fmt: skip
        procs.append(subprocess.Popen(munge, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait("munged", sock.exists, 20, 0.1)
        for daemon in (["slurmctld", "-D", "-c"], ["slurmd", "-D", "-c"]):
            procs.append(subprocess.Popen(daemon, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        _wait("the node to come up idle", lambda: _idle(env), 60)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)
        try:  # let the jobs end while the daemons still run (else their scripts outlive the cluster)
            _wait(
                "the jobs to end",
                lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip(),
                60,
            )
        except AssertionError:
            pass
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        keep = tmp_path_factory.mktemp("slurm-logs")  # the daemons' logs, for a failure's post-mortem
        for log in root.glob("*.log"):
            shutil.copy(log, keep / log.name)
        shutil.rmtree(root, ignore_errors=True)


def _grid(tmp_path: Path, results: Path) -> Path:
    c4 = data_root() / "c4"
    shards = tmp_path / "shards"  # 40 documents of the sample as 3 shards (C4's own layout), for a prepare array
    if not shards.is_dir():
        shards.mkdir()
        lines = gzip.open(c4 / "c4-sample.00000-of-00001.json.gz", "rb").read().splitlines(keepends=True)[:40]
        for k in range(3):
            (shards / f"c4-train.{k:05d}.json.gz").write_bytes(gzip.compress(b"".join(lines[k::3])))
    grid = {
        "name": "slurm-test",
        "results_dir": str(results),
        "prepare": {
            "train": [f"{shards}/c4-train.*.json.gz"],
            "val": [str(c4 / "c4-sample.01.json.gz")],
            "out": "data/c4",
        },
        "pretrain": {
            "config": "configs/pretrain/demo.yaml",
            "models": ["tiny"],
            "budgets": ["10K"],  # 78 steps of 128 tokens
            "gpus": 2,  # torchrun, two gloo processes
            "overrides": [
                "global_batch_size=4",
                "micro_batch_size=2",
                "seq_len=32",
                "schedule.warmup_tokens=512",
                "eval.every_steps=1000",
                "eval.val_tokens=256",
                "checkpoint.every_steps=1000",
                "log.every_steps=1",
            ],
        },
        "finetune": {
            "config": "configs/finetune/demo.yaml",
            "tasks": ["rte"],
            "lrs": [1.0e-3],
            "train_tokens_estimate": 2000,  # for the time check: seconds, as measured
            "overrides": ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256"],
        },
        "perturb": {"gammas": [0.5], "seeds": [0], "val_tokens": 256},
        "hardware": {"name": "CPU", "peak_tflops": 0.1, "mfu": 0.3},
    }
    path = tmp_path / f"{results.name}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _overtrain(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "overtrain", *args], cwd=REPO, env=env, capture_output=True, text=True, **kw
    )


def _comparable(rows: list[dict]) -> list[tuple]:
    """The measured numbers of every row, without paths, times and hashes of paths."""
    keep = ("kind", "task", "lr", "selected", "gamma", "noise_seed", "val_id_ppl", "test_id_ppl", "c4_ppl_after")
    keep += ("c4_ppl_base", "c4_ppl", "checkpoint_sha256", "checkpoint_step")
    return sorted(tuple((k, r.get(k)) for k in keep) for r in rows)


def test_grid_on_slurm_with_a_signal_mid_run_equals_grid_run(tmp_path, slurm, request):
    env = dict(slurm, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    results = tmp_path / "on-slurm"
    grid = _grid(tmp_path, results)
    opts = ["gpus_per_node=0", "partition=debug", "time=00:10:00", "signal_s=60", "prepare_tasks=2"]

    bad = _overtrain(["grid", "submit", str(grid), "partition=nosuch"], env)
    assert bad.returncode == 2 and "no such Slurm partition" in bad.stderr and not (results / "slurm").exists()
    nosbatch = _overtrain(["grid", "submit", str(grid)], dict(env, PATH="/nonexistent"))
    assert nosbatch.returncode == 2 and "sbatch is not on PATH" in nosbatch.stderr
    short = _overtrain(["grid", "submit", str(grid), *opts, "partition=short"], env)  # MaxTime=5 (minutes)
    assert short.returncode == 2 and "time=00:10:00 exceeds the MaxTime 00:05:00 of partition short" in short.stderr
    assert not (results / "slurm").exists()

    # The same grid with `grid run`, for the rows to compare, started now: it runs while Slurm schedules.
    here = tmp_path / "here"
    local = start_grid_run(_grid(tmp_path, here), "gpus=0", env=env)
    request.addfinalizer(lambda: local.poll() is None and os.killpg(local.pid, signal.SIGKILL))  # a failed test

    # Submitted held (SBATCH_HOLD), so that nothing runs before the test is ready to signal it.
    sub = _overtrain(["grid", "submit", str(grid), *opts], dict(env, SBATCH_HOLD="1"))
    assert sub.returncode == 0, sub.stdout + sub.stderr
    record = json.loads((results / "slurm" / "submitted.json").read_text())
    assert set(record) == {"prepare", "pretrain/tiny_10K", "sweep/tiny_10K_final_rte", "perturb/tiny_10K", "report"} | {
        "prepare/plan",  # prepare_tasks=2: plan, an array of 2 tasks over the 3 shards, then the merge ("prepare")
        "prepare/shards",
    }

    # Resubmitting at once submits nothing: every job is queued already.
    again = _overtrain(["grid", "submit", str(grid), *opts], env)
    assert again.returncode == 0 and "0 jobs submitted" in again.stdout, again.stdout + again.stderr
    subprocess.run(["scontrol", "release", ",".join(sorted({s.split("_")[0] for s in record.values()}))], env=env)

    # Signal the pre-training job mid-run, as Slurm does signal_s seconds before its time limit.
    pt = record["pretrain/tiny_10K"]
    metrics = results / "pretrain" / "tiny_10K" / "metrics.jsonl"
    _wait(
        "a few pre-training steps", lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 300, 0.05
    )
    subprocess.run(["scancel", "--signal=USR1", "--batch", pt], env=env, check=True)

    def requeued():
        q = subprocess.run(["squeue", "-h", "-j", pt, "-o", "%T %r"], env=env, capture_output=True, text=True).stdout
        return q.startswith("PENDING")

    _wait("the job to requeue", requeued, 120, 0.2)
    # Slurm holds a requeued job for its credential lifetime (120 s) so that it cannot start while the
    # node still revokes the old run's credential; shorten the hold, but only once the node has let go
    # of the old run and the clock has moved past its revocation (a start in the same second is
    # refused, "Job credential revoked", and fails the job).
    _wait("the node to be idle", lambda: _idle(env), 120, 0.2)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={pt}", "StartTime=now"], env=env, check=True)

    def finished():
        st = _overtrain(["grid", "status", str(grid), *opts], env)
        states = dict(
            line.split()[:2] for line in st.stdout.splitlines() if not line.startswith("grid ") and line.strip()
        )
        assert "failed" not in states.values(), st.stdout + "".join(
            p.read_text()[-2000:] for p in (results / "logs" / "slurm").glob("*.out")
        )
        return states and all(s == "done" for s in states.values())

    _wait("the grid to finish on Slurm", finished, 600, 2)
    log = next((results / "logs" / "slurm").glob(f"pt-tiny_10K-{pt}.out")).read_text()
    # (Slurm kills the script once it accepted the requeue, often before it can say "requeued".)
    assert "stopped on SIGUSR1 after step" in log and f"requeueing {pt} (exit 1, state saved)" in log, log[-3000:]
    assert "(restart 1)" in log and "pretrain: resuming from" in log, log[-3000:]
    arr = record["prepare/shards"]
    tasks = [(results / "logs" / "slurm" / f"slurm-test-prepare-shards-{arr}_{i}.out").read_text() for i in (0, 1)]
    assert "task 0/2: shards 0-0: 1 parts" in tasks[0] and "task 1/2: shards 1-2: 2 parts" in tasks[1], tasks
    summary = json.loads((results / "pretrain" / "tiny_10K" / "summary.json").read_text())
    assert summary["resumes"] == 1 and summary["world_size"] == 2
    assert (results / "report" / "report.md").is_file()

    # `grid run` of the same grid: the same rows (bit-identical checkpoints, so the same hashes).
    out, _ = local.communicate(timeout=600)
    assert local.returncode == 0, out
    a, b = read_records(results), read_records(here)
    assert len(a) == len(b) > 0
    assert _comparable(a) == _comparable(b)
    ref = json.loads((here / "pretrain" / "tiny_10K" / "summary.json").read_text())
    assert summary["c4_val_ppl"] == ref["c4_val_ppl"]

    # Everything is done: a resubmission submits nothing.
    done = _overtrain(["grid", "submit", str(grid), *opts], env)
    assert done.returncode == 0 and "0 jobs submitted" in done.stdout


def test_submit_sh_on_slurm_submits_the_grid_with_its_overrides(tmp_path, slurm):
    """Issue 24 item 5 on the real Slurm: ``grid slurm GRID key=value`` writes the scripts and
    ``submit.sh``; running that script (with SBATCH_HOLD, then cancelled: nothing needs to run)
    submits the jobs of the grid as overridden (a 20K budget), not of the grid file (10K): Slurm's
    own record of each job names the overridden run. ~10 s once the module's cluster is up."""
    env = dict(slurm, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    results = tmp_path / "overridden"
    grid = _grid(tmp_path, results)
    opts = ["gpus_per_node=0", "partition=debug", "time=00:10:00"]
    wrote = _overtrain(["grid", "slurm", str(grid), *opts, "pretrain.budgets=[20K]"], env)
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    submit = results / "slurm" / "submit.sh"
    assert "20K" not in submit.read_text()  # the overrides are read back from the results dir's grid record
    sub = subprocess.run(["bash", str(submit)], env=dict(env, SBATCH_HOLD="1"), capture_output=True, text=True)
    record = json.loads((results / "slurm" / "submitted.json").read_text())
    try:
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert set(record) == {"prepare", "pretrain/tiny_20K", "sweep/tiny_20K_final_rte", "perturb/tiny_20K", "report"}

        # Slurm holds the jobs it was given: the overridden pre-training run and its array. (Not the
        # queue: SBATCH_HOLD does not stop the dependency-free prepare job, which then finishes in ~1 s;
        # `scontrol show job` still knows a finished job for MinJobAge, 300 s by default.)
        def job(sid: str) -> str:
            return subprocess.run(
                ["scontrol", "show", "job", sid.split("_")[0]], env=env, capture_output=True, text=True
            ).stdout

        assert "JobName=pt-tiny_20K" in job(record["pretrain/tiny_20K"]), job(record["pretrain/tiny_20K"])
        assert "pretrain_tiny_20K.sbatch" in job(record["pretrain/tiny_20K"])
        assert "JobName=slurm-test-prepare" in job(record["prepare"])
        array = job(record["sweep/tiny_20K_final_rte"])
        assert "JobName=slurm-test-ft" in array and "finetune_array.sbatch" in array, array
        assert "tiny_20K" in (results / "slurm" / "finetune_jobs.txt").read_text()
    finally:
        ids = sorted({s.split("_")[0] for s in record.values()})
        subprocess.run(["scancel", *ids], env=env, capture_output=True)
