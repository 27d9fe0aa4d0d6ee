"""What the previous release wrote still loads, resumes and reports.

The fixture is written by the previous version itself: its source at ``PREVIOUS`` (the last
commit before the layered architecture of DESIGN.md) comes from this repository's git history
and runs in a subprocess, as a user's old installation would. It prepares C4, pre-trains the
tiny model (checkpoints every 4 steps), sweeps two fine-tuning LRs, perturbs the weights and
writes a report. The current version then
(the previous command lines took flags, ``--gammas 0.1``; this version takes ``gammas=0.1``)
- resumes the pre-training run from its step-4 checkpoint (as after a kill) to weights
  bit-identical to the ones the previous version finished with: the same computation;
- reruns the same sweep and perturbation: every row is found, nothing is trained again;
- reports the previous rows: the same tables as the previous report (the verdict is this version's:
  the previous rows have no per-example scores, so it cannot tell).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
from overtrain.cli import main
from overtrain.core.checkpoint import load_model, resolve_checkpoint
from overtrain.core.jsonl import read_records
from overtrain.core.paths import REPO_ROOT, data_root
from tables import read_csv, same_columns

PREVIOUS = "6d59156a3dd9593077e2b54e37064bdec9d8052e"
C4 = data_root() / "c4"
STEPS, EVERY = 8, 4
PRETRAIN = {
    "budget_tokens": STEPS * 128,
    "seq_len": 32,
    "global_batch_size": 4,
    "micro_batch_size": 2,
    "eval.val_tokens": 256,
    "eval.every_steps": 4,
    "eval.batch_size": 8,
    "log.every_steps": 1,
    "checkpoint.every_steps": EVERY,
    "checkpoint.keep_last": 3,
    "schedule.warmup_tokens": 256,
    "device": "cpu",
}
SWEEP = [
    "task=rte",
    "lrs=[1e-3, 1e-2]",
    "max_steps=2",
    "max_examples={train: 16, validation: 8, test: 8}",
    "c4_max_tokens=256",
    "eval_batch_size=16",
    "device=cpu",
]
# conftest: one thread (tiny ops on 2 shared cores); about 15 s (the longest modules start first)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.duration(15)]


def previous_source(dest):
    """The previous version's package, from git history (a clone has it; CI runs in a clone)."""
    proc = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", PREVIOUS], capture_output=True)
    if proc.returncode != 0:
        reason = f"git archive {PREVIOUS[:7]} failed: {proc.stderr.decode().strip()}"
        shallow = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True
        )
        if shallow.returncode == 0 and shallow.stdout.strip() == "false":
            pytest.fail(reason + " (a full clone must hold the previous release)")
        pytest.skip(reason + " (a shallow clone or no git checkout: the previous release is not here)")
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """Runs the previous version's ``python -m overtrain`` and returns the fixture's paths."""
    root = tmp_path_factory.mktemp("previous")
    previous_source(root / "pkg" / "overtrain")  # PYTHONPATH wins over the editable install's finder
    env = dict(os.environ, PYTHONPATH=str(root / "pkg"), OVERTRAIN_DATA=str(data_root()), OMP_NUM_THREADS="1")
    env["PYTHONWARNINGS"] = "ignore"

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "overtrain", *map(str, args)], cwd=root, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, (
            f"previous version: overtrain {' '.join(map(str, args[:2]))}:\n{proc.stderr[-3000:]}"
        )
        return proc

    paths = {k: root / k for k in ("c4", "pretrain", "results", "report")}
    run("prepare-data", "--out", paths["c4"], "--train", C4 / "c4-sample.00000-of-00001.json.gz",
        "--val", C4 / "c4-sample.01.json.gz", "--max-docs", "40")  # fmt: skip
    run(
        "pretrain",
        "demo",
        f"data.dir={paths['c4']}",
        f"run_dir={paths['pretrain']}",
        *(f"{k}={v}" for k, v in PRETRAIN.items()),
    )
    run(
        "sweep",
        "demo",
        f"checkpoint={paths['pretrain']}",
        f"c4={paths['c4']}",
        f"run_dir={paths['results'] / 'sweep'}",
        *SWEEP,
    )
    run("perturb", paths["pretrain"], "--gammas", "0.1", "--seeds", "0", "--c4", paths["c4"], "--val-tokens", "128",
        "--device", "cpu", "--results", paths["results"] / "perturb.jsonl")  # fmt: skip
    run("report", paths["results"] / "sweep", paths["results"] / "perturb.jsonl", "--out", paths["report"])
    return paths


def test_previous_checkpoints_load_and_resume_bit_identically(old, tmp_path):
    final = resolve_checkpoint(old["pretrain"])
    model, spec, meta = load_model(final)
    assert meta["step"] == STEPS and meta["final"] and meta["lr_decayed"] and spec.name == "tiny"
    assert resolve_checkpoint(f"{old['pretrain']}@tokens={EVERY * 128}").name == f"step-{EVERY:08d}"

    # A kill after the step-4 checkpoint: later checkpoints, the summary and `latest` are not there yet.
    run = tmp_path / "pretrain"
    shutil.copytree(old["pretrain"], run)
    ckpts = run / "checkpoints"
    for d in ckpts.glob("step-*"):
        if int(d.name.split("-")[1]) > EVERY:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"step-{EVERY:08d}\n")
    (run / "summary.json").unlink()
    overrides = [f"data.dir={old['c4']}", f"run_dir={run}", *(f"{k}={v}" for k, v in PRETRAIN.items())]
    assert main(["pretrain", "demo", *overrides]) == 0

    want = torch.load(final / "model.pt", weights_only=True)
    got = torch.load(resolve_checkpoint(run) / "model.pt", weights_only=True)
    assert want.keys() == got.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # same data order, same ops: exact


def test_previous_rows_resume_without_new_work(old, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(old["results"], results)
    sweep_rows = results / "sweep" / "results.jsonl"
    before = sweep_rows.read_text()
    assert (
        main(
            [
                "sweep",
                "demo",
                f"checkpoint={old['pretrain']}",
                f"c4={old['c4']}",
                f"run_dir={results / 'sweep'}",
                *SWEEP,
            ]
        )
        == 0
    )
    assert sweep_rows.read_text() == before  # both LRs and the selection were found: nothing retrained

    perturb_rows = results / "perturb.jsonl"
    before = perturb_rows.read_text()
    perturb = ["gammas=0.1", "seeds=0", f"c4={old['c4']}", "val_tokens=128", "device=cpu", f"results={perturb_rows}"]
    assert main(["perturb", str(old["pretrain"]), *perturb]) == 0
    assert perturb_rows.read_text() == before
    assert [r["kind"] for r in read_records(sweep_rows)] == ["base", "finetune", "finetune", "finetune"]
    assert [(r["kind"], r["gamma"]) for r in read_records(perturb_rows)] == [("perturb", 0.1)]


def test_previous_rows_report_the_same_tables(old, tmp_path):
    out = tmp_path / "report"
    sources = [str(old["results"] / "sweep"), str(old["results"] / "perturb.jsonl")]
    assert main(["report", *sources, f"out={out}"]) == 0
    for name in ("summary.csv", "perturb.csv"):
        assert same_columns(read_csv(out / name), read_csv(old["report"] / name)), name
    tables = lambda text: [x for x in text.splitlines() if x.startswith("|")]  # noqa: E731
    new_text = (out / "report.md").read_text()
    assert tables(new_text) == tables((old["report"] / "report.md").read_text())
    assert "cannot tell" in new_text  # the verdict is this version's: no per-example scores in the previous rows
