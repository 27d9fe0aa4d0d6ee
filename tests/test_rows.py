"""Typed results rows (overtrain.core.rows) and the resume identity.

Rows written by the previous version (tests/fixtures/rows_v0: every writer's shape, written by
c6d7ab6, before typed rows, with the report it made of them) load, write back and report
unchanged; reading is tolerant of missing keys and strict about wrong types; the resume identity is
derived from the config fields' metadata and covers the C4 tokens evaluated."""

import json
import math
import shutil
from dataclasses import field, fields, make_dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from overtrain.core.errors import DataError
from overtrain.core.identity import (
    c4_identity,
    identity_dict,
    identity_row_keys,
    in_row,
    no_result,
    predates_c4_identity,
    predicted_tokens,
    same_identity,
)
from overtrain.core.jsonl import append_record, read_records
from overtrain.core.likelihood import windows
from overtrain.core.rows import BaseRow, EvalRow, FinetuneRow, Metrics, OtherRow, PerturbRow, load_rows, parse_row
from overtrain.core.schedule import ScheduleConfig
from overtrain.evaluate.report import make_report
from overtrain.finetune import finetune as ft
from overtrain.finetune.finetune import FinetuneConfig, config_hash
from overtrain.finetune.finetune_config import RESUME_KEYS, load_finetune_config
from overtrain.finetune.sweep import run_sweep
from tables import read_csv, same_columns
from test_finetune import make_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "rows_v0"


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / "results.jsonl").read_text().splitlines()]


def test_previous_version_rows_load_and_write_back_unchanged():
    raw = fixture_rows()
    rows = load_rows(FIXTURE / "results.jsonl")
    b, f = [BaseRow], [FinetuneRow]
    assert [type(r) for r in rows] == b + f * 3 + b + f * 6 + b + [EvalRow] + b + [PerturbRow] * 3
    for r, d in zip(rows, raw):
        assert r.to_dict() == d and list(r.to_dict()) == list(d)  # keys, values and order
        # the same values written as a new row: the schema's keys are the previous writers'
        new = replace(r, keys_read=None).to_dict()
        if isinstance(r, BaseRow) and d.get("c4_tokens", 0) is None:
            d = {k: v for k, v in d.items() if k != "c4_tokens"}  # evaluate without C4: no null c4_tokens now
        assert new == d
        if not r.extra:
            assert list(new) == list(d)
    assert [r.extra for r in rows if r.extra] == [{"parametrization": "mup"}]  # perturb_checkpoint(extra=...)
    assert rows.where[1] == f"{FIXTURE / 'results.jsonl'}:2" and rows[1].where == rows.where[1]

    # the typed values are the keys' values
    for r, d in zip(rows, raw):
        if isinstance(r, FinetuneRow):
            test, val = d["test_id_ppl"], d["val_id_ppl"]
            assert r.id_ppl == (test if not math.isnan(test) else val)
            assert (r.val_id_ppl, r.acc, r.c4_ppl_after) == (val, d["test_acc"], d.get("c4_ppl_after"))
            assert r.base_c4_ppl == d.get("c4_ppl_before") and r.ckpt.pretrain_tokens == d["pretrain_tokens"]
            assert bool(r.before) == ("val_id_ppl_before" in d) and r.c4_evaluated == ("c4_ppl_after" in d)
        elif isinstance(r, BaseRow):
            assert r.base_c4_ppl == d.get("c4_ppl") and r.evaluation.split("test").id_ppl == d.get("test_id_ppl")
        else:
            assert r.base_c4_ppl == d["c4_ppl_base"] and r.gamma == d["gamma"]


def test_report_of_previous_version_rows_is_unchanged(tmp_path):
    results = tmp_path / "results.jsonl"
    shutil.copy(FIXTURE / "results.jsonl", results)
    _, text, paths = make_report([str(results)], tmp_path / "report")
    # the same tables (the verdict's wording is this version's: issue 16's calibrated decision)
    expected = (FIXTURE / "report.md").read_text().replace("RESULTS", str(results))
    assert [x for x in text.splitlines() if x.startswith("|")] == [
        x for x in expected.splitlines() if x.startswith("|")
    ]
    assert "**rte**: cannot tell: fully decayed checkpoints at 1 budget(s) only." in text
    for name in ("summary.csv", "perturb.csv"):  # the same values; columns appended later are allowed
        assert same_columns(read_csv(tmp_path / "report" / name), read_csv(FIXTURE / name)), name
    assert [p.name for p in paths] == ["base_c4_ppl.png", "finetune_rte.png", "noise_sensitivity.png"]


