"""Report on a synthetic study with known shapes: rte's tuned-LR C4 perplexity is U-shaped in
tokens (turn at 4M), trec's curves keep improving; intermediate checkpoints must stay apart."""

import csv
import struct

import pytest
from overtrain.cli import main
from overtrain.core.config import ConfigError, DataError
from overtrain.core.results import append_row
from overtrain.evaluate.report import aggregate, find_turn, load_rows, make_report

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


def write_sweep(path, task, i, **kw):
    """What ``overtrain sweep`` writes: a row per LR, then for rte a copy of the tuned one flagged
    ``selected`` (trec's selection is left to the report)."""
    for lr in LRS:
        append_row(path, ft_row(task, lr, i, **kw))
    if task == "rte":
        append_row(path, ft_row(task, 1e-3, i, selected=True, **kw))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    ft, other = root / "sweeps" / "results.jsonl", root / "perturb" / "results.jsonl"
    for i, t in enumerate(BUDGETS):
        append_row(
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
        for gamma in (0.5, 1.0):
            for seed, jitter in ((0, -0.1), (1, 0.1)):  # change grows with tokens and gamma
                append_row(
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
    append_row(ft, {"kind": "eval", "model": "tiny", "pretrain_tokens": 1})  # other kinds are ignored
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
    assert c4_tuned.worse_by == pytest.approx(70 / 52 - 1)
    fixed = {c.setting: c.turn_tokens for c in rep.find("c4", "rte") if not c.series.intermediate}
    assert fixed == {"lr=1e-4": None, "lr=1e-3": 4 * M, "lr=1e-2": 2 * M, "tuned": 4 * M}
    assert all(
        c.turn is None
        for c in rep.find("id", "rte") + rep.find("id", "trec") + rep.find("c4", "trec") + rep.find("base_c4")
    )
    assert rep.verdicts["rte"]["shows"] is True and rep.verdicts["trec"]["shows"] is False
    assert "**rte**: catastrophic overtraining. C4 perplexity after fine-tuning turns at 4M tokens" in text
    assert "ID perplexity keeps improving" in text
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
    assert rep.fixed[next(k for k in rep.fixed if k[1] == "rte" and not k[0].intermediate)][M][1e-3].n == 1
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
    assert "| tiny | 4M | 65 | 1e-3 | 1.8 | 52 | 0.556 | 2.2 | 57 | 1.8 | 52 | 1.95 | 66 |" in text
    pert = list(csv.DictReader(open(out / "perturb.csv")))
    (p,) = [x for x in pert if x["pretrain_tokens"] == str(8 * M) and x["gamma"] == "1.0"]
    assert float(p["c4_ppl_change_mean"]) == pytest.approx(4.0) and p["n_seeds"] == "2"
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
    assert mixed.fixed[next(k for k in mixed.fixed if k[1] == "rte")][M][1e-3].n == 2
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
    append_row(bad, ft_row("rte", 1e-3, 0))
    append_row(bad, {"kind": "finetune", "model": "tiny", "pretrain_tokens": M, "task": "rte"})
    with pytest.raises(DataError, match=r"results.jsonl:2: finetune row needs a 'task' and a numeric 'lr'"):
        make_report([str(bad)], tmp_path / "out")
    with pytest.raises(ConfigError, match="tolerance"):
        make_report([str(bad)], tmp_path / "out", tolerance=-1)
