"""The fine-tuning optimizer, a marked choice (``optimizer: mup_adamw | adamw``): its former spelling
(``mup_optimizer``) still loads with the same resume identity, and rows record the effective peak
LR per parameter group (``lr_groups``)."""

from dataclasses import replace

import pytest
from overtrain.core.errors import ConfigError
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import build_optimizer, group_lrs
from overtrain.finetune import finetune as ft
from overtrain.finetune.finetune_config import load_finetune_config
from overtrain.finetune.sweep import run_sweep
from test_finetune import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# config_hash of configs/finetune/{demo,default}.yaml as computed before `optimizer` existed (with
# `mup_optimizer: true` / overridden to false): results recorded then must keep resuming.
BEFORE = {
    ("demo", True): "539be9d788ac2004",
    ("demo", False): "881e0826bb50b7f3",
    ("default", True): "e018f86e913d4c91",
    ("default", False): "152fafcacafa18d4",
}


@pytest.mark.parametrize("name", ["demo", "default"])
def test_optimizer_setting_and_its_former_spelling_keep_the_identity(name):
    assert load_finetune_config(name).optimizer == "mup_adamw"  # the marked default
    for mup in (True, False):
        new = load_finetune_config(name, [f"optimizer={'mup_adamw' if mup else 'adamw'}"])
        old = load_finetune_config(name, [f"mup_optimizer={str(mup).lower()}"])
        assert new.mup is mup and old.optimizer == new.optimizer and old.mup_optimizer is None
        assert ft.config_hash(new) == ft.config_hash(old) == BEFORE[name, mup]
    with pytest.raises(ConfigError, match="contradicts mup_optimizer=true"):
        load_finetune_config(name, ["optimizer=adamw", "mup_optimizer=true"])
    with pytest.raises(ConfigError, match="optimizer"):
        load_finetune_config(name, ["optimizer=sgd"])


def test_group_lrs_name_the_mup_scaled_groups():
    spec = replace(load_model_spec("tiny"), d_model=128)  # width_mult 2 over the base width 64
    model = build_model(spec, seed=0)
    mup = group_lrs(build_optimizer(model.named_parameters(), 1e-3, mup=True), model.named_parameters())
    # MuAdamW: hidden matrices at lr / width_mult; the embedding and the readout keep lr
    assert mup == {"blocks": pytest.approx(5e-4, rel=1e-12), "ff_out": 1e-3, "wte": 1e-3}
    plain = group_lrs(build_optimizer(model.named_parameters(), 1e-3, mup=False), model.named_parameters())
    assert set(plain.values()) == {1e-3} and "wte" in plain  # AdamW: one LR (groups by weight decay only)


def test_rows_record_the_optimizer_and_its_group_lrs(tmp_path, small_c4):
    make_checkpoint(tmp_path / "pre", replace(load_model_spec("tiny"), d_model=128))
    small = ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256", "max_steps=2", "lrs=[2e-3]"]
    rows = {}
    for opt in ("mup_adamw", "adamw"):
        args = [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={tmp_path / opt}", f"c4={small_c4}"]
        rows[opt] = run_sweep("demo", [*args, *small, f"optimizer={opt}"], progress=False)[0]
    assert rows["mup_adamw"]["optimizer"] == "mup_adamw" and rows["mup_adamw"]["mup_optimizer"] is True
    assert rows["mup_adamw"]["lr_groups"] == {"blocks": pytest.approx(1e-3), "ff_out": 2e-3, "wte": 2e-3}
    assert rows["adamw"]["optimizer"] == "adamw" and rows["adamw"]["mup_optimizer"] is False
    assert set(rows["adamw"]["lr_groups"].values()) == {2e-3}
    assert rows["adamw"]["config_hash"] != rows["mup_adamw"]["config_hash"]
    assert rows["adamw"]["val_id_ppl"] != rows["mup_adamw"]["val_id_ppl"]  # the choice changes the result
