"""Stacked LR sweeps (finetune/stacked.py) equal separate runs of train_step + mup.MuAdamW."""

import math

import pytest
import torch
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import optimizer_for
from overtrain.core.step import train_step, use_fused_adam
from overtrain.finetune.finetune import FinetuneConfig, completion_loss, l2_to
from overtrain.finetune.stacked import StackedRun, first_nonfinite, train_stacked

# The CPU SDPA kernel has no vmap batching rule; torch falls back to a loop (correct, slower).

LRS = [1e-4, 1e-3, 3e-2]
FACTORS = [0.5, 1.0, 0.7, 0.0]  # warmup, peak, decay, and the final step's LR of exactly 0
CLIP = 1.0
VOCAB = 1000


def completion_batches(steps=4, micro=2, seq=20, seed=0):
    """Fine-tuning-shaped data: random tokens, loss only on a completion of varying length, so
    micro-batches hold different numbers of target tokens (normalization by the step's total)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        step = []
        for _ in range(micro):
            b = int(torch.randint(1, 4, (), generator=g))
            x = torch.randint(0, VOCAB, (b, seq), generator=g)
            y = torch.randint(0, VOCAB, (b, seq), generator=g)
            for i in range(b):
                y[i, : int(torch.randint(2, seq - 1, (), generator=g))] = -100
            step.append((x, y))
        out.append(step)
    return out


pytestmark = [pytest.mark.filterwarnings("ignore:There is a performance drop"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def spec():
    # base width 32 < d_model 64: width_mult 2, so muP's LR / decay scaling is exercised. A
    # 1,024-row vocabulary keeps the test fast; nothing here depends on the tokenizer.
    return load_model_spec("tiny", ["base_d_model=32", "vocab_size=1000", "embedding_size=1024"])


def separate_run(spec, lr, batches, dtype, fused):
    model = build_model(spec, seed=0).to(dtype)
    opt = optimizer_for(model, FinetuneConfig(lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1))
    if fused:
        assert use_fused_adam(opt)
    stats = [
        train_step(model, opt, micro, f, CLIP, "fp32", loss_fn=completion_loss) for micro, f in zip(batches, FACTORS)
    ]
    return model, stats


# Parameters are compared in float64. In float32 the batched and the single matmuls sum in
# different orders (~1e-7 relative), and Adam turns that into a visible difference on the few
# entries whose gradient is ~0 (cancelling terms): their first update is lr x g / (|g| + eps),
# so a 5% change of a 1e-7 gradient moves the entry by ~1e-3 x lr. In float64 the same runs
# agree to ~1e-13. Losses are compared in both (the loss is float32 cross-entropy either way).
@pytest.mark.parametrize("dtype,fused", [(torch.float64, False), (torch.float64, True), (torch.float32, False)])
def test_stacked_equals_separate_runs(spec, dtype, fused):
    batches = completion_batches()
    model = build_model(spec, seed=0).to(dtype)
    assert {p.infshape.width_mult() for p in model.parameters() if p.infshape.ninf() == 2} == {2.0}
    states, losses = train_stacked(
        model,
        spec,
        LRS,
        batches,
        FACTORS,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        grad_clip=CLIP,
        precision="fp32",
        loss_fn=completion_loss,
        fused=fused,
    )
    assert len(states) == len(LRS) and len(losses) == len(batches) and all(len(r) == len(LRS) for r in losses)

    init = build_model(spec, seed=0).to(dtype).state_dict()
    for k, lr in enumerate(LRS):
        ref, stats = separate_run(spec, lr, batches, dtype, fused)
        torch.testing.assert_close(
            torch.tensor([r[k] for r in losses], dtype=torch.float64),
            torch.tensor([s.loss for s in stats], dtype=torch.float64),
            rtol=1e-4,
            atol=1e-5,
            msg=lambda m: f"lr={lr}: losses differ: {m}",
        )
        if dtype == torch.float64:
            for name, p in ref.state_dict().items():
                torch.testing.assert_close(
                    states[k][name], p, rtol=1e-9, atol=1e-11, msg=lambda m: f"lr={lr} {name}: {m}"
                )
                assert not torch.equal(p, init[name])  # every parameter moved, so every one was compared
        if k == len(LRS) - 1:
            # The largest LR's gradients exceed the clip after the first step, so per-model clipping
            # (not one norm over all models) is part of what the equality checks.
            assert max(s.grad_norm for s in stats[1:]) > CLIP
    # The LRs give different models: the stack did not train one model K times.
    assert (states[0]["transformer.ff_out.weight"] - states[2]["transformer.ff_out.weight"]).abs().max() > 1e-3
    # The starting model is left as it was.
    for name, p in model.state_dict().items():
        assert torch.equal(p, init[name])


def test_per_model_factors_and_errors(spec):
    batches = completion_batches(steps=2, micro=1, seq=12, seed=1)
    model = build_model(spec, seed=0)
    # One factor per model: model 1 at factor 0 never moves (its LR is 0 at every step).
    run = StackedRun(model, spec, [1e-3, 1e-3], weight_decay=0.1, loss_fn=completion_loss)
    for micro in batches:
        stats = run.step(micro, [1.0, 0.0])  # one StepStats per model
        assert len(stats) == 2 and all(math.isfinite(s.loss) for s in stats) and stats[1].lr == 0.0
    for name, p in model.state_dict().items():
        assert torch.equal(run.state_dict(1)[name], p)
    assert not torch.equal(
        run.state_dict(0)["transformer.ff_out.weight"], model.state_dict()["transformer.ff_out.weight"]
    )
    with pytest.raises(ValueError, match="lr_factors"):
        train_stacked(model, spec, [1e-3], batches, [1.0])
    with pytest.raises(ValueError, match="lrs"):
        StackedRun(model, spec, [1e-3, 0.0])
    with pytest.raises(ValueError, match="2 models"):
        run.step(batches[0], [1.0, 1.0, 1.0])


def test_l2_to_pretrained_matches_train_step(spec):
    """The optional pull toward the starting weights (finetune's ``l2_to_pretrained``), per model."""
    batches = completion_batches(steps=3, micro=2, seq=12, seed=2)
    lam, lrs = 0.5, [1e-3, 1e-2]
    states, losses = train_stacked(
        build_model(spec, seed=0).double(),
        spec,
        lrs,
        batches,
        [1.0] * 3,
        weight_decay=0.0,
        loss_fn=completion_loss,
        l2_to_pretrained=lam,
    )
    for k, lr in enumerate(lrs):
        ref = build_model(spec, seed=0).double()
        opt = optimizer_for(ref, FinetuneConfig(lr=lr))
        extra = l2_to(ref, lam)
        stats = [
            train_step(ref, opt, micro, 1.0, 1.0, "fp32", loss_fn=completion_loss, extra_loss=extra)
            for micro in batches
        ]
        assert [r[k] for r in losses] == pytest.approx([s.loss for s in stats], rel=1e-5)
        for name, p in ref.state_dict().items():
            torch.testing.assert_close(states[k][name], p, rtol=1e-9, atol=1e-11)
    assert first_nonfinite(losses, 0) is None and first_nonfinite([[1.0, 2.0], [float("nan"), 3.0]], 0) == 1
