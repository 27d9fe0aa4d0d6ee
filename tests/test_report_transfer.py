"""The report's muP-transfer panel (``evaluate.report.transfer``): pre-training runs over widths x
peak LRs, found by their summary.json, drawn as loss against LR with each width's optimum; a
directory of only such runs reports just that."""

import json
import math

import pytest
import yaml
from overtrain.core.errors import DataError
from overtrain.core.jsonl import append_record
from overtrain.evaluate.report import make_report
from overtrain.evaluate.report.transfer import find_runs, optimum, transfer_curves

LRS = [1e-3, 3e-3, 1e-2, 3e-2]


def fake_run(root, width, lr, loss, param="mup", seed=0):
    """What `overtrain pretrain` leaves: summary.json (written last) and the final checkpoint's model.yaml."""
    run = root / "pretrain" / f"tiny_d{width}_lr{lr:g}_s{seed}_{param}"
    ckpt = run / "checkpoints" / "step-00000016"
    ckpt.mkdir(parents=True)
    (ckpt / "model.yaml").write_text(yaml.safe_dump({"name": "tiny", "d_model": width, "base_d_model": 64}))
    summary = {"model": "tiny", "parametrization": param, "budget_tokens": 32000, "seed": seed, "peak_lr": lr}
    summary |= {"c4_val_loss": loss, "final_checkpoint": str(ckpt)}
    (run / "summary.json").write_text(json.dumps(summary))


def bowl(lr, best, width):
    """A loss that is lowest at ``best`` and falls with width (wider is better)."""
    return 6.0 - 0.1 * math.log2(width) + (math.log10(lr) - math.log10(best)) ** 2


def test_transfer_panel_from_pretraining_runs_only(tmp_path):
    for w in (32, 64, 128):
        for lr in LRS:
            fake_run(tmp_path, w, lr, bowl(lr, 1e-2, w))  # muP: the same optimum at every width
            fake_run(tmp_path, w, lr, bowl(lr, 1e-2 * 64 / w, w), param="sp")  # SP: the optimum moves as 1/width
    fake_run(tmp_path, 64, 1e-2, bowl(1e-2, 1e-2, 64) + 0.2, seed=1)  # a second seed: averaged
    ft = tmp_path / "sweeps" / "x" / "lr-1e-3"
    ft.mkdir(parents=True)
    (ft / "summary.json").write_text(json.dumps({"kind": "finetune", "lr": 1e-3}))  # a fine-tuning summary: not a point

    points = find_runs([str(tmp_path)])
    assert len(points) == 2 * 12 + 1 and {p["width"] for p in points} == {32, 64, 128}
    curves = transfer_curves(points)
    assert list(curves) == [("tiny", "mup", 32000), ("tiny", "sp", 32000)]
    mup, sp = curves["tiny", "mup", 32000], curves["tiny", "sp", 32000]
    assert mup[64][1e-2] == pytest.approx(bowl(1e-2, 1e-2, 64) + 0.1, rel=1e-12)  # mean over the 2 seeds
    assert {w: optimum(c) for w, c in mup.items()} == {32: 1e-2, 64: 1e-2, 128: 1e-2}
    assert {w: optimum(c) for w, c in sp.items()} == {32: 3e-2, 64: 1e-2, 128: 3e-3}

    rep, text, paths = make_report([str(tmp_path)], tmp_path / "report")  # no results.jsonl at all
    assert [p.name for p in paths] == ["mup_transfer.png"] and paths[0].read_bytes()[:4] == b"\x89PNG"
    assert "## muP transfer: tiny (mup), 32K tokens" in text and "## muP transfer: tiny (sp), 32K tokens" in text
    assert "The optimum is the same LR at every width (1e-2)" in text
    assert "The optimum moves with width: 32: 3e-2, 64: 1e-2, 128: 3e-3." in text


def test_one_lr_per_run_draws_no_panel_and_rows_still_report(tmp_path):
    for w in (32, 64):
        fake_run(tmp_path, w, 1e-2, 5.0)
    assert transfer_curves(find_runs([str(tmp_path)])) == {}
    with pytest.raises(DataError, match="no results.jsonl"):  # nothing to report: said so, as before
        make_report([str(tmp_path)], tmp_path / "report")
    append_record(tmp_path / "results.jsonl", {"kind": "base", "model": "tiny", "pretrain_tokens": 1000, "c4_ppl": 9.0})
    rep, text, paths = make_report([str(tmp_path)], tmp_path / "report")
    assert rep.transfer == {} and "muP transfer" not in text
    broken = tmp_path / "pretrain" / "tiny_d32_lr0.01_s0_mup" / "checkpoints" / "step-00000016" / "model.yaml"
    broken.unlink()
    with pytest.raises(DataError, match="gives no d_model"):
        find_runs([str(tmp_path)])
