"""``overtrain sweep``: fixed-LR rows, the tuned (selected) row, provenance, resume, the default grid,
and the stacked mode (all LRs in one pass) equal to the sequential one."""

import hashlib
import json
import math
from types import SimpleNamespace

import pytest
from overtrain.cli import main
from overtrain.core.checkpoint import load_model
from overtrain.core.config import ConfigError
from overtrain.core.model import count_params, load_model_spec
from overtrain.core.results import read_rows
from overtrain.finetune import finetune as ft
from overtrain.finetune import sweep
from overtrain.finetune.stacked import StackedRun
from overtrain.finetune.sweep import lr_grid, run_sweep, select
from test_finetune import make_checkpoint

SMALL = ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256", "eval_batch_size=16"]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 2-5x faster on the shared 2-core machine


def test_sweep_fixed_and_tuned_rows_with_provenance_and_resume(tmp_path, monkeypatch, capsys, small_c4):
    ckpt, c4 = make_checkpoint(tmp_path / "pre"), small_c4
    run_dir = tmp_path / "sweep"
    base_args = [
        f"checkpoint={tmp_path / 'pre'}",
        "task=rte",
        f"run_dir={run_dir}",
        f"c4={c4}",
        *SMALL,
        "tags.budget=40K",
    ]
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
        assert (
            r["pretrain_tokens"] == 40960
            and r["lr_decayed"] is True
            and r["task"] == "rte"
            and r["template"] == "default"
        )
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
    rows = [
        {"lr": 1e-3, "val_id_ppl": 1.9},
        {"lr": 1e-1, "val_id_ppl": math.nan},
        {"lr": 1e-2, "val_id_ppl": 1.7},
        {"lr": 1.0, "val_id_ppl": None},
    ]
    assert select(rows)["lr"] == 1e-2
    assert select([{"lr": 2e-3, "val_id_ppl": 1.5}, {"lr": 1e-3, "val_id_ppl": 1.5}])["lr"] == 1e-3  # tie: smaller LR


def test_intermediate_checkpoint_references(tmp_path):
    """``RUN@tokens=N`` (as the grid passes intermediate checkpoints): the first checkpoint with >= N tokens."""
    import json

    from overtrain.core.checkpoint import resolve_checkpoint as resolve_checkpoint_ref
    from overtrain.core.config import CheckpointError

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


# A sweep with final_lr > 0 (so each LR has its own schedule factors), L2 to the pre-trained
# weights and saved weights; 1e30 diverges (its loss is NaN at the second step).
STACK_LRS = [1e-3, 0.1, 1e30]
STACK_ARGS = [
    *SMALL,
    "max_steps=3",
    "schedule.final_lr=5e-4",
    "l2_to_pretrained=0.5",
    "save_weights=true",
    "lrs=[1e-3, 0.1, 1e30]",
]
# Both modes compute in fp32 and differ only in summation order (batched vs single matmuls), ~1e-7
# relative per operation; Adam's normalization amplifies that on entries whose gradient is ~0
# (tests/test_stacked.py), so the weights after a few steps differ by ~1e-6 of their update and
# the metrics by ~1e-7 (measured). 1e-3 leaves that a wide margin yet is far below the gaps
# between LRs (asserted > 1%), so a row recorded for the wrong LR or schedule fails.
RTOL = 1e-3


def close(a, b):
    return (a == pytest.approx(b, rel=RTOL)) if math.isfinite(a) else not math.isfinite(b)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # CPU SDPA under vmap: a loop (correct, slower)
