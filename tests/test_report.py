"""Report on a synthetic study with known shapes: rte's tuned-LR C4 perplexity is U-shaped in
tokens (turn at 4M), trec's curves keep improving; intermediate checkpoints must stay apart.
Every fine-tuning row has per-example scores (``scores``, as the sweep writes them) whose means
are the row's metrics, with small per-row noise, so the turns are real ones, beyond the noise.
A noise probe (fine-tuning seeds 1 and 2 at the first and last budget, each run 1% off seed 0's
perplexities, one up, one down) measures the run-to-run variation every decision counts."""

import csv
import math
import struct

import numpy as np
import pytest
from overtrain.cli import main
from overtrain.core.errors import ConfigError, DataError
from overtrain.core.jsonl import append_record
from overtrain.core.rows import write_scores
from overtrain.evaluate.report import aggregate, find_turn, load_rows, make_report

N_TEST, N_WINDOWS, WINDOW = 400, 50, 64
DIFFICULTY = np.random.default_rng(0).normal(0, 0.3, N_TEST)
DIFFICULTY -= DIFFICULTY.mean()  # shared by every row: the examples are the same at every budget
WINDOWS = np.random.default_rng(1).normal(0, 0.5, N_WINDOWS)  # C4 windows' difficulty, shared likewise

M = 1_000_000
BUDGETS = [1 * M, 2 * M, 4 * M, 8 * M, 16 * M]
BASE_C4 = [100.0, 80.0, 65.0, 55.0, 50.0]  # base model: improves monotonically
LRS = [1e-4, 1e-3, 1e-2]
# (task, lr) -> (ID ppl per budget, C4 ppl after fine-tuning per budget)
CURVES = {
    ("rte", 1e-4): ([2.4, 2.3, 2.2, 2.15, 2.1], [65.0, 60.0, 57.0, 55.0, 54.0]),
    ("rte", 1e-3): ([2.0, 1.9, 1.8, 1.75, 1.7], [60.0, 55.0, 52.0, 58.0, 70.0]),  # tuned: C4 turns at 4M
    ("rte", 1e-2): ([2.1, 2.0, 1.95, 1.9, 1.85], [70.0, 62.0, 66.0, 75.0, 90.0]),  # larger LR: turns earlier (2M)
    ("trec", 1e-4): ([3.5, 3.0, 2.8, 2.6, 2.5], [80.0, 70.0, 60.0, 55.0, 51.0]),
    ("trec", 1e-3): ([3.0, 2.5, 2.2, 2.1, 2.05], [90.0, 75.0, 62.0, 56.0, 52.0]),  # best by val_id_ppl
    ("trec", 1e-2): ([4.0, 3.8, 3.6, 3.5, 3.4], [95.0, 85.0, 70.0, 66.0, 60.0]),
}


def ft_row(task, lr, i, tokens=None, decayed=True, **kw):
    ids, c4 = CURVES[task, lr]
    row = {
        "kind": "finetune",
        "model": "tiny",
        "non_embedding_params": 100_000,
        "pretrain_tokens": tokens or BUDGETS[i],
        "budget_tokens": tokens or BUDGETS[i],
        "lr_decayed": decayed,
        "task": task,
        "template": "default",
        "lr": lr,
        "seed": 0,
        "val_id_ppl": ids[i] + 0.01,
        "test_id_ppl": ids[i],
        "val_acc": 0.5,
        "test_acc": round(1 / ids[i], 4),
        "c4_ppl_before": BASE_C4[i],
        "c4_ppl_after": c4[i],
        "selected": False,
        "time": 1.0,
    }
    row.update(kw)
    return row


def scores_of(row: dict, rng) -> dict:
    """Per-example scores whose means are exactly the row's test ID perplexity, accuracy and C4 perplexity."""
    noise = rng.normal(0, 0.05, N_TEST)
    nll = math.log(row["test_id_ppl"]) + DIFFICULTY + noise - noise.mean()
    classes = 2 if row["task"] == "rte" else 6
    correct = np.arange(N_TEST) < round(row["test_acc"] * N_TEST)
    window = WINDOWS + rng.normal(0, 0.05, N_WINDOWS)
    c4 = (math.log(row["c4_ppl_after"]) + window - window.mean()) * WINDOW
    return {
        "after": {
            "test": {"nll": nll, "correct": correct, "label": np.arange(N_TEST) % classes, "n_classes": classes},
            "c4": {"nll": c4, "tokens": np.full(N_WINDOWS, WINDOW)},
        }
    }


