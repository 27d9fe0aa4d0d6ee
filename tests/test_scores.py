"""Per-example scores beside the results rows: a sweep writes them (before its rows), their means are
exactly the rows' metrics, and the report reads them back as intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from overtrain.core.jsonl import read_records
from overtrain.core.likelihood import perplexity
from overtrain.core.rows import load_rows, read_scores
from overtrain.finetune.sweep import run_sweep
from test_finetune import make_checkpoint


@pytest.mark.usefixtures("one_thread")
def test_sweep_rows_name_their_per_example_scores(tmp_path, small_c4):
    make_checkpoint(tmp_path / "pre")
    run_dir = tmp_path / "sweep"
    args = [
        f"checkpoint={tmp_path / 'pre'}",
        "task=rte",
        f"run_dir={run_dir}",
        f"c4={small_c4}",
        "max_examples={train: 16, validation: 8, test: 8}",
        "c4_max_tokens=256",
        "eval_batch_size=16",
        "max_steps=2",
        "lrs=[1e-3]",
    ]
    run_sweep("demo", args, progress=False)
    raw = read_records(run_dir / "results.jsonl")
    rows = load_rows(run_dir / "results.jsonl")
    assert [r["kind"] for r in raw] == ["base", "finetune", "finetune"]
    assert raw[1]["scores"] == raw[2]["scores"]  # the selected copy shares its row's file
    base, ft = read_scores(rows[0]), read_scores(rows[1])
    assert not list((run_dir / "scores").glob(".*tmp*"))  # written whole
    for r, s, pre in ((raw[0], base, ""), (raw[1], ft, "after.")):
        n = raw[1]["n_examples"]["test"]
        assert s[pre + "test.nll"].shape == (n,) and int(s[pre + "test.n_classes"]) == 2
        assert math.exp(s[pre + "test.nll"].mean()) == pytest.approx(r["test_id_ppl"], rel=1e-12)
        assert s[pre + "test.correct"].mean() == pytest.approx(r["test_acc"])
        assert math.exp(s[pre + "val.nll"].mean()) == pytest.approx(r["val_id_ppl"], rel=1e-12)
        c4 = s[pre + "c4.nll"].sum() / s[pre + "c4.tokens"].sum()
        c4_key = "c4_ppl" if r["kind"] == "base" else "c4_ppl_after"
        assert math.exp(c4) == pytest.approx(r[c4_key], rel=1e-9)
    assert read_scores(rows[0].__class__(scores="scores/missing.npz", where=rows[0].where)) is None


def test_per_window_nll_leaves_the_perplexity_unchanged():
    torch = pytest.importorskip("torch")
    from overtrain.core.model import build_model
    from overtrain.core.model_spec import load_model_spec

    spec = load_model_spec("tiny")
    model = build_model(spec)
    tokens = np.random.default_rng(0).integers(0, 1000, 4 * 32 + 1)
    with torch.no_grad():
        a = perplexity(model, tokens, 32, batch_size=3)
        b = perplexity(model, tokens, 32, batch_size=3, per_window=True)
    assert a == {k: v for k, v in b.items() if k != "window_nll"}
    assert b["window_nll"].shape == (4,) and b["window_nll"].sum() / 128 == pytest.approx(a["loss"], rel=1e-12)