def test_stacked_sweep_equals_sequential_and_resumes(tmp_path, monkeypatch, small_c4):
    make_checkpoint(tmp_path / "pre")
    c4 = small_c4
    args = lambda run_dir: [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={run_dir}", f"c4={c4}", *STACK_ARGS]  # noqa: E731
    trained, stacks = [], []
    real_train = ft.train
    monkeypatch.setattr(ft, "train", lambda p, progress=True: trained.append(p.cfg.lr) or real_train(p, progress))

    class Spy(StackedRun):
        def __init__(self, model, spec, lrs, **kw):
            stacks.append(list(lrs))
            super().__init__(model, spec, lrs, **kw)

    monkeypatch.setattr(sweep, "StackedRun", Spy)

    seq = run_sweep("demo", args(tmp_path / "seq"), progress=False)
    assert trained == STACK_LRS and stacks == []
    assert main(["sweep", "demo", *args(tmp_path / "stk"), "stacked=true"]) == 0
    assert trained == STACK_LRS and stacks == [STACK_LRS]  # one pass, no sequential run
    stk = read_rows(tmp_path / "stk" / "results.jsonl")
    assert [r["kind"] for r in stk] == ["base", "finetune", "finetune", "finetune", "finetune"]
    assert stk[0]["config_hash"] == seq[0]["config_hash"]  # `stacked` is not part of the resume key

    for a, b in zip(seq[:3], stk[1:4]):
        assert set(b) - set(a) == {"stacked", "stack_size"} and set(a) <= set(b)
        assert b["stacked"] is True and b["stack_size"] == 3 and b["lr"] == a["lr"]
        for k in (
            "steps",
            "diverged",
            "finetune_lr_decayed",
            "train_tokens",
            "train_input_tokens",
            "total_steps",
            "val_acc",
            "test_acc",
        ):
            assert a[k] == b[k], (a["lr"], k)
        for k in (
            "train_loss_first",
            "train_loss_last",
            "train_loss_last_epoch",
            "val_id_ppl",
            "test_id_ppl",
            "c4_ppl_after",
            "val_id_ppl_before",
        ):
            assert close(a[k], b[k]), (a["lr"], k, a[k], b[k])
        la, lb = (
            [json.loads(x) for x in (tmp_path / d / f"lr-{a['lr']:.3e}" / "train_log.jsonl").read_text().splitlines()]
            for d in ("seq", "stk")
        )
        assert [(r["step"], r["lr"], r["tokens"]) for r in la] == [(r["step"], r["lr"], r["tokens"]) for r in lb]
        assert all(close(x["loss"], y["loss"]) and close(x["grad_norm"], y["grad_norm"]) for x, y in zip(la, lb))
    # Schedules end at final_lr for every LR (per-model factors), and LRs give distinct results.
    last_lr = [
        json.loads((tmp_path / "stk" / f"lr-{lr:.3e}" / "train_log.jsonl").read_text().splitlines()[-1])["lr"]
        for lr in STACK_LRS[:2]
    ]
    assert last_lr == pytest.approx([5e-4, 5e-4])
    good = [r for r in stk[1:4] if not r["diverged"]]
    assert len(good) == 2 and abs(good[0]["val_id_ppl"] / good[1]["val_id_ppl"] - 1) > 0.01
    # The diverged LR: stopped where its loss went NaN, non-finite metrics, never selected.
    bad = stk[3]
    assert (
        bad["lr"] == 1e30
        and bad["diverged"]
        and bad["steps"] == seq[2]["steps"] < 3
        and not math.isfinite(bad["val_id_ppl"])
    )
    assert stk[4]["selected"] and stk[4]["lr"] == seq[3]["lr"] != 1e30
    # Saved weights: each LR's model, equal to the sequential run's up to fp order.
    theta0 = load_model(tmp_path / "pre")[0].state_dict()
    for lr in STACK_LRS[:2]:
        wa, wb = (load_model(tmp_path / d / f"lr-{lr:.3e}")[0].state_dict() for d in ("seq", "stk"))
        for n, t in wa.items():
            assert (wb[n] - t).norm() <= RTOL * (t - theta0[n]).norm(), (lr, n)

    # Resume: nothing retrained, no row added.
    assert run_sweep("demo", args(tmp_path / "stk") + ["stacked=true"], progress=False)[:3] == stk[1:4]
    assert len(stacks) == 1 and len(read_rows(tmp_path / "stk" / "results.jsonl")) == 5
    # A wider grid stacks only the new LR; killed mid-stack, it leaves no row; rerun, it adds two.
    calls = []

    def killed(self, micro, factor):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-stack")
        return StackedRun.step(self, micro, factor)

    monkeypatch.setattr(Spy, "step", killed)
    wider = args(tmp_path / "stk") + ["stacked=true", "lrs=[1e-3, 1e-2, 0.1, 1e30]"]
    with pytest.raises(RuntimeError, match="killed"):
        run_sweep("demo", wider, progress=False)
    assert stacks[-1] == [1e-2] and len(read_rows(tmp_path / "stk" / "results.jsonl")) == 5
    monkeypatch.setattr(Spy, "step", StackedRun.step)
    rows = run_sweep("demo", wider, progress=False)
    assert stacks[-1] == [1e-2] and len(stacks) == 3 and trained == STACK_LRS
    after = read_rows(tmp_path / "stk" / "results.jsonl")
    assert (
        len(after) == 7
        and after[5]["lr"] == 1e-2
        and after[5]["stack_size"] == 1
        and after[6]["selected_from"] == [1e-3, 1e-2, 0.1, 1e30]
    )
    assert [r["lr"] for r in rows[:4]] == [1e-3, 1e-2, 0.1, 1e30]