def test_reading_is_tolerant_of_old_rows_and_strict_about_nonsense(tmp_path):
    r = parse_row({"kind": "finetune", "task": "rte", "lr": 1e-3, "future_key": [1, 2]})
    assert r.id_ppl is None and r.ckpt.model is None and r.seed is None and not r.before and not r.after
    assert r.extra == {"future_key": [1, 2]}  # kept, and written back in place
    assert r.to_dict() == {"kind": "finetune", "task": "rte", "lr": 1e-3, "future_key": [1, 2]}
    for other in ({"kind": "someday", "x": 1}, {"i": 0}):
        o = parse_row(other)
        assert isinstance(o, OtherRow) and o.kind == other.get("kind") and o.to_dict() == other

    path = tmp_path / "results.jsonl"
    append_record(path, {"kind": "finetune", "task": "rte", "lr": 1e-3})
    for key, value, what in (
        ("lr", "fast", "a number"),
        ("val_id_ppl", "low", "a number"),
        ("c4_ppl_before", [1.0], "a number"),
        ("pretrain_tokens", True, "a number"),  # a checkpoint key (Checkpoint part)
        ("selected", "yes", "true/false"),
        ("tags", ["a"], "an object"),
        ("task", 3, "a string"),
    ):
        bad = tmp_path / f"bad-{key}.jsonl"
        shutil.copy(path, bad)
        append_record(bad, {"kind": "finetune", "task": "rte", "lr": 1e-3, key: value})
        with pytest.raises(DataError, match=rf"bad-{key}.jsonl:2: key '{key}': expected {what}, got"):
            load_rows(bad)
        with pytest.raises(DataError, match=rf"bad-{key}.jsonl:2: key '{key}'"):
            make_report([str(bad)], tmp_path / "out")


def test_properties_define_each_fallback_once():
    nan = float("nan")
    r = parse_row({"kind": "finetune", "val_id_ppl": 2.0, "test_id_ppl": nan, "val_acc": 0.5, "c4_ppl_before": 9})
    assert (r.id_ppl, r.acc, r.val_id_ppl, r.base_c4_ppl, r.c4_ppl_after) == (2.0, 0.5, 2.0, 9.0, None)
    r = parse_row({"kind": "finetune", "val_id_ppl": nan, "test_id_ppl": math.inf, "test_acc": 0.7, "val_acc": 0.5})
    assert (r.id_ppl, r.acc, r.val_id_ppl) == (math.inf, 0.7, None)  # a diverged run: inf is a result, NaN is not
    assert parse_row({"kind": "base", "c4_ppl": 5}).base_c4_ppl == 5.0
    assert parse_row({"kind": "perturb", "c4_ppl_base": 4, "c4_ppl": 6}).base_c4_ppl == 4.0


def test_metrics_of_an_evaluation():
    evaluation = {
        "c4": {"loss": 1.0, "ppl": 2.7, "tokens": 64},
        "validation": {"id_ppl": 1.5, "id_nll": 0.4, "acc": None, "label_token_acc": 0.25, "n": 8},
        "test": {"id_ppl": 1.6, "acc": 0.5, "label_token_acc": 0.5},
    }
    m = Metrics.of(evaluation)
    assert m.keys("", "", c4_first=True) == {
        "c4_ppl": 2.7,
        "c4_loss": 1.0,
        "val_id_ppl": 1.5,
        "val_acc": None,  # an evaluated split writes all three keys (null where not applicable)
        "val_label_token_acc": 0.25,
        "test_id_ppl": 1.6,
        "test_acc": 0.5,
        "test_label_token_acc": 0.5,
    }
    assert list(m.keys("_after", "", c4_first=False))[-2:] == ["c4_ppl_after", "c4_loss_after"]
    assert Metrics.of({"c4": None, "test": {"id_ppl": 1.0}}).keys("", "", True) == {
        "test_id_ppl": 1.0,
        "test_acc": None,
        "test_label_token_acc": None,
    }
    assert not Metrics.of(None) and Metrics.of(None).keys("_before", "_before", True) == {}


