"""`parallel=fsdp` (torch's FSDP2 over 2 gloo ranks on CPU) equals one process with the same global
batch: losses step by step, evaluations and final weights, for a muP model whose hidden matrices get a
scaled LR (width_mult 2: the muP shapes survive sharding); its checkpoints keep the optimizer state
sharded (torch.distributed.checkpoint) and resume on 1 process, and a 1-process checkpoint resumes on
2 FSDP ranks, each equal to the uninterrupted run.

The 2-rank runs also use activation checkpointing (pre-training; SFT: transformers' gradient
checkpointing) and, resuming, ``fsdp.reshard_after_forward=false``: neither changes a result.
fsdp.param_dtype auto is fp32 on CPU (the run's precision), so the comparison is of float sums in
another order, not of bf16 against fp32; that bf16 is what the blocks compute in under
``fsdp.param_dtype=bf16`` (fp32 shards stepped), and that checkpointed blocks run again in the
backward under FSDP, is checked in this process over a 1-rank gloo group (seconds).
Costs ~40 s (two 2-rank runs, two 1-process runs; SFT: ~30 s; in-process: ~5 s after the suite);
~90 s in all on 2 cores shared with other jobs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from overtrain.core.checkpoint import load_model, verify_checkpoint
from overtrain.core.config import load_config
from overtrain.core.paths import REPO_ROOT
from overtrain.train.pretrain import PretrainConfig, pretrain

LR = 1e-2  # the demo config's peak LR
ATOL = 1e-2 * LR
# conftest: one thread (tiny ops on 2 shared cores); about 40 s (the longest modules start first)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.duration(40)]


def overrides(data_dir, run_dir):
    # 6 steps of 4 sequences x 32 tokens (micro-batches of 1: DDP accumulates without reduction until
    # the last, FSDP reduce-scatters each); warmup then decay so the LR varies. base_d_model 32: width_mult 2, hidden LRs halved.
    kw = {
        "data.dir": data_dir,
        "run_dir": run_dir,
        "budget_tokens": 6 * 128,
        "seq_len": 32,
        "global_batch_size": 4,
        "micro_batch_size": 1,
        "eval.val_tokens": 224,  # 7 windows: the ranks evaluate 4 and 3 (an FSDP forward is a collective)
        "eval.every_steps": 3,
        "eval.batch_size": 2,
        "log.every_steps": 1,
        "checkpoint.every_steps": 3,
        "schedule.warmup_tokens": 256,
        "device": "cpu",
        "model_overrides.base_d_model": 32,
    }
    return [f"{k}={v}" for k, v in kw.items()]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return {r["step"]: r["loss"] for r in rows(run_dir) if "loss" in r}


def run_one(data_dir, run_dir, *extra):
    pretrain(load_config(PretrainConfig, "demo", [*overrides(data_dir, run_dir), *extra], kind="pretrain"))


def back_to_step_3(run: Path, copy: Path) -> None:
    """A copy of a finished 6-step run as it stood after its step-3 checkpoint (the last one gone)."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints/step-00000006")
    (copy / "summary.json").unlink()
    (copy / "checkpoints/latest").write_text("step-00000003\n")


