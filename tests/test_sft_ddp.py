"""`overtrain sft` under torchrun (2 gloo ranks on CPU) equals one process with the same global batch:
same losses step by step, same weights, one output and one row (rank 0); an empty share (the last
batch smaller than the ranks) joins the all-reduce; gradient checkpointing changes no result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from overtrain.cli import main as cli
from overtrain.core.errors import ConfigError
from overtrain.core.jsonl import read_records
from overtrain.core.paths import REPO_ROOT
from overtrain.core.suite import read_provenance
from overtrain.data.chat import gsm8k_chat, write_chat_jsonl
from overtrain.finetune.instruct.sft import SFTConfig, batch_shares, run_sft
from suite_fixture import TinySuite  # the fixture tiny_suite is registered in conftest.py

# 9 records in batches of 4: two full batches (2 records per rank, micro-batches of 1: accumulation under
# no_sync) and a last one of 1 record (rank 1's share is empty); 2 epochs = 6 steps, LR warmup then decay.
KW = dict(epochs=2, lr=1e-3, batch_size=4, micro_batch_size=1, max_seq_len=128, warmup=0.2, log_every=1)
SETTINGS = [f"{k}={v}" for k, v in KW.items()]


# conftest: one thread (tiny ops on 2 shared cores); about 13 s (the longest modules start first)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.duration(13)]


def test_batch_shares_are_contiguous_and_cover_the_batch():
    shares = batch_shares(torch.arange(7).numpy(), 3)
    assert [s.tolist() for s in shares] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [s.tolist() for s in batch_shares(torch.arange(1).numpy(), 2)] == [[0], []]


def test_two_gloo_ranks_equal_one_process(tiny_suite: TinySuite, tmp_path):
    data = write_chat_jsonl(gsm8k_chat(9), tmp_path / "nine.jsonl")
    member = str(tiny_suite.members[1])
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    results = tmp_path / "results.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "overtrain"]
    cmd += ["sft", member, f"data={data}", f"out={ddp_out}", f"results={results}", "device=cpu", *SETTINGS]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("sft: loss") == 1 and "on 2 x cpu" in proc.stdout  # only rank 0 reports
    assert (proc.stdout + proc.stderr).count("step 6/6") == 1, proc.stdout + proc.stderr

    one = run_sft(member, SFTConfig(data=str(data), out=str(one_out), device="cpu", **KW), log=lambda _: None)
    ddp = read_provenance(ddp_out)
    a, b = ddp["sft_stats"], one["sft_stats"]
    assert a["world_size"] == 2 and b["world_size"] == 1 and a["steps"] == b["steps"] == 6
    assert a["examples"] == 9  # none dropped: the last batch of each epoch is 1 record, rank 1 idles
    for k in ("examples", "dropped", "target_tokens", "input_tokens"):  # integer counts of the global batches
        assert a[k] == b[k], k
    assert ddp["sft"] == one["sft"]  # the recorded settings do not depend on the number of processes
    # Not exact: gloo adds the two ranks' gradients, one process sums all four micro-batches in another
    # order (~1e-7 relative per gradient entry); measured: losses <= 1.3e-8 apart (relative). 1e-5 is far
    # below what a lost micro-batch, a record trained twice or a wrong normalization does (>= 1e-2).
    assert a["loss_first"] == pytest.approx(b["loss_first"], rel=1e-5)
    assert a["loss_last"] == pytest.approx(b["loss_last"], rel=1e-5)
    assert a["epoch_losses"] == pytest.approx(b["epoch_losses"], rel=1e-5)

    from safetensors.torch import load_file

    w_ddp, w_one = load_file(ddp_out / "model.safetensors"), load_file(one_out / "model.safetensors")
    w_init = load_file(tiny_suite.members[1] / "model.safetensors")
    assert set(w_ddp) == set(w_one)
    # Adam divides by sqrt(v): entries whose gradient is ~0 turn that rounding into up to ~1e-3 x lr
    # (tests/test_ddp.py; measured here: 2.5e-6 = 2.5e-3 x lr at most), hence an absolute floor of 1e-2 x lr,
    # 100x below one step's update (~lr) that a lost or doubled micro-batch would change.
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], rtol=1e-4, atol=1e-2 * KW["lr"], msg=k)
    moved = (w_one["model.embed_tokens.weight"] - w_init["model.embed_tokens.weight"]).abs().max().item()
    assert moved > 1e-3  # training moved the weights far more than the tolerance

    # rank 0 alone wrote: one row, no temporary directory, nothing else beside the output
    assert [r["out"] for r in read_records(results)] == [str(ddp_out)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "nine.jsonl", "one", "results.jsonl"]


def test_gradient_checkpointing_changes_no_result(tiny_suite: TinySuite, tmp_path, capsys):
    data = write_chat_jsonl(gsm8k_chat(4), tmp_path / "four.jsonl")
    member = str(tiny_suite.members[0])
    quiet = lambda _: None  # noqa: E731
    base = dict(data=str(data), lr=1e-3, epochs=2, batch_size=2, micro_batch_size=1, max_seq_len=96, log_every=0)
    a = run_sft(member, SFTConfig(out=str(tmp_path / "a"), **base), log=quiet)
    b = run_sft(member, SFTConfig(out=str(tmp_path / "b"), gradient_checkpointing=True, **base), log=quiet)
    # the recomputed forward runs the same kernels on the same inputs: the same numbers
    assert b["sft_stats"]["epoch_losses"] == a["sft_stats"]["epoch_losses"]
    assert "gradient_checkpointing" not in b["sft"]  # not a result setting: a rerun either way is "already done"
    argv = ["sft", member, f"out={tmp_path / 'a'}", "gradient_checkpointing=true"]
    argv += [f"{k}={v}" for k, v in base.items()]
    assert cli(argv) == 0 and "already done" in capsys.readouterr().out


def test_batch_smaller_than_the_ranks_is_refused(tiny_suite: TinySuite, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # what torchrun sets; refused before any process group exists
    monkeypatch.setenv("RANK", "0")
    cfg = SFTConfig(data="${OVERTRAIN_DATA}/gsm8k/train.jsonl", out=str(tmp_path / "out"), batch_size=2)
    with pytest.raises(ConfigError, match="batch_size=2 is smaller than the 4 processes"):
        run_sft(str(tiny_suite.members[0]), cfg, log=lambda _: None)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ the grid

OLMO1B = str(REPO_ROOT / "configs/grids/section2-olmo1b.yaml")


def test_instruct_jobs_get_nproc_and_torchrun(tmp_path, fake_hub):
    from overtrain.launch.plan import expand
    from overtrain.launch.runner import _command
    from overtrain.launch.spec import load_grid

    spec = load_grid(OLMO1B, [f"results_dir={tmp_path}", "instruct.gpus=2"])
    jobs = expand(spec)
    sft = [j for j in jobs if j.kind == "instruct"]
    assert len(sft) == 2 * len(spec.suite.tokens) and {j.nproc for j in sft} == {2}  # 2 tuning sets per member
    cmd = _command(sft[0], gpus=8)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "overtrain", *sft[0].argv]
    lm = next(j for j in jobs if j.kind == "lm-eval")
    assert _command(lm, gpus=8) == [sys.executable, "-m", "overtrain", *lm.argv]  # one GPU each, no torchrun

    from overtrain.launch.slurm import SlurmOptions, script_name, write_slurm

    write_slurm(
        load_grid(OLMO1B, [f"results_dir={tmp_path}", "instruct.gpus=2"]), jobs, tmp_path / "slurm", SlurmOptions()
    )
    script = (tmp_path / "slurm" / script_name(sft[0])).read_text()
    assert (
        "#SBATCH --gpus=2\n" in script
        and '-m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc_per_node=2 --standalone' in script
        and "\n  -m overtrain sft " in script
    ), script
    assert "#SBATCH --gpus=1\n" in (tmp_path / "slurm" / script_name(lm)).read_text()

    # instruct.gpus=0 (the default; section2-olmo1b sets 1): the runner's gpus; on CPU (gpus=0) one plain process
    sft0 = next(
        j for j in expand(load_grid(OLMO1B, [f"results_dir={tmp_path}", "instruct.gpus=0"])) if j.kind == "instruct"
    )
    assert sft0.nproc == 0 and "--nproc_per_node=4" in _command(sft0, gpus=4)
    assert _command(sft0, gpus=0) == [sys.executable, "-m", "overtrain", *sft0.argv]
    with pytest.raises(ConfigError, match=r"instruct.gpus=-1: expected >= 0"):
        load_grid(OLMO1B, ["instruct.gpus=-1"])


def test_runner_gives_each_instruct_job_its_gpus(tmp_path, monkeypatch, fake_hub):
    """4 GPUs, instruct.gpus=2: two SFT jobs at a time, on GPUs 0,1 and 2,3, each a 2-process torchrun
    (processes faked: each finishes on its third poll after writing its done-marker)."""
    from overtrain.launch import runner
    from overtrain.launch.plan import expand
    from overtrain.launch.spec import load_grid

    spec = load_grid(OLMO1B, [f"results_dir={tmp_path}", "instruct.gpus=2"])
    jobs = expand(spec)
    with pytest.raises(ConfigError, match=r"needs 2 GPUs \(instruct.gpus\), the runner has 1"):
        runner.run_jobs(spec, jobs, gpus=1, only="instruct/")  # refused before any job starts
    running, starts = [], []

    class Proc:
        def __init__(self, cmd, stdout=None, stderr=None, env=None):
            self.out = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("out=")))
            self.gpus, self.polls = env.get("CUDA_VISIBLE_DEVICES"), 0
            running.append(self)
            starts.append((cmd, [p.gpus for p in running]))

        def poll(self):
            self.polls += 1
            if self.polls < 3:
                return None
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "overtrain_suite.json").write_text("{}")
            running.remove(self)
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", Proc)
    monkeypatch.setattr(runner.time, "sleep", lambda _: None)
    assert runner.run_jobs(spec, jobs, gpus=4, only="instruct/") == 0
    assert len(starts) == sum(j.kind == "instruct" for j in jobs) and all(
        "--nproc_per_node=2" in cmd for cmd, _ in starts
    )
    assert {busy[-1] for _, busy in starts} == {"0,1", "2,3"}
    assert max(len(busy) for _, busy in starts) == 2  # two at once, never sharing a GPU
    assert all(len(busy) == len(set(busy)) for _, busy in starts)