PROBE = {1: 1.01, 2: 1 / 1.01}  # noise-probe seed -> its run's perplexity factor (a run shift of 1%)


def write_sweep(path, task, i, seed=0, **kw):
    """What ``overtrain sweep`` writes: a row per LR (its per-example scores first), then for rte a
    copy of the tuned one flagged ``selected`` (trec's selection is left to the report). ``seed``:
    a probe seed (``PROBE``): its run's perplexities shifted."""
    rng = np.random.default_rng([i, len(task), len(kw), seed])
    rows = {}
    for lr in LRS:
        row = ft_row(task, lr, i, **kw)
        if seed:
            f = PROBE[seed]
            row |= {"seed": seed, "test_id_ppl": row["test_id_ppl"] * f, "val_id_ppl": row["val_id_ppl"] * f}
            row |= {"c4_ppl_after": row["c4_ppl_after"] * f}
        rows[lr] = row = {**row, "scores": write_scores(path, scores_of(row, rng))}
        append_record(path, row)
    if task == "rte":
        append_record(path, {**rows[1e-3], "selected": True})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    ft, other = root / "sweeps" / "results.jsonl", root / "perturb" / "results.jsonl"
    for i, t in enumerate(BUDGETS):
        append_record(
            other,
            {
                "kind": "base",
                "model": "tiny",
                "pretrain_tokens": t,
                "lr_decayed": True,
                "task": "rte",
                "c4_ppl": BASE_C4[i],
            },
        )
        for task in ("rte", "trec"):
            write_sweep(ft, task, i)
            if i in (0, len(BUDGETS) - 1):  # the noise probe
                for seed in PROBE:
                    write_sweep(ft, task, i, seed)
        for gamma in (0.5, 1.0):
            for seed, jitter in ((0, -0.1), (1, 0.1)):  # change grows with tokens and gamma
                append_record(
                    other,
                    {
                        "kind": "perturb",
                        "model": "tiny",
                        "pretrain_tokens": t,
                        "lr_decayed": True,
                        "gamma": gamma,
                        "noise_seed": seed,
                        "c4_ppl_base": BASE_C4[i],
                        "c4_ppl": BASE_C4[i] + gamma * (i + 1) + jitter,
                    },
                )
    # Intermediate (not decayed) checkpoints of a 64M run, with values that would turn trec's tuned
    # curve (C4 500 at 32M) and move the base curve if they were mixed into the decayed ones.
    for task in ("rte", "trec"):
        write_sweep(
            ft, task, 4, tokens=32 * M, decayed=False, budget_tokens=64 * M, c4_ppl_after=500.0, c4_ppl_before=300.0
        )
    append_record(ft, {"kind": "eval", "model": "tiny", "pretrain_tokens": 1})  # other kinds are ignored
    with open(ft, "ab") as f:
        f.write(b'{"kind": "finetune", "model": "ti')  # a torn final line (a killed writer)
    out = root / "report"
    rep, text, paths = make_report([str(root)], out)
    return root, out, rep, text, paths


def test_find_turn():
    assert find_turn([1, 2, 3, 4], [5, 3, 4, 6], 0.01) == (1, 1.0)
    assert find_turn([1, 2, 3], [5, 4, 3], 0.01) == (None, 0.0)  # monotone: no turn
    assert find_turn([1, 2, 3], [5, 4, 4.02], 0.01)[0] is None  # within tolerance
    assert find_turn([1, 2, 3], [3, 4, 5], 0.01)[0] == 0  # worse from the start (not interior)
    assert find_turn([1, 2, 3], [3, 2, float("inf")], 0.01)[0] == 1  # diverged at the largest budget