def test_fsdp_two_ranks_equal_one_process_and_resume_on_one(tmp_path, small_c4):
    fsdp_dir, one_dir, resumed = tmp_path / "fsdp", tmp_path / "one", tmp_path / "resumed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHON=sys.executable)
    # with activation checkpointing, which recomputes the same kernels on the same inputs (changes no result)
    cmd = [str(REPO_ROOT / "launch/torchrun.sh"), "2", "demo", *overrides(small_c4, fsdp_dir), "parallel=fsdp"]
    proc = subprocess.run(
        [*cmd, "activation_checkpointing=true"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("pretrain: done") == 1
    run_one(small_c4, one_dir)

    a, b = losses(fsdp_dir), losses(one_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6] and len(set(b.values())) == 6
    # Not exact: the ranks' gradients are reduce-scattered (summed in another order than one process's
    # four micro-batches, ~1e-7 relative per entry), as under DDP (tests/test_ddp.py: 1e-5 there too).
    # A lost micro-batch, a wrong normalization or an unscaled muP LR moves the losses by >= 1e-3.
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-5), s
    evals = lambda d: [(r["c4_val_ppl"], r["c4_val_tokens"]) for r in rows(d) if "c4_val_ppl" in r]  # noqa: E731
    for (p, n), (q, m) in zip(evals(fsdp_dir), evals(one_dir), strict=True):
        assert p == pytest.approx(q, rel=1e-5) and n == m == 224

    ckpt = fsdp_dir / "checkpoints/step-00000003"
    assert not (ckpt / "optim.pt").exists() and (ckpt / "optim/.metadata").is_file()
    assert verify_checkpoint(ckpt) == []  # the shards are in SHA256SUMS
    manifest = (ckpt / "SHA256SUMS").read_text()
    assert "optim/__0_0.distcp" in manifest and "optim/__1_0.distcp" in manifest

    m_fsdp, _, _ = load_model(fsdp_dir)  # model.pt: whole weights gathered from the shards
    m_one, _, _ = load_model(one_dir)
    # Adam divides by sqrt(v): entries whose gradient is ~0 turn summation rounding into up to ~1e-3 x lr
    # (tests/test_ddp.py, tests/test_sft_ddp.py; measured here: 3.9e-6 = 4e-4 x lr, in the readout), hence
    # an absolute floor of 1e-2 x lr, 50x below one step's update of a hidden matrix (lr / width_mult).
    for (name, p), q in zip(m_fsdp.named_parameters(), m_one.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=ATOL, msg=name)

    # Export to transformers from an fsdp run: model.pt holds whole tensors (a rank's shard of the
    # embedding would be 25,152 of its 50,304 rows), exported without the vocabulary's padding rows
    from overtrain.train.hf_export import export_hf
    from safetensors.torch import load_file

    exported = load_file(export_hf(fsdp_dir, tmp_path / "hf") / "model.safetensors")
    wte = m_fsdp.transformer.wte.weight
    assert exported["model.embed_tokens.weight"].shape == (50280, 64)
    torch.testing.assert_close(exported["model.embed_tokens.weight"], wte[: len(exported["model.embed_tokens.weight"])])

    # Resume the 2-rank run from its step-3 checkpoint on 1 process: the optimizer shards are read
    # back whole; the rest of the run equals the uninterrupted one (here with activation checkpointing too).
    back_to_step_3(fsdp_dir, resumed)
    run_one(small_c4, resumed, f"run_dir={resumed}", "activation_checkpointing=true")
    c = losses(resumed)
    for s in (4, 5, 6):
        assert c[s] == pytest.approx(a[s], rel=1e-5), s
    m_res, _, _ = load_model(resumed)
    for (name, p), q in zip(m_res.named_parameters(), m_fsdp.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=ATOL, msg=name)
    assert json.loads((resumed / "summary.json").read_text())["resumes"] == 1

    # And the other way: the 1-process run's step-3 checkpoint (optim.pt, whole) resumed on 2 FSDP ranks
    # that keep each block's gathered parameters from its forward to its backward (no second all-gather).
    up = tmp_path / "up"
    back_to_step_3(one_dir, up)
    cmd = [str(REPO_ROOT / "launch/torchrun.sh"), "2", "demo", *overrides(small_c4, up), "parallel=fsdp"]
    cmd.append("fsdp.reshard_after_forward=false")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = losses(up)
    for s in (4, 5, 6):
        assert d[s] == pytest.approx(b[s], rel=1e-5), s
    m_up, _, _ = load_model(up)
    for (name, p), q in zip(m_up.named_parameters(), m_one.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=ATOL, msg=name)


# ----------------------------------------------------------------------------------------------- SFT

# 9 records in batches of 3 over 2 ranks: shares of 2 and 1 record in micro-batches of 1, so rank 1
# runs an idle micro-batch to match rank 0's two forwards (each an FSDP all-gather); 2 epochs = 6 steps.
SFT_KW = dict(epochs=2, lr=1e-3, batch_size=3, micro_batch_size=1, max_seq_len=128, warmup=0.2, log_every=1)


def test_sft_fsdp_two_ranks_equal_one_process(tiny_suite, tmp_path):
    from overtrain.core.suite import read_provenance
    from overtrain.data.chat import gsm8k_chat, write_chat_jsonl
    from overtrain.finetune.instruct.sft import SFTConfig, run_sft
    from safetensors.torch import load_file

    data = write_chat_jsonl(gsm8k_chat(9), tmp_path / "nine.jsonl")
    member = str(tiny_suite.members[1])
    fsdp_out, one_out = tmp_path / "fsdp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "overtrain"]
    cmd += ["sft", member, f"data={data}", f"out={fsdp_out}", "device=cpu", "parallel=fsdp"]
    cmd.append("gradient_checkpointing=true")  # recomputes the same kernels inside FSDP's hooks: same result
    cmd += [f"{k}={v}" for k, v in SFT_KW.items()]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = run_sft(member, SFTConfig(data=str(data), out=str(one_out), device="cpu", **SFT_KW), log=lambda _: None)
    fsdp = read_provenance(fsdp_out)
    a, b = fsdp["sft_stats"], one["sft_stats"]
    assert a["world_size"] == 2 and a["steps"] == b["steps"] == 6
    assert a["target_tokens"] == b["target_tokens"] and a["input_tokens"] == b["input_tokens"]
    assert fsdp["sft"] == one["sft"]  # parallel is not a result setting
    # As tests/test_sft_ddp.py: gradients summed in another order (~1e-7 relative); a lost micro-batch,
    # a record trained twice or an idle micro-batch that counted moves the losses >= 1e-2.
    assert a["epoch_losses"] == pytest.approx(b["epoch_losses"], rel=1e-5)
    assert a["loss_last"] == pytest.approx(b["loss_last"], rel=1e-5)

    w_fsdp, w_one = load_file(fsdp_out / "model.safetensors"), load_file(one_out / "model.safetensors")
    w_init = load_file(tiny_suite.members[1] / "model.safetensors")
    assert set(w_fsdp) == set(w_one)  # the whole weights, gathered from the shards
    # Adam's 1/sqrt(v) on ~0 gradients: up to ~1e-3 x lr (tests/test_sft_ddp.py), hence 1e-2 x lr absolute.
    for k in w_one:
        assert w_fsdp[k].shape == w_init[k].shape
        torch.testing.assert_close(w_fsdp[k], w_one[k], rtol=1e-4, atol=1e-2 * SFT_KW["lr"], msg=k)
    moved = (w_one["model.embed_tokens.weight"] - w_init["model.embed_tokens.weight"]).abs().max().item()
    assert moved > 1e-3  # training moved the weights far more than the tolerance


# ------------------------------------------------------- what fsdp applies, in this process (seconds)


@pytest.fixture
def one_rank_group():
    """A gloo process group of this process alone: FSDP2 shards over it (one shard of everything), so
    its hooks (gather in the compute dtype, recompute, reduce) run without starting processes."""
    import socket

    import torch.distributed as tdist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    tdist.destroy_process_group()


# bf16's unit roundoff (8 significant bits), as tests/test_gpu.py bounds bf16 losses: each weight and
# activation rounded by at most u relative; the loss, an average, moved 8e-6 (pretrain) and 4e-5 (SFT)
U_BF16 = 2.0**-8


def compute_and_recompute(layer, step):
    """(the loss of ``step()``, the dtypes of ``layer``'s first Linear weight in its forwards, how many
    forwards that Linear ran in the one step). The Linear, not the layer: transformers checkpoints a
    layer's ``forward`` inside its hooks, so only what the layer calls runs again in the backward."""
    linear = next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))
    dtypes = []
    hook = linear.register_forward_pre_hook(lambda m, i: dtypes.append(m.weight.dtype))
    try:
        loss = step()
    finally:
        hook.remove()
    return loss, set(dtypes), len(dtypes)


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_fsdp_computes_in_bf16_from_fp32_shards_and_recomputes_each_block(kind, one_rank_group, tiny_suite):
    """What ``parallel=fsdp fsdp.param_dtype=bf16`` with activation checkpointing does, on the calls
    pre-training (``train.pretrain_run.layout``) and SFT (``dist.prepare``, ``enable_checkpointing``) make:
    each block computes with bf16 copies of its weights, runs its forward again in the backward, and
    the optimizer steps fp32 shards; the loss is the fp32 model's within bf16 rounding but not equal."""
    from olmo.config import ActivationCheckpointingStrategy
    from overtrain.core import dist
    from overtrain.core.model import build_model
    from overtrain.core.model_spec import load_model_spec
    from overtrain.core.optim import build_optimizer
    from overtrain.core.step import train_step
    from overtrain.finetune.instruct.sft import decoder_layers, enable_checkpointing, sft_loss

    fsdp = dist.FSDPConfig(param_dtype="bf16")
    cpu = torch.device("cpu")
    assert dist.compute_dtype(fsdp, cpu, "fp32") == torch.bfloat16
    assert dist.compute_dtype(dist.FSDPConfig(), cpu, "auto") == torch.float32  # auto: the run's precision
    assert dist.compute_dtype(dist.FSDPConfig(), cpu, "bf16") == torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    if kind == "pretrain":
        spec = load_model_spec("tiny", ["vocab_size=256", "embedding_size=256", "eos_token_id=255"])
        models = [build_model(spec, seed=0) for _ in range(2)]
        models[1].set_activation_checkpointing(ActivationCheckpointingStrategy.whole_layer)
        layers, loss_fn, vocab, mup = list(models[1].transformer.blocks), None, 256, True
    else:
        from transformers import AutoModelForCausalLM

        path = tiny_suite.members[1]
        models = [AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32) for _ in range(2)]
        enable_checkpointing(models[1])
        layers, loss_fn, vocab, mup = decoder_layers(models[1]), sft_loss, 1000, False
    x = torch.randint(0, vocab, (2, 33), generator=gen)
    batch = [(x[:, :-1], x[:, 1:])]

    def step(model):
        opt = build_optimizer(model.named_parameters(), 1e-3, mup=mup)
        return lambda: train_step(model, opt, batch, 1.0, precision="fp32", loss_fn=loss_fn).loss

    first = decoder_layers(models[0])[0] if kind == "sft" else models[0].transformer.blocks[0]
    ref, ref_dtypes, ref_calls = compute_and_recompute(first, step(models[0]))
    assert ref_dtypes == {torch.float32} and ref_calls == 1
    sharded = dist.shard(models[1], layers, fsdp, dist.compute_dtype(fsdp, cpu, "fp32"))
    loss, dtypes, calls = compute_and_recompute(layers[0], step(sharded))
    assert dtypes == {torch.bfloat16}  # gathered in bf16 for the forward and its recomputation
    assert calls == 2  # the forward, then again in the backward: activations were not kept
    assert loss != ref and loss == pytest.approx(ref, rel=U_BF16)
    for name, p in sharded.named_parameters():  # master weights and their gradients stay fp32
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
