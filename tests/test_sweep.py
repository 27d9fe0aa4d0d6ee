"""``overtrain sweep``: fixed-LR rows, the tuned (selected) row, provenance, resume, the default grid,
and the stacked mode (all LRs in one pass) equal to the sequential one."""

import hashlib
import json
import math
from types import SimpleNamespace

import pytest
from overtrain.cli import main
from overtrain.core.checkpoint import load_model
from overtrain.core.errors import ConfigError
from overtrain.core.jsonl import read_records
from overtrain.core.model_spec import count_params, load_model_spec
from overtrain.finetune import finetune as ft
from overtrain.finetune import sweep
from overtrain.finetune.finetune_config import SweepConfig
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
    on_disk = read_records(run_dir / "results.jsonl")
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
    assert trained == [1e-3, 0.1] and len(read_records(run_dir / "results.jsonl")) == 4
    assert "selected lr" in capsys.readouterr().out
    # A wider grid trains only the new LR and records a new selection over the whole grid.
    rows = run_sweep("demo", base_args + ["lrs=[1e-3, 1e-2, 0.1]"], progress=False)
    assert trained == [1e-3, 0.1, 1e-2] and [r["lr"] for r in rows[:3]] == [1e-3, 1e-2, 0.1]
    after = read_records(run_dir / "results.jsonl")
    assert len(after) == 6 and after[-1]["selected"] and after[-1]["selected_from"] == [1e-3, 1e-2, 0.1]
    assert after[-1]["lr"] == min(rows[:3], key=lambda r: r["val_id_ppl"])["lr"]


def test_default_grid_is_geometric_to_the_task_maximum():
    task = SimpleNamespace(name="t", spec=SimpleNamespace(max_lr=1e-3))
    grid = lr_grid(ft.FinetuneConfig(), task)  # default: 8 points from 4e-6
    assert len(grid) == 8 and grid[0] == 4e-6 and grid[-1] == 1e-3
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-3)
    cfg = ft.FinetuneConfig(sweep=SweepConfig(max_lr=1e-2, n_lrs=3))  # the finetune config's maximum wins
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
    from overtrain.core.errors import CheckpointError

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
    stk = read_records(tmp_path / "stk" / "results.jsonl")
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
    assert len(stacks) == 1 and len(read_records(tmp_path / "stk" / "results.jsonl")) == 5
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
    assert stacks[-1] == [1e-2] and len(read_records(tmp_path / "stk" / "results.jsonl")) == 5
    monkeypatch.setattr(Spy, "step", StackedRun.step)
    rows = run_sweep("demo", wider, progress=False)
    assert stacks[-1] == [1e-2] and len(stacks) == 3 and trained == STACK_LRS
    after = read_records(tmp_path / "stk" / "results.jsonl")
    assert (
        len(after) == 7
        and after[5]["lr"] == 1e-2
        and after[5]["stack_size"] == 1
        and after[6]["selected_from"] == [1e-3, 1e-2, 0.1, 1e30]
    )
    assert [r["lr"] for r in rows[:4]] == [1e-3, 1e-2, 0.1, 1e30]


def _bowl(opt: float, trained: list):
    """``row_of`` for ``extend_grid``: validation perplexity 2 + (log10 lr - log10 opt)^2 (lowest at ``opt``)."""

    def row_of(lr, added):
        trained.append((lr, added))
        return {"lr": lr, "val_id_ppl": 2 + (math.log10(lr) - math.log10(opt)) ** 2}

    return row_of


@pytest.mark.parametrize(
    "opt, cap, want_added, want_stop",
    [
        (5e-5, 2, [1e-5], None),  # low end: 1e-5 added, then 1e-4 is inside the grid as run
        (2e-5, 2, [1e-5, 1e-6], None),  # 1e-5 best and the end: 1e-6 added, 1e-5 now inside
        (1e-9, 2, [1e-5, 1e-6], "max_extensions=2 reached"),  # still the end after the cap
        (1.0, 1, [0.1], "max_extensions=1 reached"),  # high end, ratio 10 there
        (1e-3, 2, [], None),  # inside: no extension
    ],
)
def test_extend_grid_steps_past_the_end_with_the_grids_ratio(opt, cap, want_added, want_stop):
    trained = []
    grid, added, stop = sweep.extend_grid([1e-4, 1e-3, 1e-2], _bowl(opt, trained), True, cap)
    assert added == pytest.approx(want_added, rel=1e-9) and stop == want_stop
    assert grid[:3] == [1e-4, 1e-3, 1e-2] and grid[3:] == added
    assert {lr for lr, a in trained if a} == set(added)  # only the added LRs are flagged as added
    rows = [_bowl(opt, [])(lr, False) for lr in grid]
    assert sweep.edge(grid, select(rows)["lr"]) == (None if want_stop is None else sweep.edge(grid, grid[-1]))


