"""The CUDA path (issue 11): every test here needs a CUDA device and is skipped without one.

Run on a GPU by ``make gpu-check`` (``benchmarks/gpu_check.py``: ``pytest -m gpu tests/test_gpu.py``);
``make test`` on a CPU machine reports them as skipped. Data are synthetic (no ``shared/`` data on
the GPU machine): Zipf-distributed ids over the first 1,000 tokens, so a few steps move the loss
(10.8 -> ~8), unlike uniform ids whose loss stays at log V.

Tolerances (each says what it compares):

- bf16 vs fp32 (autocast vs none, same init and batches): autocast rounds each matmul's inputs to
  bf16 (unit roundoff u = 2^-8 = 3.9e-3) and accumulates in fp32; the loss is a mean over B x T
  tokens, so independent roundings average out. Measured with CPU bf16 autocast on this tiny model
  over 8 steps: losses 9e-5 relative apart, grad norms 6e-3, the total parameter update 0.9%. The
  bounds are u for losses (40x the measured), 8u for grad norms (5x) and 10% for the update (10x):
  a real fault (autocast off, an fp16 overflow, a loss left in bf16, a wrong gradient scale)
  moves them by far more or gives NaN.
- the same computation in two summation orders in fp32 (compiled vs eager, nccl DDP vs one
  process, GPU vs CPU): ``tolerances.loglik_rtol`` for a loss on identical weights; after Adam
  steps, losses 1e-4 relative (as tests/test_ddp.py) and parameters rtol 1e-4 / atol 1e-3 x lr
  (Adam turns a rounding-level difference of a gradient entry that is ~0 into up to ~1e-3 x lr:
  its first update is lr x g / (|g| + eps); see tests/test_stacked.py).
"""

from __future__ import annotations

import datetime
import json
import socket
import statistics
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from overtrain.core.checkpoint import load_model, save_model_checkpoint
from overtrain.core.config import load_config
from overtrain.core.likelihood import autocast_for, lm_loss, perplexity
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import build_optimizer
from overtrain.core.step import train_step, use_fused_adam
from overtrain.data.loader import Prefetcher, WindowLoader
from tolerances import loglik_rtol

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)"),
    pytest.mark.filterwarnings("ignore:There is a performance drop"),
]

CUDA = torch.device("cuda", 0)
U_BF16 = 2.0**-8
TINY = ["base_d_model=32", "max_sequence_length=256"]  # width_mult 2: muP's LR scaling is exercised
LR = 1e-2
NCCL_TIMEOUT = datetime.timedelta(seconds=60)  # not NCCL's 10 minutes: a hang costs this test, not the GPU call


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 means fp32: TF32 matmuls (10-bit mantissa) would make the fp32 comparisons bf16-like."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def zipf_ids(n: int, seed: int = 0, vocab: int = 1000) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    return np.random.default_rng(seed).choice(vocab, size=n, p=p / p.sum())


def batches(steps: int, micro: int = 2, batch: int = 4, seq: int = 128, seed: int = 0, device=CUDA):
    """``steps`` lists of ``micro`` (input, target) micro-batches of ``batch`` x ``seq`` tokens."""
    ids = torch.from_numpy(zipf_ids(steps * micro * batch * (seq + 1), seed)).view(steps, micro, batch, seq + 1)
    return [[(r[:, :-1].clone().to(device), r[:, 1:].clone().to(device)) for r in step] for step in ids]


def optimizer(model, lr: float = LR, fused: bool = True):
    opt = build_optimizer(model.named_parameters(), lr, (0.9, 0.95), 1e-8, 0.1)
    if fused:
        assert use_fused_adam(opt)
    return opt


def train(spec, data, precision: str, compiled: bool = False, fused: bool = True, model=None):
    """Losses and grad norms of ``train_step`` over ``data``, and the model (as pre-training: fused
    AdamW on CUDA; ``compiled``: torch.compile of the model and of the loss, as ``compile: true``)."""
    model = model if model is not None else build_model(spec, device=CUDA, seed=0)
    opt = optimizer(model, fused=fused)
    run, loss_fn = (torch.compile(model), torch.compile(lm_loss)) if compiled else (model, None)
    stats = [train_step(run, opt, micro, 1.0, 1.0, precision, loss_fn=loss_fn) for micro in data]
    return [s.loss for s in stats], [s.grad_norm for s in stats], model


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def update_rel_diff(a, b, init) -> float:
    """||theta_a - theta_b|| / ||theta_b - theta_0||: how far apart two runs' updates are."""
    num = sum(((p - q).double() ** 2).sum() for p, q in zip(a.parameters(), b.parameters()))
    den = sum(((q - p0).double() ** 2).sum() for q, p0 in zip(b.parameters(), init.parameters()))
    return float((num / den).sqrt())