# ---------------------------------------------------------------------------------------------
# Resume identity


def test_config_hash_values_unchanged():
    """The hash of the hand-kept field list (c6d7ab6) for the same configs: previous sweeps resume."""
    assert config_hash(FinetuneConfig()) == "e018f86e913d4c91"
    assert config_hash(load_finetune_config("demo")) == "539be9d788ac2004"
    over = ["lr=0.5", "seed=3", "run_dir=x", "c4=y", "stacked=true", "tags.a=1", "precision=fp32"]
    assert config_hash(load_finetune_config("demo", over)) == "4dbb5fd480a59710"


def test_every_finetune_config_field_is_classified():
    """A field added to FinetuneConfig fails here until it is classified (and the hash pinned above
    still holds only if it changes no result or has a row key of its own)."""
    table = {f.name: f.metadata.get("identity", True) for f in fields(FinetuneConfig)}
    assert table == {
        "checkpoint": "checkpoint_sha256",
        "task": "task",
        "template": "template",
        "task_overrides": True,
        "model": True,
        "run_dir": False,
        "c4": "c4_tokens_sha256",
        "seed": "seed",
        "device": False,
        "precision": True,
        "lr": "lr",
        "epochs": True,
        "max_steps": True,
        "batch_size": True,
        "micro_batch_size": True,
        "schedule": True,
        "betas": True,
        "eps": True,
        "weight_decay": True,
        "grad_clip": True,
        "optimizer": True,  # hashed as its former spelling mup_optimizer (finetune.config_hash)
        "mup_optimizer": False,  # that former spelling: an alias, folded into optimizer by validate()
        "l2_to_pretrained": True,
        "max_examples": True,
        "cap_seed": True,
        "eval_batch_size": True,
        "c4_max_tokens": True,
        "eval_before": True,
        "save_weights": False,
        "log_every": False,
        "log": False,  # trackers (wandb, TensorBoard) change no result
        "lrs": False,
        "stacked": False,
        "sweep": False,
        "tags": False,
    }
    hashed = identity_dict(FinetuneConfig())
    assert set(hashed) == {k for k, v in table.items() if v is True}
    assert set(hashed["schedule"]) == {f.name for f in fields(ScheduleConfig)}  # nested: every field
    assert RESUME_KEYS == ("checkpoint_sha256", "task", "template", "c4_tokens_sha256", "seed", "lr", "config_hash")


def test_a_new_config_field_changes_the_identity_unless_declared():
    base = config_hash(FinetuneConfig())
    plain = make_dataclass("Plain", [("new_knob", int, field(default=0))], bases=(FinetuneConfig,))
    assert config_hash(plain()) != base
    quiet = make_dataclass("Quiet", [("new_knob", int, no_result(0))], bases=(FinetuneConfig,))
    assert config_hash(quiet()) == base
    keyed = make_dataclass("Keyed", [("new_knob", int, in_row("new_key", 0))], bases=(FinetuneConfig,))
    assert config_hash(keyed()) == base and identity_row_keys(keyed)[-1] == "new_key"
    nested = make_dataclass("Sched", [("new_knob", int, field(default=0))], bases=(ScheduleConfig,))
    assert config_hash(FinetuneConfig(schedule=nested(warmup_fraction=0.03, decay="linear"))) != base


def test_c4_identity_is_the_tokens_evaluated():
    tokens = np.random.default_rng(0).integers(0, 50_000, 2000).astype(np.uint16)
    sha = c4_identity(tokens, 64, 256)
    assert sha == c4_identity(tokens.astype(np.uint32), 64, 256)  # storage dtype: not part of it
    assert sha == c4_identity(tokens[: 256 + 1], 64)  # only the evaluated prefix counts
    later = tokens.copy()
    later[300] += 1  # beyond the evaluated prefix
    assert c4_identity(later, 64, 256) == sha
    edited = tokens.copy()
    edited[256] += 1  # the last predicted token
    assert c4_identity(edited, 64, 256) != sha
    for n, seq, cap in ((2000, 64, None), (2000, 64, 256), (2000, 64, 10), (130, 64, None), (1000, 100, 777)):
        assert predicted_tokens(n, seq, cap) == windows(tokens[:n], seq, cap)[:, 1:].size


