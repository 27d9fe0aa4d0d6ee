"""Checkpoint integrity: SHA256SUMS written with every checkpoint; a damaged latest checkpoint
(truncated, one flipped bit, or an old checkpoint without SHA256SUMS whose archive is cut) is
passed over on resume for the newest intact one, with a warning naming both, and the resumed run
ends bit-identical to the undamaged one."""

import json
import shutil

import pytest
import torch
from overtrain.core.checkpoint import (
    MANIFEST,
    DamagedCheckpointWarning,
    file_sha256,
    resume_checkpoint,
    verify_checkpoint,
)
from overtrain.core.config import load_config
from overtrain.core.errors import CheckpointError
from overtrain.train.pretrain import PretrainConfig, pretrain

STEPS = 6


def _cfg(data_dir, run_dir):
    kw = {
        "data.dir": data_dir,
        "run_dir": run_dir,
        "budget_tokens": STEPS * 128,
        "seq_len": 32,
        "global_batch_size": 4,
        "micro_batch_size": 4,
        "eval.val_tokens": 128,
        "eval.every_steps": 0,
        "checkpoint.every_steps": 2,
        "checkpoint.keep_last": 10,
        "schedule.warmup_tokens": 256,
        "device": "cpu",
    }
    return load_config(PretrainConfig, "demo", [f"{k}={v}" for k, v in kw.items()], kind="pretrain")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_c4, one_thread):
    run_dir = tmp_path_factory.mktemp("intact") / "run"
    pretrain(_cfg(small_c4, run_dir))
    return run_dir


def test_manifest_lists_every_file(finished):
    step = finished / "checkpoints" / f"step-{STEPS:08d}"
    lines = (step / MANIFEST).read_text().splitlines()
    names = {line.split("  ")[1] for line in lines}
    assert names == {"model.pt", "optim.pt", "state.pt", "model.yaml", "meta.json"}
    for line in lines:
        h, name = line.split("  ")
        assert file_sha256(step / name) == h
    assert verify_checkpoint(step) == []


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip(f):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))


@pytest.mark.parametrize(
    "damage",
    [
        ("model.pt", _truncate, True),
        ("optim.pt", _flip, True),
        ("model.pt", _truncate, False),  # a checkpoint from before SHA256SUMS: the zip CRCs catch it
    ],
    ids=["truncated", "bit-flip", "old-format-truncated"],
)
def test_damaged_latest_falls_back_and_resumes_exactly(tmp_path, small_c4, one_thread, finished, damage):
    name, hurt, manifest = damage
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "summary.json").unlink()  # as if killed after the final checkpoint
    ckpts = run_dir / "checkpoints"
    latest, previous = ckpts / f"step-{STEPS:08d}", ckpts / f"step-{STEPS - 2:08d}"
    if not manifest:
        for d in ckpts.glob("step-*"):
            (d / MANIFEST).unlink()
    hurt(latest / name)
    assert verify_checkpoint(latest) and verify_checkpoint(previous) == []

    with pytest.warns(DamagedCheckpointWarning) as got:
        assert resume_checkpoint(ckpts) == previous
    assert str(latest) in str(got[0].message) and str(previous) in str(got[0].message)

    cfg = _cfg(small_c4, run_dir)
    cfg.run_dir = str(run_dir)
    with pytest.warns(DamagedCheckpointWarning):
        summary = pretrain(cfg)
    assert summary["resumes"] == 1
    assert verify_checkpoint(latest) == [] or not manifest
    wa = torch.load(latest / "model.pt", weights_only=True)
    wb = torch.load(finished / "checkpoints" / latest.name / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    ref = json.loads((finished / "summary.json").read_text())
    assert summary["c4_val_ppl"] == ref["c4_val_ppl"]


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path, finished):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(finished / "checkpoints", ckpts)
    for d in ckpts.glob("step-*"):
        _truncate(d / "model.pt")
    with pytest.raises(CheckpointError, match="every checkpoint .* is damaged"):
        resume_checkpoint(ckpts)