@pytest.fixture(scope="module")
def spec():
    return load_model_spec("tiny", TINY)


def test_bf16_steps_match_fp32(spec):
    data = batches(8)
    with torch.no_grad(), autocast_for(CUDA, "bf16"):  # autocast is on: the matmuls run in bf16
        assert build_model(spec, device=CUDA)(data[0][0][0]).logits.dtype == torch.bfloat16
    loss32, norm32, m32 = train(spec, data, "fp32")
    loss16, norm16, m16 = train(spec, data, "bf16")
    assert loss32[-1] < loss32[0] - 1.0  # the run learns: the comparison is over a moving trajectory
    assert loss16 != loss32  # bf16 really ran
    for s, (a, b, ga, gb) in enumerate(zip(loss16, loss32, norm16, norm32)):
        assert rel(a, b) <= U_BF16, f"step {s + 1}: bf16 loss {a} vs fp32 {b}"
        assert rel(ga, gb) <= 8 * U_BF16, f"step {s + 1}: bf16 grad norm {ga} vs fp32 {gb}"
    assert update_rel_diff(m16, m32, build_model(spec, device=CUDA, seed=0)) <= 0.1


def test_fused_adamw_equals_default(spec):
    """MuAdamW's default CUDA kernel (foreach) and the fused one pre-training switches to, fed the
    same gradients, give the same parameters (the same algorithm: per-group muP LRs, decoupled
    decay, bias correction; only the order of float operations may differ)."""
    models = [build_model(spec, device=CUDA, seed=0) for _ in range(2)]
    default, fused = optimizer(models[0], fused=False), optimizer(models[1], fused=True)
    assert not default.param_groups[0].get("fused") and all(g["fused"] for g in fused.param_groups)
    lrs = {g["lr"] for g in fused.param_groups}
    assert len(lrs) > 1  # muP: hidden matrices get lr / width_mult; both kernels must honour the groups
    g = torch.Generator(device=CUDA).manual_seed(0)
    for _ in range(5):
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            p.grad = torch.randn(p.shape, device=CUDA, generator=g) * 1e-2
            q.grad = p.grad.clone()
        default.step()
        fused.step()
    init = build_model(spec, device=CUDA, seed=0)
    for (name, p), q, p0 in zip(models[0].named_parameters(), models[1].parameters(), init.parameters()):
        assert not torch.equal(p, p0), name
        # 5 updates of size <= lr = 1e-2, each a few float32 roundings (6e-8 relative) apart.
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_equals_eager(spec, precision):
    torch._dynamo.reset()
    data = batches(4)
    eager, _, _ = train(spec, data, precision)
    compiled, _, _ = train(spec, data, precision, compiled=True)
    if precision == "fp32":
        assert rel(compiled[0], eager[0]) <= loglik_rtol(spec)  # identical weights: summation order only
        for a, b in zip(compiled, eager):
            assert rel(a, b) <= 1e-4
    else:  # inductor keeps some intermediates in fp32 that eager rounds to bf16
        for a, b in zip(compiled, eager):
            assert rel(a, b) <= U_BF16
    torch._dynamo.reset()