def test_inflections_and_verdict(study):
    _, _, rep, text, _ = study
    (c4_tuned,) = [c for c in rep.find("c4", "rte", "tuned") if not c.series.intermediate]
    assert c4_tuned.x == BUDGETS and c4_tuned.interior and c4_tuned.turn_tokens == 4 * M
    assert c4_tuned.worse_by == pytest.approx(np.mean([70 * f for f in (1, *PROBE.values())]) / 52 - 1)  # probe mean
    fixed = {c.setting: c.turn_tokens for c in rep.find("c4", "rte") if not c.series.intermediate}
    assert fixed == {"lr=1e-4": None, "lr=1e-3": 4 * M, "lr=1e-2": 2 * M, "tuned": 4 * M}
    assert all(
        c.turn is None
        for c in rep.find("id", "rte") + rep.find("id", "trec") + rep.find("c4", "trec") + rep.find("base_c4")
    )
    assert rep.verdicts["rte"]["shows"] is True and rep.verdicts["trec"]["shows"] is False
    assert "**rte**: catastrophic overtraining. C4 perplexity after fine-tuning turns at 4M tokens" in text
    assert "ID perplexity does not turn" in text
    assert "**trec**: no catastrophic overtraining up to 16M tokens" in text
    assert "Catastrophic overtraining: rte. Not observed: trec." in text
    assert "lr=1e-2 turns at 2M" in text and "lr=1e-4 no turn" in text
    # trec had no 'selected' flags: the report picks the lowest val_id_ppl (lr 1e-3) and says so
    assert all(
        c.lrs == (1e-3,)
        for c in rep.tuned[next(k for k in rep.tuned if k[1] == "trec" and not k[0].intermediate)].values()
    )
    assert "tuned LR = lowest val_id_ppl" in text
    assert "ignored 1 torn final line" in text and "1 eval" in text and "differ in" not in text
    # the sweep's selected copy is not counted twice in the fixed-LR cell
    assert rep.fixed[next(k for k in rep.fixed if k[1] == "rte" and not k[0].intermediate)][4 * M][1e-3].n == 1
    assert "for 2 of 2 (model, gamma) curves" in text  # noise sensitivity grows


def test_intermediate_checkpoints_kept_apart(study):
    _, out, rep, text, _ = study
    inter = [c for c in rep.find("c4", "trec", "tuned") if c.series.intermediate]
    assert len(inter) == 1 and inter[0].x == [32 * M] and inter[0].y == [500.0]
    assert inter[0].series.run_budget == 64 * M
    assert [c.x for c in rep.find("base_c4") if not c.series.intermediate] == [BUDGETS]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    r = [x for x in rows if x["task"] == "trec" and x["pretrain_tokens"] == str(32 * M)]
    assert len(r) == 1 and r[0]["lr_decayed"] == "False" and r[0]["run_budget_tokens"] == str(64 * M)
    assert "| tiny | 32M (int.) | 300 |" in text


def test_tables_hold_the_numbers(study):
    _, out, _, text, _ = study
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 2 * (len(BUDGETS) + 1)  # (5 decayed + 1 intermediate) x 2 tasks
    (r,) = [x for x in rows if x["task"] == "rte" and x["pretrain_tokens"] == str(4 * M)]
    assert (r["model"], r["lr_decayed"], r["tuned_lr"]) == ("tiny", "True", "1e-3")
    assert float(r["base_c4_ppl"]) == 65.0 and float(r["tuned_c4_ppl"]) == 52.0 and float(r["tuned_id_ppl"]) == 1.8
    assert (
        float(r["c4_ppl@lr=1e-2"]) == 66.0
        and float(r["id_ppl@lr=1e-4"]) == 2.2
        and float(r["tuned_acc"]) == round(1 / 1.8, 4)
    )
    (line,) = [x for x in text.splitlines() if x.startswith("| tiny | 4M | 65 | 1e-3 | 1.8 [")]  # with its interval
    assert line.endswith("| 0.556 | 2.2 | 57 | 1.8 | 52 | 1.95 | 66 |") and "| 52 [" in line
    points = list(csv.DictReader(open(out / "curves.csv")))
    (p,) = [
        x
        for x in points
        if x["task"] == "rte"
        and x["setting"] == "tuned"
        and x["metric"] == "c4"
        and x["pretrain_tokens"] == str(4 * M)
        and x["lr_decayed"] == "True"
    ]
    assert float(p["ci_low"]) < 52.0 < float(p["ci_high"]) and p["turns"] == "True"
    pert = list(csv.DictReader(open(out / "perturb.csv")))
    (p,) = [x for x in pert if x["pretrain_tokens"] == str(8 * M) and x["gamma"] == "1.0"]
    assert float(p["c4_ppl_change_mean"]) == pytest.approx(4.0) and p["n_seeds"] == "2"
    # 2 noise seeds at +-0.1: t_{0.975, 1} = tan(0.475 pi) times sd / sqrt(2) = 0.1, not 1.96 x 0.1
    assert float(p["ci_high"]) - 4.0 == pytest.approx(math.tan(0.475 * math.pi) * 0.1, rel=1e-6)
    assert (out / "report.md").read_text() == text


