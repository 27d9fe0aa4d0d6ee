"""``overtrain sweep``: fixed-LR rows, the tuned (selected) row, provenance, resume, the default grid."""

import hashlib
import math
from types import SimpleNamespace

import pytest

from overtrain.cli import main
from overtrain.config import ConfigError
from overtrain.evaluate.results import read_rows
from overtrain.finetune import finetune as ft
from overtrain.finetune.sweep import lr_grid, run_sweep, select
from overtrain.train.model import count_params, load_model_spec
from test_finetune import make_c4, make_checkpoint

SMALL = ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256", "eval_batch_size=16"]


def test_sweep_fixed_and_tuned_rows_with_provenance_and_resume(tmp_path, monkeypatch, capsys):
    ckpt, c4 = make_checkpoint(tmp_path / "pre"), make_c4(tmp_path / "c4")
    run_dir = tmp_path / "sweep"
    base_args = [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={run_dir}", f"c4={c4}", *SMALL, "tags.budget=40K"]
    trained = []
    real_train = ft.train
    monkeypatch.setattr(ft, "train", lambda p, progress=True: trained.append(p.cfg.lr) or real_train(p, progress))

    rows = run_sweep("demo", base_args + ["lrs=[1e-3, 0.1]"], progress=False)
    assert trained == [1e-3, 0.1]
    on_disk = read_rows(run_dir / "results.jsonl")
    assert [r["kind"] for r in on_disk] == ["base", "finetune", "finetune", "finetune"]
    base, fixed, chosen = on_disk[0], on_disk[1:3], on_disk[3]
    assert rows == fixed + [chosen]
    assert [r["lr"] for r in fixed] == [1e-3, 0.1] and not any(r["selected"] for r in fixed)
    best = min(fixed, key=lambda r: r["val_id_ppl"])
    assert chosen["selected"] is True and chosen["lr"] == best["lr"] and chosen["selected_from"] == [1e-3, 0.1]
    assert chosen["test_id_ppl"] == best["test_id_ppl"] and chosen["selected_by"] == "val_id_ppl"
    assert fixed[0]["val_id_ppl"] != fixed[1]["val_id_ppl"]

    sha = hashlib.sha256((ckpt / "model.pt").read_bytes()).hexdigest()
    for r in on_disk:
        assert r["checkpoint_sha256"] == sha and r["checkpoint"] == str(ckpt.resolve()) and r["model"] == "tiny"
        assert r["non_embedding_params"] == count_params(load_model_spec("tiny"))["non_embedding_params"]
        assert r["pretrain_tokens"] == 40960 and r["lr_decayed"] is True and r["task"] == "rte" and r["template"] == "default"
        assert r["seed"] == 0 and r["tags"] == {"budget": "40K"}
    for r in fixed:  # the base model is evaluated once; every row carries it
        assert r["val_id_ppl_before"] == base["val_id_ppl"] and r["c4_ppl_before"] == base["c4_ppl"]
        assert (run_dir / f"lr-{r['lr']:.3e}" / "config.yaml").is_file()

    # Resume: nothing is retrained, no row is added (the CLI form, as the grid runner calls it).
    assert main(["sweep", "demo", *base_args, "lrs=[1e-3, 0.1]"]) == 0
    assert trained == [1e-3, 0.1] and len(read_rows(run_dir / "results.jsonl")) == 4
    assert "selected lr" in capsys.readouterr().out
    # A wider grid trains only the new LR and records a new selection over the whole grid.
    rows = run_sweep("demo", base_args + ["lrs=[1e-3, 1e-2, 0.1]"], progress=False)
    assert trained == [1e-3, 0.1, 1e-2] and [r["lr"] for r in rows[:3]] == [1e-3, 1e-2, 0.1]
    after = read_rows(run_dir / "results.jsonl")
    assert len(after) == 6 and after[-1]["selected"] and after[-1]["selected_from"] == [1e-3, 1e-2, 0.1]
    assert after[-1]["lr"] == min(rows[:3], key=lambda r: r["val_id_ppl"])["lr"]


def test_default_grid_is_geometric_to_the_task_maximum():
    task = SimpleNamespace(name="t", spec=SimpleNamespace(max_lr=1e-3))
    grid = lr_grid(ft.FinetuneConfig(), task)  # default: 8 points from 4e-6
    assert len(grid) == 8 and grid[0] == 4e-6 and grid[-1] == 1e-3
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-3)
    cfg = ft.FinetuneConfig(sweep=ft.SweepConfig(max_lr=1e-2, n_lrs=3))  # the finetune config's maximum wins
    assert lr_grid(cfg, task) == [4e-6, 0.0002, 0.01]
    assert lr_grid(ft.FinetuneConfig(lrs=[3e-4, 1e-4]), task) == [3e-4, 1e-4]
    with pytest.raises(ConfigError, match="no maximum LR"):
        lr_grid(ft.FinetuneConfig(), SimpleNamespace(name="t", spec=SimpleNamespace()))
    with pytest.raises(ConfigError, match="distinct positive"):
        lr_grid(ft.FinetuneConfig(lrs=[1e-3, 1e-3]), task)


def test_selection_ignores_diverged_runs():
    rows = [{"lr": 1e-3, "val_id_ppl": 1.9}, {"lr": 1e-1, "val_id_ppl": math.nan}, {"lr": 1e-2, "val_id_ppl": 1.7}, {"lr": 1.0, "val_id_ppl": None}]
    assert select(rows)["lr"] == 1e-2
    assert select([{"lr": 2e-3, "val_id_ppl": 1.5}, {"lr": 1e-3, "val_id_ppl": 1.5}])["lr"] == 1e-3  # tie: smaller LR


def test_intermediate_checkpoint_references(tmp_path):
    """``RUN@tokens=N`` (as the grid passes intermediate checkpoints): the first checkpoint with >= N tokens."""
    import json

    from overtrain.config import CheckpointError
    from overtrain.evaluate.evaluate import resolve_checkpoint_ref

    for step in (5, 10, 20):
        d = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"")
        (d / "meta.json").write_text(json.dumps({"step": step, "tokens": step * 4096, "final": step == 20}))
    run = tmp_path / "run"
    assert resolve_checkpoint_ref(f"{run}@tokens=30000").name == "step-00000010"
    assert resolve_checkpoint_ref(f"{run}@tokens=40K").name == "step-00000010"
    assert resolve_checkpoint_ref(f"{run}@step=6").name == "step-00000010"
    assert resolve_checkpoint_ref(run).name == "step-00000020"  # plain run dir: the final checkpoint
    with pytest.raises(CheckpointError, match="no checkpoint with tokens >= 100000"):
        resolve_checkpoint_ref(f"{run}@tokens=100000")