def test_prefetch_overlaps_the_step(tmp_path):
    """The next step's batch is gathered, pinned and copied while this step runs on the GPU: waiting
    for it takes a fraction of loading it, and the batches are those of the loader itself."""
    tokens = zipf_ids(4_000_000).astype(np.uint16)
    loader = WindowLoader(tokens, 1024, 1024, 64, seed=0)
    loader.micro_batches(0, CUDA)  # the epoch permutation
    loads = []
    for s in range(3):
        t = time.perf_counter()
        loader.micro_batches(s, CUDA)
        torch.cuda.synchronize()
        loads.append(time.perf_counter() - t)
    load = statistics.median(loads)
    a = torch.randn(4096, 4096, device=CUDA)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a = torch.tanh(a @ a)
    torch.cuda.synchronize()
    reps = max(10, int(10 * 4 * load / (time.perf_counter() - t)))  # GPU work of ~4 loads per step

    prefetch = Prefetcher(loader, 8, CUDA)
    waits, got = [], []
    try:
        for s in range(8):
            t = time.perf_counter()
            got.append(prefetch.micro_batches(s))
            waits.append(time.perf_counter() - t)
            for _ in range(reps):
                a = torch.tanh(a @ a)
            torch.cuda.synchronize()
    finally:
        prefetch.close()
    assert statistics.median(waits[1:]) < 0.25 * load, f"waits {waits} vs one load {load:.4f} s"
    for s, micro in enumerate(got):
        for (x, y), (x2, y2) in zip(micro, loader.micro_batches(s, CUDA)):
            assert x.is_cuda and torch.equal(x, x2) and torch.equal(y, y2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nccl_single_process_ddp(spec):
    """DDP over an nccl process group of one: the same training as without DDP (the gradient
    all-reduce, bucketing with gradient-as-bucket-view and no_sync accumulation run through nccl),
    and a distributed evaluation equals the plain one."""
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, device_id=CUDA, timeout=NCCL_TIMEOUT
    )
    try:
        assert dist.get_backend() == "nccl"
        one = torch.ones(2, device=CUDA)
        dist.all_reduce(one)
        assert one.tolist() == [1.0, 1.0]
        data = batches(4, micro=2)
        plain_loss, _, plain = train(spec, data, "bf16")
        model = build_model(spec, device=CUDA, seed=0)
        # as core.dist.wrap builds it (which wraps only for world_size > 1)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[CUDA.index], gradient_as_bucket_view=True)
        opt = optimizer(model)
        ddp_loss = [train_step(ddp, opt, micro, 1.0, 1.0, "bf16").loss for micro in data]
        for a, b in zip(ddp_loss, plain_loss):
            assert rel(a, b) <= 1e-4
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-3 * LR, msg=name)
        val = zipf_ids(8 * 129, seed=1)
        a = perplexity(model, val, 128, batch_size=4, device=CUDA, distributed=True)
        b = perplexity(model, val, 128, batch_size=4, device=CUDA, distributed=False)
        assert a["tokens"] == b["tokens"] == 8 * 128 and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    finally:
        dist.destroy_process_group()


