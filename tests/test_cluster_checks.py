"""Bad input stops ``grid slurm`` / ``grid submit`` before anything is written or submitted
(``launch.cluster``): no sbatch, a partition or account that does not exist, a time above the
partition's MaxTime, jobs that do not fit ``time``; and the batch of each pre-training run fitted
to ``nodes`` x GPUs. Slurm's commands are fakes on PATH printing what a real cluster prints
(tests/test_slurm.py checks the partition against a real one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from overtrain.cli import main
from overtrain.core.errors import ConfigError
from overtrain.core.paths import CONFIG_ROOT
from overtrain.launch.cluster import check_cluster, check_time_fit, fit_batches, job_seconds, parse_slurm_time
from overtrain.launch.plan import expand
from overtrain.launch.slurm import SlurmOptions
from overtrain.launch.spec import load_grid

PAPER = str(CONFIG_ROOT / "grids" / "paper.yaml")
DEMO = str(CONFIG_ROOT / "grids" / "demo.yaml")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper grid's spec and jobs (expanded once: it counts 216 models' parameters)."""
    spec = load_grid(PAPER, [f"results_dir={tmp_path_factory.mktemp('paper')}"])
    return spec, expand(spec)


PARTITIONS = """PartitionName=gpu AllowGroups=ALL Default=YES MaxTime=1-00:00:00 State=UP TotalNodes=4
PartitionName=long AllowGroups=ALL Default=NO MaxTime=UNLIMITED State=UP TotalNodes=2
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Path:
    """A PATH with fake sbatch, scontrol (two partitions) and sacctmgr (no accounting database)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "partitions").write_text(PARTITIONS)
    fakes = {
        "sbatch": "echo 1",
        "scontrol": f'[ "$1 $2" = "show partition" ] && exec cat {tmp_path / "partitions"}; exit 1',
        "sacctmgr": "echo 'You are not running a supported accounting_storage plugin' >&2; exit 1",
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_slurm_times():
    assert parse_slurm_time("30") == 1800 and parse_slurm_time("30:15") == 1815
    assert parse_slurm_time("48:00:00") == 48 * 3600 and parse_slurm_time("2-12") == 60 * 3600
    assert parse_slurm_time("1-00:30") == 86400 + 1800 and parse_slurm_time("1-00:00:05") == 86405
    assert parse_slurm_time("UNLIMITED") is None and parse_slurm_time("INFINITE") is None
    with pytest.raises(ConfigError, match="time=2h: not a Slurm time"):
        parse_slurm_time("2h")


@pytest.mark.parametrize("bad", ["nodes=0", "gpus_per_node=-1", "prepare_tasks=-2", "time=2h"])
def test_bad_options(bad, tmp_path, capsys):
    assert main(["grid", "slurm", DEMO, f"results_dir={tmp_path / 'r'}", bad]) == 2
    assert bad.split("=")[0] + "=" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_no_sbatch_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="sbatch is not on PATH"):
        check_cluster(SlurmOptions())


def test_partitions_and_time_limits(cluster):
    assert check_cluster(SlurmOptions(time="24:00:00")) == []  # the default partition, gpu: MaxTime 1 day
    assert check_cluster(SlurmOptions(time="7-00:00:00", partition="long")) == []
    with pytest.raises(ConfigError, match=r"partition=gpus: no such Slurm partition \(have: gpu, long\)"):
        check_cluster(SlurmOptions(partition="gpus"))
    with pytest.raises(ConfigError, match="time=48:00:00 exceeds the MaxTime 1-00:00:00 of partition gpu"):
        check_cluster(SlurmOptions(time="48:00:00"))  # the default partition's limit
    (cluster.parent / "partitions").write_text(PARTITIONS.replace("Default=YES", "Default=NO"))
    with pytest.raises(ConfigError, match="no default one: set partition= \\(gpu, long\\)"):
        check_cluster(SlurmOptions(time="1:00:00"))


def test_accounts(cluster):
    warnings = check_cluster(SlurmOptions(time="1:00:00", account="proj"))
    assert warnings == [
        "account=proj cannot be checked (no Slurm accounting database: You are not running a supported "
        "accounting_storage plugin); submitting with it"
    ]
    (cluster / "sacctmgr").write_text("#!/bin/bash\nprintf 'proj-a\\nproj-b\\n'\n")  # with accounting
    assert check_cluster(SlurmOptions(time="1:00:00", account="proj-b")) == []
    with pytest.raises(ConfigError, match=r"account=proj: user \S+ has no such Slurm account \(have: proj-a, proj-b\)"):
        check_cluster(SlurmOptions(time="1:00:00", account="proj"))


