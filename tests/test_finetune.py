"""``overtrain finetune``: one real run on the tiny model (RTE, C4 sample), its row, and bad input."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from overtrain.cli import main
from overtrain.core.checkpoint import save_model_checkpoint
from overtrain.core.errors import CheckpointError, ConfigError, DataError
from overtrain.core.jsonl import read_records
from overtrain.core.likelihood import lm_loss
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.optim import optimizer_for
from overtrain.core.paths import data_root
from overtrain.data.encode import collate
from overtrain.finetune import finetune as ft
from overtrain.finetune.finetune_config import load_finetune_config
from tolerances import loglik_rtol

# A few examples, a few steps, a small C4 prefix: seconds on CPU.
SMALL = ["max_examples={train: 24, validation: 8, test: 8}", "c4_max_tokens=256", "eval_batch_size=16"]


def make_checkpoint(root: Path, spec=None, step: int = 10) -> Path:
    spec = spec or load_model_spec("tiny")
    model = build_model(spec, seed=0)
    meta = {
        "step": step,
        "tokens": step * 4096,
        "budget_tokens": step * 4096,
        "final": True,
        "lr_decayed": True,
        "kind": "pretrain",
    }
    return save_model_checkpoint(root / "checkpoints", step, model, spec, meta)


def make_c4(out: Path) -> Path:
    c4 = data_root() / "c4"
    assert (
        main(
            [
                "prepare-data",
                f"train={c4 / 'c4-sample.02.json.gz'}",
                f"val={c4 / 'c4-sample.01.json.gz'}",
                f"out={out}",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return {"ckpt": make_checkpoint(root / "pre"), "c4": make_c4(root / "c4"), "root": root}


def overrides(env, run_dir, *extra):
    return [f"checkpoint={env['ckpt']}", "task=rte", f"run_dir={run_dir}", f"c4={env['c4']}", *SMALL, *extra]


def test_finetune_cli_runs_evaluates_and_records(env, capsys):
    run_dir = env["root"] / "run"
    assert main(["finetune", "demo", *overrides(env, run_dir, "lr=0.1", "seed=3", "save_weights=true")]) == 0
    (row,) = read_records(run_dir / "results.jsonl")
    assert (
        row["kind"] == "finetune" and row["task"] == "rte" and row["template"] == "default" and row["selected"] is False
    )
    assert row["lr"] == 0.1 and row["seed"] == 3 and row["model"] == "tiny" and row["pretrain_tokens"] == 40960
    assert row["lr_decayed"] is True and row["checkpoint"] == str(env["ckpt"].resolve())
    assert row["steps"] == 3 and row["train_examples"] == 24 and row["train_tokens"] == 24  # one label token each
    assert row["n_examples"] == {"train": 24, "validation": 8, "test": 8}
    assert sum(row["truncated"].values()) > 0  # RTE prompts exceed the tiny model's 128-token context
    for key in (
        "val_id_ppl",
        "test_id_ppl",
        "val_acc",
        "test_acc",
        "val_label_token_acc",
        "c4_ppl_before",
        "c4_ppl_after",
        "val_id_ppl_before",
        "test_id_ppl_before",
        "id_ppl_before",
    ):
        assert isinstance(row[key], float), key
    assert row["c4_ppl_after"] != row["c4_ppl_before"] and row["c4_tokens"] == 256
    # The loss is on the label token only: from ~ln(50304) at init it drops fast at this LR.
    assert row["train_loss_first"] > 10 and row["train_loss_last"] < row["train_loss_first"] - 4
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["lr"] == 0.1 and cfg["task"] == "rte" and cfg["max_examples"]["train"] == 24
    assert "ID ppl" in capsys.readouterr().out

    # The saved weights evaluate to exactly the row's after-metrics; the base checkpoint to its before-metrics.
    out = env["root"] / "eval.jsonl"
    for ckpt in (run_dir, env["ckpt"]):
        assert (
            main(
                [
                    "evaluate",
                    str(ckpt),
                    "tasks=rte",
                    f"c4={env['c4']}",
                    "c4_max_tokens=256",
                    "max_examples=8",
                    f"results={out}",
                ]
            )
            == 0
        )
    after, base = read_records(out)
    assert after["kind"] == "eval" and after["checkpoint_kind"] == "finetune" and base["kind"] == "base"
    # The same weights and examples in other batch shapes: perplexities agree on the log scale to
    # the fp32 rounding bound (tests/tolerances.py); accuracies are argmaxes and agree exactly.
    rtol = loglik_rtol(load_model_spec("tiny"))
    for key in ("val_id_ppl", "test_id_ppl", "val_acc", "test_label_token_acc", "c4_ppl"):
        want_after = row["c4_ppl_after"] if key == "c4_ppl" else row[key]
        for got, want in ((after[key], want_after), (base[key], row[f"{key}_before"])):
            if key.endswith("ppl"):
                assert math.log(got) == pytest.approx(math.log(want), rel=rtol), key
            else:
                assert got == want, key


def test_no_weights_unless_asked_and_no_row_for_a_failed_run(env, monkeypatch):
    run_dir = env["root"] / "crash"

    def boom(p, progress=True):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(ft, "train", boom)
    cfg = load_finetune_config("demo", overrides(env, run_dir))
    with pytest.raises(RuntimeError):
        ft.run_finetune(cfg)
    assert not (run_dir / "results.jsonl").exists() and not (run_dir / "checkpoints").exists()


def test_completion_loss_equals_the_standard_lm_loss(env):
    cfg = load_finetune_config("demo", overrides(env, env["root"] / "unused"))
    p = ft.prepare(cfg)
    x, y = collate(p.encoded["train"].examples[:6], p.spec.pad_token_id)
    s1, n1 = ft.completion_loss(p.model, x, y)
    s2, n2 = lm_loss(p.model, x, y)
    assert int(n1) == int(n2) == 6 and s1.item() == pytest.approx(s2.item(), rel=1e-5)
    g1 = torch.autograd.grad(s1, p.model.transformer.ff_out.weight)[0]
    g2 = torch.autograd.grad(lm_loss(p.model, x, y)[0], p.model.transformer.ff_out.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_l2_to_pretrained_keeps_weights_close(env):
    cfg = load_finetune_config("demo", overrides(env, env["root"] / "l2", "lr=1e-2", "max_steps=3"))
    p = ft.prepare(cfg)
    Path(cfg.run_dir).mkdir(parents=True)
    theta0 = {k: v.clone() for k, v in p.model.state_dict().items()}

    def drift(lam):
        p.model.load_state_dict(theta0)
        ft.train(dataclasses.replace(p, cfg=dataclasses.replace(cfg, l2_to_pretrained=lam)), progress=False)
        with torch.no_grad():
            return sum(((q - theta0[n]) ** 2).sum().item() for n, q in p.model.named_parameters())

    assert drift(100.0) < 0.5 * drift(0.0)


def test_mup_optimizer_switch():
    spec = load_model_spec("tiny", ["d_model=128"])  # width_mult 2: muP halves the hidden-matrix LR
    model = build_model(spec)
    cfg = ft.FinetuneConfig(lr=1e-3)
    mu = optimizer_for(model, cfg)
    assert sorted({g["lr"] for g in mu.param_groups}) == [5e-4, 1e-3]
    plain = optimizer_for(model, ft.FinetuneConfig(lr=1e-3, mup_optimizer=False))
    assert type(plain) is torch.optim.AdamW and {g["lr"] for g in plain.param_groups} == {1e-3}
    # weight decay skips the input embedding
    wte = model.transformer.wte.weight
    assert all(g["weight_decay"] == 0 for g in mu.param_groups if any(q is wte for q in g["params"]))


def test_bad_input_fails_before_any_work(env, tmp_path):
    def check(exc, match, *extra, task="rte"):
        run_dir = tmp_path / "never"
        args = [a for a in overrides(env, run_dir, *extra) if not a.startswith("task=")] + [f"task={task}"]
        with pytest.raises(exc, match=match):
            ft.run_finetune(load_finetune_config("demo", args))
        assert not run_dir.exists()

    check(ConfigError, "no_such_task", task="no_such_task")
    check(CheckpointError, "differs from the configured one", "model=olmo-15m")
    check(CheckpointError, "not found", "checkpoint=/nonexistent/ckpt")
    check(DataError, "not found", "c4=/nonexistent/c4")
    check(ConfigError, "at least 2", "max_steps=1")
    check(ConfigError, "lr=", "lr=-1")
    # a checkpoint whose vocabulary is not the tokenizer's
    other = load_model_spec("tiny", ["vocab_size=50000", "embedding_size=50048"])
    bad = make_checkpoint(tmp_path / "other", other)
    check(CheckpointError, "another vocabulary", f"checkpoint={bad}")
    # the CLI prints such errors without a traceback and exits 2
    assert main(["finetune", "demo", *overrides(env, tmp_path / "never", "model=olmo-15m")]) == 2
