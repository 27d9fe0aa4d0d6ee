"""`overtrain pretrain` on real C4 tokens with the tiny model: exact steps and LR decay, outputs
(summary.json, metrics.jsonl, config.yaml, checkpoints), epochs, and bad input refused up front."""

import json
import math

import pytest
import torch
from overtrain import cli
from overtrain.core.checkpoint import list_checkpoints, load_model
from overtrain.core.config import load_config
from overtrain.core.paths import data_root
from overtrain.train.pretrain import PretrainConfig, pretrain
from overtrain.train.pretrain_plan import config_differences
from overtrain.train.pretrain_run import DataRepeatWarning
from tolerances import loglik_rtol

C4 = data_root() / "c4"


def prepare(out, max_docs):
    argv = [
        "prepare-data",
        f"out={out}",
        f"train={C4 / 'c4-sample.00000-of-00001.json.gz'}",
        f"val={C4 / 'c4-sample.01.json.gz'}",
        f"max_docs={max_docs}",
    ]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("c4") / "prepared", 40)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: oversubscribed threads are several times slower
    yield
    torch.set_num_threads(n)


def overrides(data_dir, run_dir, **kw):
    """A tiny run: 4 sequences x 32 tokens = 128 tokens per step."""
    base = {
        "data.dir": data_dir,
        "run_dir": run_dir,
        "budget_tokens": 1000,
        "seq_len": 32,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "eval.val_tokens": 256,
        "eval.every_steps": 4,
        "eval.batch_size": 8,
        "log.every_steps": 1,
        "checkpoint.every_steps": 2,
        "checkpoint.keep_last": 1,
        "checkpoint.at_tokens": "[400]",
        "schedule.warmup_tokens": 256,
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(args, capsys=None):
    code = cli.main(["pretrain", "demo", *args])
    err = capsys.readouterr().err if capsys else ""
    return code, err


def test_run_outputs(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    assert cli.main(["pretrain", "demo", *overrides(data_dir, run_dir)]) == 0

    # Steps: round(1000 / 128) = 8 (7.8 rounds up); realized tokens recorded.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["tokens_seen"] == 1024 and summary["budget_tokens"] == 1000
    assert summary["final_lr"] == 0.0 and summary["model"] == "tiny" and summary["non_embedding_params"] == 81920
    assert 1 < summary["c4_val_ppl"] < 60000 and summary["wall_time_s"] > 0

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "c4_val_ppl" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert {"step", "tokens", "lr", "loss", "grad_norm", "tokens_per_sec"} <= set(train_rows[0])
    assert "mfu" not in train_rows[0]  # CPU: no peak FLOP/s to compare with
    assert train_rows[-1]["lr"] == 0.0 and train_rows[0]["lr"] == pytest.approx(1e-2 / 2)  # warmup 2 steps
    assert all(r["lr"] > 0 for r in train_rows[:-1])
    assert [r["step"] for r in eval_rows] == [4, 8]
    assert eval_rows[-1]["c4_val_ppl"] == summary["c4_val_ppl"] and eval_rows[-1]["c4_val_tokens"] == 256
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]

    # config.yaml is the resolved config and loads back to the same object.
    saved = load_config(PretrainConfig, run_dir / "config.yaml")
    assert saved.seq_len == 32 and saved.budget_tokens == 1000 and saved.checkpoint.at_tokens == [400]
    cfg = load_config(PretrainConfig, "demo", overrides(data_dir, run_dir), kind="pretrain")
    assert config_differences(vars_dict(saved), vars_dict(cfg)) == {}

    # Checkpoints: the newest periodic (keep_last 1), the 400-token mark (step round(400/128) = 3), and the final.
    ckpts = {p.name: json.loads((p / "meta.json").read_text()) for p in list_checkpoints(run_dir / "checkpoints")}
    assert sorted(ckpts) == ["step-00000003", "step-00000006", "step-00000008"]
    assert ckpts["step-00000003"]["reasons"] == ["token_mark"] and ckpts["step-00000003"]["tokens"] == 384
    assert [m["lr_decayed"] for m in ckpts.values()] == [False, False, True]
    final = ckpts["step-00000008"]
    assert final["final"] and final["kind"] == "pretrain" and final["budget_tokens"] == 1000 and final["seed"] == 0
    assert final["c4_val_ppl"] == summary["c4_val_ppl"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    state = torch.load(run_dir / "checkpoints/step-00000006/state.pt", weights_only=True)
    assert (
        state["step"] == 6
        and state["samples_seen"] == 24
        and set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    )

    # The weights load into a plain ai2-olmo OLMo, and the final checkpoint reproduces the final ppl.
    from olmo.model import OLMo
    from overtrain.core.model import olmo_config

    model, spec, _ = load_model(run_dir)
    OLMo(olmo_config(spec), init_params=False).load_state_dict(
        torch.load(run_dir / "checkpoints/step-00000008/model.pt")
    )
    from overtrain.core.likelihood import perplexity
    from overtrain.data.c4 import open_prepared

    ppl = perplexity(model, open_prepared(data_dir).tokens("val"), 32, max_tokens=256, vocab_size=spec.vocab_size)[
        "ppl"
    ]
    # Another batch size than the trainer's evaluation: equal up to fp32 rounding, on the log scale.
    assert math.log(ppl) == pytest.approx(math.log(summary["c4_val_ppl"]), rel=loglik_rtol(spec))


def vars_dict(cfg):
    from overtrain.core.config import to_dict

    return to_dict(cfg)


def test_finished_run_dir_needs_overwrite_and_config_must_match(tmp_path, data_dir, capsys):
    run_dir = tmp_path / "run"
    args = overrides(data_dir, run_dir, budget_tokens=256, **{"checkpoint.at_tokens": "[]"})
    assert run_cli(args)[0] == 0
    first = json.loads((run_dir / "summary.json").read_text())
    code, err = run_cli(args, capsys)
    assert code == 2 and "summary.json" in err and "overwrite=true" in err and "Traceback" not in err

    # Killed after the final checkpoint but before summary.json: the rerun only writes the summary.
    (run_dir / "summary.json").unlink()
    code, err = run_cli(args + ["seed=1"], capsys)
    assert code == 2 and "config.yaml" in err and "seed: 0 (saved) vs 1 (now)" in err
    assert run_cli(args + ["log.every_steps=5", "device=cpu"])[0] == 0  # logging/device may change
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["c4_val_ppl"] == first["c4_val_ppl"] and again["resumes"] == 1

    assert run_cli(args + ["seed=1", "overwrite=true"])[0] == 0
    third = json.loads((run_dir / "summary.json").read_text())
    assert third["seed"] == 1 and third["resumes"] == 0 and third["c4_val_ppl"] != first["c4_val_ppl"]


def test_budget_beyond_corpus_reshuffles_epochs_with_one_warning(tmp_path):
    small = prepare(tmp_path / "small", 12)  # docs 0-9 are validation copies: 2 docs, ~55 windows of 33
    cfg = load_config(
        PretrainConfig,
        "demo",
        overrides(
            small, tmp_path / "run", budget_tokens=128 * 20, **{"checkpoint.at_tokens": "[]", "eval.every_steps": 0}
        ),
        kind="pretrain",
    )
    with pytest.warns(DataRepeatWarning, match=r"needs \d\.\d\d epochs") as record:
        summary = pretrain(cfg)
    assert len([w for w in record if issubclass(w.category, DataRepeatWarning)]) == 1
    assert 1 < summary["epochs"] < 2 and summary["steps"] == 20


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"data.dir": "/nonexistent/c4"}, "/nonexistent/c4: prepared data directory not found"),
        ({"model_overrides": "{vocab_size: 50000}"}, "vocab_size is 50280"),
        ({"budget_tokens": 100}, "budget_tokens=100 is smaller than one step"),
        ({"optim.lrr": 1}, "unknown key 'optim.lrr' (did you mean 'lr'?)"),
        ({"global_batch_size": 6, "micro_batch_size": 4}, "global_batch_size=6 is not divisible"),
        ({"checkpoint.at_tokens": "[5000]"}, "checkpoint.at_tokens: 5,000 is outside"),
        ({"seq_len": 4096}, "seq_len=4096 exceeds model 'tiny' context 128"),
        ({"log.wandb": "true"}, None),  # an error only when wandb is not installed
    ],
)
def test_bad_input_is_one_clear_error_before_training(tmp_path, data_dir, capsys, extra, needle):
    if needle is None:
        import importlib.util

        if importlib.util.find_spec("wandb"):
            pytest.skip("wandb is installed")
        needle = "log.wandb=true but the 'wandb' package is not installed"
    run_dir = tmp_path / "run"
    code, err = run_cli(overrides(data_dir, run_dir, **extra), capsys)
    assert code == 2, err
    assert needle in err and "Traceback" not in err
    assert any(where in err for where in ("configs/pretrain/demo.yaml", "command line", "/nonexistent/c4", "meta.json"))
    assert not run_dir.exists()  # nothing was started