def synthetic_prepared(root, train_tokens: int = 200_000, val_tokens: int = 20_000):
    """A prepared-data directory as ``overtrain prepare-data`` writes it, of Zipf ids."""
    root.mkdir(parents=True)
    splits = {}
    for split, n, seed in (("train", train_tokens, 0), ("val", val_tokens, 1)):
        zipf_ids(n, seed).astype(np.uint16).tofile(root / f"{split}.npy")
        splits[split] = {"file": f"{split}.npy", "tokens": n}
    meta = {"tokenizer": "synthetic", "vocab_size": 50280, "eos_token_id": 50279, "dtype": "uint16", "splits": splits}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def pretrain_run(data_dir, run_dir, device: str):
    from overtrain.train.pretrain import PretrainConfig, pretrain

    kw = {
        "model": "tiny",
        "data.dir": data_dir,
        "run_dir": run_dir,
        "budget_tokens": 6 * 4 * 64,  # 6 steps
        "seq_len": 64,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "precision": "fp32",  # bf16 exists on CUDA only: fp32 on both sides makes them comparable
        "eval.val_tokens": 256,
        "eval.every_steps": 2,
        "eval.batch_size": 4,
        "log.every_steps": 1,
        "checkpoint.every_steps": 2,
        "checkpoint.keep_last": 10,
        "schedule.warmup_tokens": 256,
        "device": device,
    }
    return pretrain(load_config(PretrainConfig, "demo", [f"{k}={v}" for k, v in kw.items()], kind="pretrain"))


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_checkpoint_moves_between_gpu_and_cpu(tmp_path, capsys):
    """Steps 1-2 on the GPU, 3-4 resumed on the CPU from the GPU's checkpoint, 5-6 resumed on the GPU
    from the CPU's (model, fused-AdamW state, RNG): the same run as 6 steps on the GPU."""
    import shutil

    data = synthetic_prepared(tmp_path / "data")
    ref = tmp_path / "gpu"
    pretrain_run(data, ref, "cuda")
    mixed = tmp_path / "mixed"
    shutil.copytree(ref, mixed)
    for step in (4, 6):  # back to the state after step 2, saved on the GPU
        shutil.rmtree(mixed / f"checkpoints/step-{step:08d}")
    (mixed / "summary.json").unlink()
    pretrain_run(data, mixed, "cpu")
    shutil.rmtree(mixed / "checkpoints/step-00000006")  # now resume from step 4, saved on the CPU
    (mixed / "summary.json").unlink()
    pretrain_run(data, mixed, "cuda")
    err = capsys.readouterr().err
    assert "resuming from" in err and "x cpu;" in err and "x cuda:0;" in err

    a, b = losses(ref), losses(mixed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert a[6] < a[1]
    for step in a:
        assert rel(b[step], a[step]) <= 1e-4, f"step {step}"
    m_ref, _, _ = load_model(ref)
    m_mix, _, _ = load_model(mixed)
    for (name, p), q in zip(m_mix.named_parameters(), m_ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-3 * 1e-2, msg=name)  # the demo config's lr 1e-2


def test_stacked_sweep_equals_sequential(spec):
    """finetune.stacked on CUDA (vmapped flash/efficient attention, fused AdamW over views) equals K
    separate train_step runs, as tests/test_stacked.py shows on CPU."""
    from overtrain.core.optim import optimizer_for as finetune_optimizer
    from overtrain.finetune.finetune import FinetuneConfig, completion_loss
    from overtrain.finetune.stacked import train_stacked

    small = load_model_spec("tiny", ["base_d_model=32", "vocab_size=1000", "embedding_size=1024"])
    lrs, factors = [1e-4, 1e-3, 3e-2], [0.5, 1.0, 0.7, 0.0]
    data = batches(4, micro=2, batch=3, seq=20, seed=2)
    for step in data:
        for _, y in step:
            y[:, : y.shape[1] // 2] = -100  # loss on a completion only, as fine-tuning
    kw = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=1.0, loss_fn=completion_loss)
    for dtype, precision in ((torch.float64, "fp32"), (torch.float32, "fp32"), (torch.float32, "bf16")):
        states, stacked_losses = train_stacked(
            build_model(small, device=CUDA, seed=0).to(dtype), small, lrs, data, factors, precision=precision, **kw
        )
        for k, lr in enumerate(lrs):
            model = build_model(small, device=CUDA, seed=0).to(dtype)
            opt = finetune_optimizer(model, FinetuneConfig(lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1))
            assert use_fused_adam(opt)  # as the stack's optimizers on CUDA
            stats = [
                train_step(model, opt, micro, f, 1.0, precision, loss_fn=completion_loss)
                for micro, f in zip(data, factors)
            ]
            for s, (row, st) in enumerate(zip(stacked_losses, stats)):
                tol = U_BF16 if precision == "bf16" else 1e-4
                assert rel(row[k], st.loss) <= tol, f"{dtype} {precision} lr={lr} step {s + 1}"
            if dtype == torch.float64:
                for name, p in model.state_dict().items():
                    torch.testing.assert_close(states[k][name], p, rtol=1e-9, atol=1e-11, msg=f"lr={lr} {name}")


def test_export_of_gpu_checkpoint_equals_transformers(tmp_path):
    """A checkpoint trained and saved on the GPU (bf16 autocast) exports to transformers' OLMo,
    which reproduces its fp32 logits on the GPU (as tests/test_hf.py on CPU)."""
    transformers = pytest.importorskip("transformers")
    from overtrain.cli import main as cli

    spec = load_model_spec("tiny", ["base_d_model=32", "output_mult=3.0", "init_std=0.3", "max_sequence_length=256"])
    model = build_model(spec, device=CUDA, seed=0)
    train(spec, batches(3), "bf16", model=model)
    meta = {"step": 3, "tokens": 1536, "budget_tokens": 1536, "final": True, "lr_decayed": False, "kind": "pretrain"}
    save_model_checkpoint(
        tmp_path / "run" / "checkpoints", 3, model, spec, dict(meta, run_dir=str(tmp_path / "run"), seed=0)
    )
    out = tmp_path / "export"
    assert cli(["export-hf", str(tmp_path / "run"), str(out)]) == 0
    ours, _, _ = load_model(tmp_path / "run", device=CUDA)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).to(CUDA).eval()
    x = torch.from_numpy(zipf_ids(2 * 128, seed=3)).view(2, 128).to(CUDA)
    with torch.no_grad():
        a = ours.eval()(x).logits[..., : spec.vocab_size]
        b = theirs(x).logits
    assert b.shape == a.shape
    assert (a - b).abs().max().item() < 1e-4
    assert a.std().item() > 0.1  # logits of a real size: the tolerance is meaningful


def test_bf16_evaluation_and_generation(spec):
    """Evaluation runs bf16 autocast on CUDA by default: its perplexity is fp32's within u; greedy
    generation with the KV cache runs on the GPU and returns in-vocabulary ids."""
    from overtrain.evaluate.generate import generate

    model = build_model(spec, device=CUDA, seed=0)
    train(spec, batches(4), "bf16", model=model)
    val = zipf_ids(16 * 129, seed=4)
    a = perplexity(model, val, 128, batch_size=8, device=CUDA, precision="bf16")
    b = perplexity(model, val, 128, batch_size=8, device=CUDA, precision="fp32")
    assert a["tokens"] == b["tokens"] and rel(a["loss"], b["loss"]) <= U_BF16
    ids = generate(model, [1, 2, 3], 8, spec.vocab_size, precision="bf16")
    assert len(ids) == 8 and all(0 <= i < spec.vocab_size for i in ids)