def test_pngs_are_valid(study):
    _, out, _, _, paths = study
    assert sorted(p.name for p in paths) == [
        "base_c4_ppl.png",
        "finetune_rte.png",
        "finetune_trec.png",
        "noise_sensitivity.png",
    ]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 200 and len(data) > 10_000
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_group_by_and_cli(study, tmp_path, capsys):
    root, _, _, _, _ = study
    # the same rte study under a second parametrization (a grid tag) whose C4 curve never turns
    extra = tmp_path / "sp" / "results.jsonl"
    for i in range(len(BUDGETS)):
        write_sweep(extra, "rte", i, c4_ppl_after=60.0 - i, tags={"parametrization": "sp"})
    rows = load_rows([str(root / "sweeps"), str(extra)], warn=False)
    mixed = aggregate(rows, [], 0.01)  # without --group-by the two setups share cells: said so
    assert any("differ in tags" in n and "--group-by" in n for n in mixed.notes)
    assert mixed.fixed[next(k for k in mixed.fixed if k[1] == "rte")][4 * M][1e-3].n == 2
    out = tmp_path / "report"
    assert main(["report", str(root / "sweeps"), str(extra), f"out={out}", "group_by=parametrization"]) == 0
    printed = capsys.readouterr().out
    assert "| parametrization | model | tokens |" in printed and f"figure: {out / 'finetune_rte.png'}" in printed
    assert "turns at 4M tokens for tiny, parametrization=-" in printed  # rows without the key form group '-'
    assert "parametrization=sp" in printed and "tiny, parametrization=sp (" not in printed  # sp never turns
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["parametrization"] for r in rows} == {"-", "sp"}

    assert main(["report", str(root), f"out={out}", "group_by=nonexistent"]) == 2
    assert "--group-by nonexistent: no results row has this key" in capsys.readouterr().err


def test_bad_rows_named(tmp_path):
    bad = tmp_path / "results.jsonl"
    append_record(bad, ft_row("rte", 1e-3, 0))
    append_record(bad, {"kind": "finetune", "model": "tiny", "pretrain_tokens": M, "task": "rte"})
    with pytest.raises(DataError, match=r"results.jsonl:2: finetune row needs a 'task' and a numeric 'lr'"):
        make_report([str(bad)], tmp_path / "out")
    with pytest.raises(ConfigError, match="tolerance"):
        make_report([str(bad)], tmp_path / "out", tolerance=-1)


def test_cannot_tell_and_sanity_flags(tmp_path):
    """'cannot tell' with its reason: rows without scores, a model that learned nothing, too few
    budgets, intervals too wide; and the sanity checks that flag them."""
    old = tmp_path / "old.jsonl"  # rows of the previous version: no per-example scores
    for i in range(3):
        for lr in LRS:
            append_record(old, ft_row("rte", lr, i))
    rep, text, _ = make_report([str(old)], tmp_path / "r1")
    assert rep.verdicts["rte"]["shows"] is None and "cannot tell: no per-example scores" in text
    assert all(c.turn is None and not c.has_intervals for c in rep.curves)

    # trec at chance (accuracy 1/6 = the majority class of 6 balanced classes) everywhere: learned nothing,
    # even though its C4 perplexity worsens at the largest budget
    flat = tmp_path / "flat.jsonl"
    rng = np.random.default_rng(0)
    for i in range(4):
        for lr in LRS:
            row = ft_row("trec", lr, i, test_acc=1 / 6, c4_ppl_after=[50.0, 45.0, 44.0, 60.0][i])
            append_record(flat, {**row, "scores": write_scores(flat, scores_of(row, rng))})
    rep, text, _ = make_report([str(flat)], tmp_path / "r2")
    assert rep.verdicts["trec"]["shows"] is None and "cannot tell: the model learned nothing" in text
    assert "majority-class accuracy 0.168" in text  # 400 examples of 6 classes: 67 of the largest
    assert "learned nothing" in "\n".join(rep.flags) and "Cannot tell: trec." in text
    assert not any(c.interior for c in rep.find("c4", "trec", "tuned"))  # not tested: no turn drawn

    # two budgets only; and noisy scores of a flat curve: intervals too wide for a 1% tolerance
    two = tmp_path / "two.jsonl"
    for i in range(2):
        write_sweep(two, "rte", i)
    rep, text, _ = make_report([str(two)], tmp_path / "r3")
    assert "cannot tell: fully decayed checkpoints at 2 budget(s) only" in text

    wide = tmp_path / "wide.jsonl"
    for i in range(4):
        for lr in LRS:
            for seed in (0, 1):  # two runs per point: run-to-run variation measured
                row = ft_row("rte", lr, i, c4_ppl_after=55.0, test_id_ppl=1.8, val_id_ppl=1.8 + lr, test_acc=0.7)
                s = scores_of(row, rng)
                s["after"]["test"]["nll"] = s["after"]["test"]["nll"] + rng.normal(0, 0.5, N_TEST)  # noisy per run
                append_record(wide, {**row, "seed": seed, "scores": write_scores(wide, s)})
    rep, text, _ = make_report([str(wide)], tmp_path / "r4")
    assert "**rte**: cannot tell: intervals too wide" in text and rep.verdicts["rte"]["shows"] is None
    assert any("the tuned LR is the lowest of its grid" in f for f in rep.flags)