def test_extend_grid_off_uneven_ratio_floor_and_divergence():
    trained = []
    # off: the grid stays, the reason is recorded
    assert sweep.extend_grid([1e-4, 1e-3], _bowl(1e-9, trained), False, 2) == ([1e-4, 1e-3], [], "off")
    # the ratio at the end used: 1e-4 * 1e-4 / 4e-4 = 2.5e-5 at the low end, 1e-2 * 1e-2 / 1e-3 = 0.1 at the high one
    assert sweep.past_end([4e-4, 1e-4, 1e-3, 1e-2], "low") == 2.5e-5
    assert sweep.past_end([4e-4, 1e-4, 1e-3, 1e-2], "high") == 0.1
    # never below schedule.final_lr
    grid, added, stop = sweep.extend_grid([1e-4, 1e-3], _bowl(1e-9, []), True, 2, floor=5e-5)
    assert (added, stop) == ([], "schedule.final_lr")
    # every LR diverged (NaN): the smallest is "selected" but nothing is extended for it
    nan = lambda lr, added: {"lr": lr, "val_id_ppl": math.nan}  # noqa: E731
    assert sweep.extend_grid([1e-4, 1e-3], nan, True, 2)[1:] == ([], "no finite validation perplexity")
    # a single LR is not a grid: no end to extend
    assert sweep.extend_grid([1e-3], _bowl(1e-9, []), True, 2) == ([1e-3], [], None)


def _replay(path, selected):
    """``extend_grid`` replayed on the rows recorded in ``path``: what ``selected`` must say."""
    plain = {r["lr"]: r for r in read_records(path) if r["kind"] == "finetune" and not r["selected"]}
    asked = [lr for lr in selected["selected_from"] if lr not in selected["lr_extensions"]]
    return sweep.extend_grid(asked, lambda lr, added: plain[lr], True, 2)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # CPU SDPA under vmap (stacked)
def test_sweep_extends_its_grid_at_either_end_resumes_and_switches_off(tmp_path, monkeypatch, small_c4):
    make_checkpoint(tmp_path / "pre")
    trained = []
    real_train = ft.train
    monkeypatch.setattr(ft, "train", lambda p, progress=True: trained.append(p.cfg.lr) or real_train(p, progress))
    args = lambda d, lrs: [
        f"checkpoint={tmp_path / 'pre'}",
        "task=rte",
        f"run_dir={tmp_path / d}",
        f"c4={small_c4}",
        *SMALL,
        f"lrs={lrs}",
        "sweep.extend=true",
    ]  # noqa: E731

    # Low end: on this random-init model small LRs fit RTE's validation best (1e-4 beats 1e-3 by ~1.5%),
    # so 1e-5 = 1e-4 * 1e-4 / 1e-3 is added, then whatever the selection asks for, at most 2 LRs.
    rows = run_sweep("demo", args("low", "[1e-4, 1e-3]"), progress=False)
    fixed, chosen = rows[:-1], rows[-1]
    added = chosen["lr_extensions"]
    assert added[0] == 1e-5 and len(added) <= 2 and trained == [1e-4, 1e-3, *added]
    assert [r["lr"] for r in fixed] == [1e-4, 1e-3, *added]
    assert [r.get("extended_lr", False) for r in fixed] == [False, False] + [True] * len(added)
    assert chosen["lr_extended"] is True and chosen["selected_from"] == sorted([1e-4, 1e-3, *added])
    assert chosen["lr"] == select(fixed)["lr"]  # the selection is over the grid as run
    grid, again, stop = _replay(tmp_path / "low" / "results.jsonl", chosen)
    assert again == added and chosen.get("lr_extend_stop") == stop
    assert (stop is None) == (sweep.edge(grid, chosen["lr"]) is None)  # a stop reason only at an end
    n_rows = len(read_records(tmp_path / "low" / "results.jsonl"))
    assert n_rows == 1 + len(fixed) + 1

    # Resume: the same command trains nothing and writes nothing (the extension replays from the rows).
    assert run_sweep("demo", args("low", "[1e-4, 1e-3]"), progress=False) == rows and len(trained) == len(fixed)
    assert len(read_records(tmp_path / "low" / "results.jsonl")) == n_rows
    # Off: the asked grid, no training; its selection is written (the latest selection counts), reason "off".
    off = run_sweep("demo", args("low", "[1e-4, 1e-3]") + ["sweep.extend=false"], progress=False)[-1]
    assert len(trained) == len(fixed) and off["selected_from"] == [1e-4, 1e-3] and off["lr"] == 1e-4
    assert "lr_extended" not in off and "lr_extensions" not in off and off["lr_extend_stop"] == "off"
    # On again: still no training, and the extended selection is the latest again.
    on = run_sweep("demo", args("low", "[1e-4, 1e-3]"), progress=False)[-1]
    assert len(trained) == len(fixed) and on["selected_from"] == chosen["selected_from"] and on["lr"] == chosen["lr"]
    assert len(read_records(tmp_path / "low" / "results.jsonl")) == n_rows + 2

    # High end, one extension allowed, stacked: 10 fits best here (the collapse of a random model
    # onto one label), so 100 = 10 * 10 / 1 is added as a stack of one.
    del trained[:]
    rows = run_sweep("demo", args("high", "[1, 10]") + ["sweep.max_extensions=1", "stacked=true"], progress=False)
    chosen = rows[-1]
    assert chosen["lr_extensions"] == [100.0] and [r["lr"] for r in rows[:-1]] == [1, 10, 100.0]
    assert rows[2]["extended_lr"] is True and rows[2]["stacked"] is True and rows[2]["stack_size"] == 1
    assert chosen["lr"] == select(rows[:-1])["lr"]
    if sweep.edge([1, 10, 100], chosen["lr"]) is not None:  # still an end: the cap is why
        assert chosen["lr_extend_stop"] == "max_extensions=1 reached"
    else:
        assert chosen.get("lr_extend_stop") is None
