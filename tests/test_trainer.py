"""The one training loop (``train.trainer.Trainer``): its divergence policy as a setting, and the
one optimizer builder's grouping (``core.optim.param_groups``) equal to ``mup.MuAdamW``'s own."""

from dataclasses import replace

import pytest
import torch
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import build_optimizer, group_lrs, optimizer_for, peak_lrs
from overtrain.core.step import StepStats
from overtrain.finetune.finetune import FinetuneConfig
from overtrain.train.pretrain_plan import OptimConfig
from overtrain.train.trainer import Diverged, Hook, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted:
    """A stepper of K "models" whose losses are scripted per step; model k's weight counts its steps."""

    def __init__(self, losses: list[list[float]]):
        self.losses, self.n_models = losses, len(losses[0])
        self.w = [torch.zeros(1) for _ in range(self.n_models)]

    def step(self, micro_batches, lr_factors):
        step = int(micro_batches[0])
        for w in self.w:
            w += 1  # every model of a stack steps, stopped or not (as StackedRun does)
        return [StepStats(loss, 0.0, 1, f) for loss, f in zip(self.losses[step], lr_factors)]

    def state_dict(self, k):
        return {"w": self.w[k]}


class Seen(Hook):
    def __init__(self):
        self.steps, self.closed = [], False

    def after_step(self, ev):
        self.steps.append((ev.step, list(ev.running), ev.input_tokens))

    def close(self):
        self.closed = True


def batches(step):
    return [step], 10 * step


NAN = float("nan")


def test_record_stops_a_diverged_model_and_keeps_its_weights_while_the_others_go_on():
    losses = [[1.0, 1.0], [NAN, 0.5], [NAN, 0.4], [NAN, 0.3]]
    seen = Seen()
    weights = Trainer(Scripted(losses), batches, [lambda s: 1.0] * 2, 4, [seen], "record").run()
    # the hook sees model 0's diverging step (a result), then only model 1
    assert seen.steps == [(0, [0, 1], 0), (1, [0, 1], 10), (2, [1], 20), (3, [1], 30)] and seen.closed
    assert weights[0]["w"].item() == 2 and weights[1]["w"].item() == 4  # model 0: as after its step 1


def test_record_ends_when_every_model_diverged_and_raise_raises_before_any_hook():
    seen = Seen()
    weights = Trainer(Scripted([[1.0], [NAN], [1.0]]), batches, [lambda s: 1.0], 3, [seen], "record").run()
    assert [s for s, _, _ in seen.steps] == [0, 1] and weights[0]["w"].item() == 2
    seen = Seen()
    with pytest.raises(Diverged, match="pre: loss is nan at step 2") as e:
        Trainer(Scripted([[1.0], [NAN], [1.0]]), batches, [lambda s: 1.0], 3, [seen], "raise", "pre").run()
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, FloatingPointError)
    assert [s for s, _, _ in seen.steps] == [0] and seen.closed  # the diverged step reached no hook
    # "continue": every model runs and reaches the hooks at every step, diverged or not
    seen = Seen()
    weights = Trainer(Scripted([[NAN, 1.0]] * 3), batches, [lambda s: 1.0] * 2, 3, [seen], "continue").run()
    assert [r for _, r, _ in seen.steps] == [[0, 1]] * 3 and [w["w"].item() for w in weights] == [3, 3]
    # a resumed run starts at its step, the schedule is read at the step
    seen = Seen()
    trainer = Trainer(Scripted([[1.0]] * 4), batches, [lambda s: s / 4], 4, [seen])
    trainer.run(start=2)
    assert [s for s, _, _ in seen.steps] == [2, 3]
    with pytest.raises(ValueError, match="divergence='ignore'"):
        Trainer(Scripted([[1.0]]), batches, [lambda s: 1.0], 1, divergence="ignore")


@pytest.mark.parametrize("mup", [True, False])
def test_one_builder_groups_as_mup_adamw_and_reads_group_lrs_without_an_optimizer(mup):
    from mup import MuAdamW

    model = build_model(replace(load_model_spec("tiny"), d_model=128), seed=0)  # width_mult 2
    opt = build_optimizer(model.named_parameters(), 1e-3, (0.9, 0.95), 1e-8, 0.1, mup=mup)
    # the former builder: MuAdamW (or AdamW) over the two weight-decay groups, empty groups dropped
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("wte.weight")]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n.endswith("wte.weight")]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref = MuAdamW(groups, **kw) if mup else torch.optim.AdamW(groups, **kw)
    ref_groups = [g for g in ref.param_groups if g["params"]]
    assert len(opt.param_groups) == len(ref_groups) > 1
    for g, r in zip(opt.param_groups, ref_groups):
        assert [id(p) for p in g["params"]] == [id(p) for p in r["params"]]
        assert {k: v for k, v in g.items() if k not in ("params", "initial_lr")} == {
            k: v for k, v in r.items() if k != "params"
        }
    cfg = FinetuneConfig(lr=1e-3, weight_decay=0.1, optimizer="mup_adamw" if mup else "adamw")
    assert peak_lrs(model, cfg) == group_lrs(optimizer_for(model, cfg), model.named_parameters())
    if mup:  # pre-training's optim config: MuAdamW, the embedding decayed only when asked
        wd = {id(p): g["weight_decay"] for g in optimizer_for(model, OptimConfig()).param_groups for p in g["params"]}
        assert wd[id(model.transformer.wte.weight)] == 0.0