def test_base_c4_that_does_not_fall_is_flagged(tmp_path):
    path = tmp_path / "base.jsonl"
    for t, ppl in ((M, 100.0), (2 * M, 90.0), (4 * M, 95.0)):
        append_record(path, {"kind": "base", "model": "tiny", "pretrain_tokens": t, "lr_decayed": True, "c4_ppl": ppl})
    rep, text, _ = make_report([str(path)], tmp_path / "out")
    assert "base C4 perplexity of tiny does not fall with tokens (2M → 4M)" in text


def test_extended_grid_rows_and_superseded_selections(tmp_path):
    """A sweep that added LRs past its grid's end (``finetune.sweep``): the added LR counts for the
    tuned LR only; a later selection of the same sweep replaces an earlier one; a tuned LR still at
    an end is flagged with why the sweep stopped there."""
    path = tmp_path / "results.jsonl"
    grid = [1e-5, *LRS]
    for i in range(3):
        rows = {lr: ft_row("rte", lr, i) for lr in LRS}
        # the asked grid's lowest LR won, so 1e-5 was added: better still at 1M (an end again, cap 1), worse after
        rows[1e-5] = {**ft_row("rte", 1e-4, i, extended_lr=True, val_id_ppl=2.0 if i == 0 else 9.0), "lr": 1e-5}
        for r in rows.values():
            append_record(path, r)
        append_record(
            path, {**rows[1e-4], "selected": True, "selected_from": LRS, "lr_extend_stop": "off"}
        )  # superseded
        best = 1e-5 if i == 0 else 1e-3
        stop = "max_extensions=1 reached" if i == 0 else None
        append_record(path, {**rows[best], "selected": True, "selected_from": grid, "lr_extend_stop": stop})
    rep, text, _ = make_report([str(path)], tmp_path / "out")
    key = next(k for k in rep.fixed if k[1] == "rte")
    assert all(sorted(cells) == LRS for cells in rep.fixed[key].values())  # no fixed-LR curve at 1e-5
    assert [c.lrs for _, c in sorted(rep.tuned[key].items())] == [(1e-5,), (1e-3,), (1e-3,)]  # the latest selections
    assert all(c.grid == tuple(grid) for c in rep.tuned[key].values())
    assert any("3 selected rows superseded" in n for n in rep.notes) and any("extended_lr" in n for n in rep.notes)
    flags = [f for f in rep.flags if "the tuned LR is the lowest of its grid at 1M tokens" in f]
    assert len(flags) == 1 and "(grid extension: max_extensions=1 reached)" in flags[0]


def test_one_run_per_point_cannot_tell(tmp_path):
    """rte's clear turn (C4 52 -> 70) with one fine-tuning run per point and no probe: run-to-run
    variation is not measured, so the report says so and claims no turn from example noise alone;
    two runs at the first and last budget (a probe) make it a turn, with the variance named."""
    path = tmp_path / "results.jsonl"
    for i in range(len(BUDGETS)):
        write_sweep(path, "rte", i)
    rep, text, _ = make_report([str(path)], tmp_path / "r1")
    assert "cannot tell: one run per point, run-to-run variation not measured" in text
    assert rep.verdicts["rte"]["shows"] is None and all(c.turn is None for c in rep.find("c4", "rte"))
    assert all(c.variance.startswith("examples only") for c in rep.find("c4", "rte"))
    for i in (0, len(BUDGETS) - 1):
        write_sweep(path, "rte", i, 1)
    rep, text, _ = make_report([str(path)], tmp_path / "r2")
    assert rep.verdicts["rte"]["shows"] is True and "turns at 4M tokens" in text
    (c,) = rep.find("c4", "rte", "tuned")
    assert c.runs == [2, 1, 1, 1, 2] and c.run_var.df == 2 * 3  # 2 probe cells x 3 LRs, 1 df each
    assert "pooled over 6 cells with repeated runs, 6 df" in c.variance and "80% power" in text