def test_paper_grid_configs(tmp_path, data_dir):
    """18 generated configs (up to date with their generator) that plan the protocol's runs."""
    import subprocess
    import sys

    from overtrain.core.paths import REPO_ROOT
    from overtrain.train.pretrain_plan import plan_run

    gen = REPO_ROOT / "configs/pretrain/generate.py"
    assert subprocess.run([sys.executable, str(gen), "--check"]).returncode == 0
    for size, d_model in (("15m", 320), ("30m", 448), ("90m", 800)):
        for budget, tokens in (("4B", 4 * 10**9), ("8B", 8 * 10**9), ("128B", 128 * 10**9)):
            cfg = load_config(
                PretrainConfig,
                f"olmo-{size}-{budget}",
                [f"data.dir={data_dir}", f"run_dir={tmp_path}/r"],
                kind="pretrain",
            )
            assert cfg.budget_tokens == tokens and cfg.optim.betas == (0.9, 0.95) and cfg.schedule.final_lr == 0.0
            plan = plan_run(cfg)
            assert plan.spec.d_model == d_model and plan.tokens_per_step == 256 * 1024
            assert plan.steps == round(tokens / 262144) and plan.schedule(plan.steps - 1) == 0.0
            # Token marks land on the step where the smaller budget's own run ends.
            assert sorted(plan.mark_steps) == [round(t / 262144) for t in (4e9, 8e9, 16e9, 32e9, 64e9) if t < tokens]


def test_plan_checks_world_size_and_yaml_typos(tmp_path, data_dir):
    from overtrain.core.errors import ConfigError
    from overtrain.train.pretrain_plan import plan_run

    cfg = load_config(PretrainConfig, "demo", overrides(data_dir, tmp_path / "r", micro_batch_size=2), kind="pretrain")
    assert plan_run(cfg, world_size=2).steps == 8
    with pytest.raises(
        ConfigError, match=r"global_batch_size=4 is not divisible by world_size x micro_batch_size = 4 x 2"
    ):
        plan_run(cfg, world_size=4)
    bad = tmp_path / "typo.yaml"
    bad.write_text("model: tiny\nbudget_token: 4B\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*unknown key 'budget_token' \(did you mean 'budget_tokens'\?\)"):
        load_config(PretrainConfig, bad, kind="pretrain")