def test_same_identity_and_rows_from_before_the_c4_identity():
    keys = ("checkpoint_sha256", "c4_tokens_sha256")
    with_c4 = {"checkpoint_sha256": "a", "c4_tokens_sha256": "x"}
    no_c4 = {"checkpoint_sha256": "a"}
    legacy = parse_row({"kind": "base", "checkpoint_sha256": "a", "c4_ppl": 5.0})
    assert predates_c4_identity(legacy)
    assert same_identity(legacy, with_c4, keys) and not same_identity(legacy, no_c4, keys)
    assert not same_identity(legacy, {**with_c4, "checkpoint_sha256": "b"}, keys)
    without = parse_row({"kind": "base", "checkpoint_sha256": "a", "val_id_ppl": 2.0})  # evaluated no C4
    assert not predates_c4_identity(without)
    assert same_identity(without, no_c4, keys) and not same_identity(without, with_c4, keys)
    new = parse_row({"kind": "base", "checkpoint_sha256": "a", "c4_tokens_sha256": "y", "c4_ppl": 5.0})
    assert not predates_c4_identity(new) and not same_identity(new, with_c4, keys)
    assert same_identity(new, {**with_c4, "c4_tokens_sha256": "y"}, keys)


@pytest.mark.usefixtures("one_thread")
def test_sweep_does_not_reuse_rows_of_other_c4_tokens(tmp_path, monkeypatch, small_c4):
    make_checkpoint(tmp_path / "pre")
    c4 = tmp_path / "c4"
    shutil.copytree(small_c4, c4)
    trained = []
    real_train = ft.train
    monkeypatch.setattr(ft, "train", lambda p, progress=True: trained.append(p.cfg.lr) or real_train(p, progress))
    run_dir = tmp_path / "sweep"
    small = ["max_examples={train: 16, validation: 8, test: 8}", "c4_max_tokens=256", "eval_batch_size=16"]
    args = lambda c4: [  # noqa: E731
        f"checkpoint={tmp_path / 'pre'}",
        "task=rte",
        f"run_dir={run_dir}",
        f"c4={c4}",
        *small,
        "max_steps=2",
        "lrs=[1e-3]",
        "tags.budget=40K",
    ]
    results = run_dir / "results.jsonl"

    run_sweep("demo", args(c4), progress=False)
    first = read_records(results)
    assert trained == [1e-3] and [r["kind"] for r in first] == ["base", "finetune", "finetune"]
    # the previous version's keys, plus the C4 identity after c4_tokens (base: after checkpoint_ref) and the
    # task_source (which data the task read; issue 16)
    old = fixture_rows()
    for new, prev in zip(first, [old[0], old[1], old[3]]):  # base, a fixed-LR row, the selected copy
        ignored = ("c4_tokens_sha256", "scores", "task_source", "optimizer", "lr_groups")  # keys added since
        assert [k for k in new if k not in ignored] == list(prev)
        assert len(new["c4_tokens_sha256"]) == 64

    # The same directory with other validation tokens (same size, same meta.json): trained again.
    info = json.loads((c4 / "meta.json").read_text())["splits"]["val"]
    val = c4 / (info["file"] if "file" in info else info["parts"][0]["file"])  # single-file or parts layout
    tokens = np.fromfile(val, dtype=np.uint16)
    tokens[10] = tokens[11]
    tokens.tofile(val)
    run_sweep("demo", args(c4), progress=False)
    rows = read_records(results)
    assert trained == [1e-3, 1e-3] and len(rows) == 6
    assert rows[3]["kind"] == "base" and rows[3]["c4_tokens_sha256"] != first[0]["c4_tokens_sha256"]
    # The same tokens in another directory: reused.
    moved = tmp_path / "moved"
    shutil.copytree(c4, moved)
    run_sweep("demo", args(moved), progress=False)
    assert trained == [1e-3, 1e-3] and len(read_records(results)) == 6

    # Rows written before the C4 identity existed: reused (with a warning) when C4 is evaluated.
    results.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "c4_tokens_sha256"}) + "\n" for r in rows)
    )
    with pytest.warns(UserWarning, match="before rows recorded their C4 tokens"):
        run_sweep("demo", args(moved), progress=False)
    assert trained == [1e-3, 1e-3] and len(read_records(results)) == 6
