"""SFT on Slurm past one node (``launch.cluster.job_layout``): ``instruct.gpus`` above ``gpus_per_node``
runs on whole nodes with the c10d rendezvous pre-training uses (one builder, ``launch.slurm.torchrun_script``;
its node addressing runs for real in tests/test_two_nodes.py), GPUs that fill no whole nodes are refused
before any file is written, and the time check divides an SFT job's GPU-hours over its GPUs."""

from __future__ import annotations

import re
import shlex

import pytest
from overtrain.core.errors import ConfigError
from overtrain.core.paths import CONFIG_ROOT
from overtrain.launch.cluster import check_time_fit, job_layout, job_seconds
from overtrain.launch.plan import expand, gpu_hours
from overtrain.launch.slurm import SlurmOptions, script_name, write_slurm
from overtrain.launch.spec import load_grid

OLMO2_7B = str(CONFIG_ROOT / "grids" / "section2-olmo2-7b.yaml")  # instruct.gpus: 8, fsdp; hub members, offline


def _torchrun_lines(text: str) -> list[str]:
    """The rendezvous and torchrun lines of a batch file, the job's own command line cut off."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("head="))
    cut = lambda x: re.sub(r"^run_resumable \S+", "run_resumable DONE", re.sub(r"-m overtrain .*", "-m overtrain", x))  # noqa: E731
    return [cut(x) for x in lines[start : start + 5]]


def test_sft_past_one_node_runs_on_whole_nodes_like_pretraining(tmp_path):
    spec = load_grid(OLMO2_7B, [f"results_dir={tmp_path}", "instruct.gpus=16"])
    jobs = expand(spec)
    sft = next(j for j in jobs if j.kind == "instruct")
    assert job_layout(sft, 1, 8) == (2, 8) and job_layout(sft, 1, 16) == (1, 16) and job_layout(sft, 3, 4) == (4, 4)
    write_slurm(spec, jobs, tmp_path / "slurm", SlurmOptions(gpus_per_node=8))
    text = (tmp_path / "slurm" / script_name(sft)).read_text()
    for line in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=64"):
        assert f"#SBATCH {line}\n" in text
    assert "--standalone" not in text and "--nproc_per_node=8 --rdzv_id" in text
    assert text.endswith(f"  -m overtrain {shlex.join(sft.argv)}\n")
    # the same rendezvous and torchrun lines as a two-node pre-training run's (tests/test_two_nodes.py)
    demo = load_grid(str(CONFIG_ROOT / "grids" / "demo.yaml"), [f"results_dir={tmp_path / 'demo'}", "finetune=null"])
    djobs = expand(demo)
    write_slurm(demo, djobs, tmp_path / "dslurm", SlurmOptions(nodes=2, gpus_per_node=8))
    pt = next(j for j in djobs if j.kind == "pretrain")
    assert _torchrun_lines(text) == _torchrun_lines((tmp_path / "dslurm" / script_name(pt)).read_text())
    # within one node: a share of it, --standalone
    write_slurm(spec, jobs, tmp_path / "one", SlurmOptions(gpus_per_node=16))
    one = (tmp_path / "one" / script_name(sft)).read_text()
    assert "#SBATCH --gpus=16\n" in one and "--nproc_per_node=16 --standalone" in one and "head=" not in one


def test_sft_gpus_that_fill_no_whole_nodes_are_refused_before_any_file(tmp_path):
    spec = load_grid(OLMO2_7B, [f"results_dir={tmp_path}", "instruct.gpus=12"])
    jobs = expand(spec)
    with pytest.raises(ConfigError, match=r"instruct.gpus=12 spans 2 nodes of gpus_per_node=8 .*one of 8, 16"):
        write_slurm(spec, jobs, tmp_path / "slurm", SlurmOptions(gpus_per_node=8))
    assert not (tmp_path / "slurm").exists()
    write_slurm(spec, jobs, tmp_path / "slurm", SlurmOptions(gpus_per_node=4))  # 3 whole nodes of 4


def test_time_check_divides_sft_over_its_gpus(tmp_path):
    spec = load_grid(OLMO2_7B, [f"results_dir={tmp_path}"])
    jobs = expand(spec)
    sft = next(j for j in jobs if j.kind == "instruct")
    hours = gpu_hours(sft.flops, spec.hardware)  # 6 x 7.3B x 1B tokens at 312 TFLOP/s x 40%: ~97.5 GPU-hours
    assert 97 < hours < 98
    assert job_seconds(spec, sft, 1, 8) == pytest.approx(hours * 3600 / 8)  # instruct.gpus: 8
    assert job_seconds(spec, sft, 1, 4) == pytest.approx(hours * 3600 / 8)  # 2 nodes of 4: still 8 GPUs
    assert check_time_fit(spec, jobs, SlurmOptions(time="24:00:00")) == []  # ~12.2 h each on 8 GPUs
    with pytest.raises(ConfigError, match=r"time=12:00:00: 10 jobs do not fit .*instruct/\S+ ~12\.2 h"):
        check_time_fit(spec, jobs, SlurmOptions(time="12:00:00"))
