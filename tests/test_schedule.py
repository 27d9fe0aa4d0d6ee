"""LR schedule: warmup, exact final LR at the last step of the budget, and muP group composition."""

import math

import pytest
from overtrain.core.config import from_dict
from overtrain.core.errors import ConfigError
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import optimizer_for
from overtrain.core.schedule import Schedule, ScheduleConfig, lr_factor, warmup_steps
from overtrain.core.step import set_lr_factor
from overtrain.train.pretrain_plan import OptimConfig


def factors(total, warmup, decay="cosine", final=0.0):
    return [lr_factor(s, total, warmup, decay, final) for s in range(total)]


@pytest.mark.parametrize("decay", ["cosine", "linear"])
@pytest.mark.parametrize("total,warmup", [(1, 0), (2, 0), (2, 1), (10, 0), (10, 3), (997, 50)])
def test_reaches_final_exactly_at_last_step(decay, total, warmup):
    f = factors(total, warmup, decay)
    assert f[-1] == 0.0  # exactly, not approximately
    assert all(x > 0 for x in f[:-1])
    g = factors(total, warmup, decay, final=0.1)
    assert g[-1] == 0.1 and min(g[warmup:]) == 0.1


def test_warmup_is_linear_then_decay_is_monotone():
    f = factors(100, 10)
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10] == 1.0  # the first decay step is at the peak
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_cosine_and_linear_shapes():
    total, warmup = 101, 0  # p = s / 100
    cos, lin = factors(total, warmup, "cosine"), factors(total, warmup, "linear")
    for s in (25, 50, 75):
        assert cos[s] == pytest.approx(0.5 * (1 + math.cos(math.pi * s / 100)))
        assert lin[s] == pytest.approx(1 - s / 100)
    assert cos[50] == pytest.approx(0.5) and cos[25] > lin[25] and cos[75] < lin[75]


def test_warmup_from_tokens_or_fraction():
    assert warmup_steps(ScheduleConfig(warmup_tokens=1000), 100, 100) == 10
    assert warmup_steps(ScheduleConfig(warmup_tokens=1049), 100, 100) == 10  # rounded to nearest
    assert warmup_steps(ScheduleConfig(warmup_fraction=0.25), 100, 100) == 25
    assert warmup_steps(ScheduleConfig(warmup_tokens=10**9), 5, 100) == 4  # the last step still decays
    with pytest.raises(ConfigError, match="not both"):
        from_dict(ScheduleConfig, {"warmup_tokens": 10, "warmup_fraction": 0.1})


def test_schedule_build_and_decayed_flag():
    sch = Schedule.build(
        ScheduleConfig(warmup_tokens=200, final_lr=1e-4), total_steps=20, tokens_per_step=100, peak_lr=1e-3
    )
    assert sch.warmup_steps == 2 and sch.final_ratio == pytest.approx(0.1)
    assert [s for s in range(1, 21) if sch.decayed_after(s)] == [20]
    with pytest.raises(ValueError, match="final_lr"):
        Schedule.build(ScheduleConfig(final_lr=1.0), 10, 1, peak_lr=0.1)


def test_mup_group_scaling_composes_with_schedule():
    """Each group's LR = its muP-scaled initial LR x the schedule factor; ratios between groups stay."""
    spec = load_model_spec("tiny", ["d_model=128"])  # width_mult 2 over base 64
    model = build_model(spec)
    opt = optimizer_for(model, OptimConfig(lr=1e-2))
    initial = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        want = 1e-2 / 2 if p.infshape.ninf() == 2 else 1e-2  # hidden matrices: lr / width_mult
        assert initial[id(p)] == pytest.approx(want), name
    sch = Schedule.build(ScheduleConfig(warmup_fraction=0.1), 50, 1, 1e-2)
    for step in (0, 3, 25, 49):
        set_lr_factor(opt, sch(step))
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["initial_lr"] * sch(step))
    assert all(g["lr"] == 0.0 for g in opt.param_groups)  # after the last step's factor


def test_weight_decay_groups():
    """Decay on matrices, none on the input embedding (OLMo's default) unless asked."""
    model = build_model(load_model_spec("tiny"))
    wd = {id(p): g["weight_decay"] for g in optimizer_for(model, OptimConfig()).param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert wd[id(names["transformer.wte.weight"])] == 0.0
    assert wd[id(names["transformer.ff_out.weight"])] == 0.1
    assert all(wd[id(p)] > 0 for n, p in names.items() if n != "transformer.wte.weight")
    wd2 = {
        id(p): g["weight_decay"]
        for g in optimizer_for(model, OptimConfig(decay_embeddings=True)).param_groups
        for p in g["params"]
    }
    assert wd2[id(names["transformer.wte.weight"])] == 0.1