def test_bad_partition_stops_grid_submit_before_any_file(cluster, tmp_path, capsys):
    args = ["grid", "submit", DEMO, f"results_dir={tmp_path / 'r'}", "partition=nosuch"]
    assert main(args) == 2
    assert "partition=nosuch: no such Slurm partition" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_jobs_that_do_not_fit_time(paper):
    spec, jobs = paper
    longest = max((j for j in jobs if j.kind == "pretrain"), key=lambda j: j.flops)
    hours = job_seconds(spec, longest, 1, 8) / 3600  # 251.5 A100-hours (issue 15) on 8 GPUs
    assert longest.id == "pretrain/olmo-90m_128B" and 31 < hours < 32
    assert check_time_fit(spec, jobs, SlurmOptions(time="48:00:00")) == []
    with pytest.raises(
        ConfigError,
        match=r"time=24:00:00: 1 jobs do not fit .*olmo-90m_128B ~31\.4 h\. Fix: time=32:00:00 or more, .*requeue_long",
    ):
        check_time_fit(spec, jobs, SlurmOptions(time="24:00:00"))
    assert check_time_fit(spec, jobs, SlurmOptions(time="24:00:00", nodes=2)) == []  # 16 GPUs: ~15.7 h
    notes = check_time_fit(spec, jobs, SlurmOptions(time="24:00:00", requeue_long=True))
    assert notes == ["pretrain/olmo-90m_128B: ~31.4 h, about 2 requeued segments of time=24:00:00"]
    # Jobs that cannot stop and resume must fit even with requeue_long: at 0.1 s, the report's 0 s do,
    # a perturbation (seconds of forward passes) does not.
    with pytest.raises(ConfigError, match=r"time=0:10: 18 jobs do not fit .*perturb/olmo-90m_\d+B ~\d+ s") as e:
        check_time_fit(spec, jobs, SlurmOptions(time="0:10", signal_s=5, requeue_long=True))
    assert "requeue_long=true (each" not in str(e.value)  # not offered: perturbations cannot be requeued midway
    with pytest.raises(ConfigError, match="signal_s=300 is not below time=5:00"):
        check_time_fit(spec, jobs, SlurmOptions(time="5:00"))


def test_nodes_fit_the_micro_batch_or_name_the_node_counts_that_do(paper, tmp_path, capsys):
    spec, jobs = paper  # global batch 256, micro-batch 32, 8 processes per node
    same, notes = fit_batches(jobs, 1, 8)
    assert notes == [] and [j.argv for j in same] == [j.argv for j in jobs]
    fitted, notes = fit_batches(jobs, 2, 8)  # 16 processes: 16 sequences each, so micro-batch 16
    pre = [j for j in fitted if j.kind == "pretrain"]
    assert len(pre) == 18 and all(j.argv[-1] == "micro_batch_size=16" for j in pre)
    assert all(j.config.micro_batch_size == 16 for j in pre)  # the config the job carries (Job.config) agrees
    assert all(j.config.micro_batch_size == 32 for j in jobs if j.kind == "pretrain")  # the plan's, untouched
    assert notes == [
        "micro_batch_size 32 -> 16 for 18 pre-training runs (pretrain/olmo-15m_4B, ...): 256 sequences / 16 "
        "processes = 16 each, 1 micro-batches per step; the global batch is unchanged"
    ]
    with pytest.raises(
        ConfigError, match=r"global_batch_size=256 is not divisible by .* 3 x 8 = 24: use nodes= one of 1, 2, 4, 8"
    ):
        fit_batches(jobs, 3, 8)
    # A micro-batch that does not divide the share: the largest divisor of it below the micro-batch.
    spec = load_grid(PAPER, [f"results_dir={tmp_path}", "pretrain.gpus=4", "pretrain.overrides=[micro_batch_size=12]"])
    fitted, notes = fit_batches(expand(spec), 2, 4)
    assert all(
        j.argv[-1] == "micro_batch_size=8" for j in fitted if j.kind == "pretrain"
    )  # 32 each: largest divisor <= 12
    # The batch files carry the fitted micro-batch.
    out = tmp_path / "slurm"
    assert main(["grid", "slurm", PAPER, f"results_dir={tmp_path}", f"out={out}", "nodes=2"]) == 0
    assert "micro_batch_size=16" in (out / "pretrain_olmo-90m_128B.sbatch").read_text()
    assert "note: " in capsys.readouterr().out
