"""Trackers for every stage (``core.tracker``): wandb / TensorBoard when asked, grouped, resumable.

The plumbing is tested here with in-memory stand-ins for ``wandb`` and TensorBoard's writer (what
each stage sends: project, group, job type, config with provenance, scalars at their steps, the
results row as summary, the same wandb id on a rerun). The real packages are tested at the end,
offline (``WANDB_MODE=offline``; TensorBoard event files read back); those tests skip unless the
``track`` extra is installed: pip install 'wandb>=0.19' 'tensorboard>=2.15'.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from collections import defaultdict

import pytest
from overtrain.cli import main
from overtrain.core import tracker as tracker_mod
from overtrain.core.jsonl import read_records
from overtrain.finetune.sweep import run_sweep
from test_finetune import make_checkpoint

SMALL = [
    "max_examples={train: 16, validation: 8, test: 8}",
    "c4_max_tokens=256",
    "eval_batch_size=16",
    "max_steps=3",
    "log_every=1",
]
pytestmark = pytest.mark.usefixtures("one_thread")


class FakeRun:
    def __init__(self, store, **kw):
        self.kw, self.logged, self.summary, self.finished = kw, [], {}, False
        store.append(self)

    def log(self, values, step=None):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


class FakeWriter:
    writers: list = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.texts, self.closed = log_dir, defaultdict(list), [], False
        FakeWriter.writers.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars[tag].append((step, value))

    def add_text(self, tag, text, step):
        self.texts.append(tag)

    def close(self):
        self.closed = True


@pytest.fixture()
def fake_trackers(monkeypatch):
    """A stand-in ``wandb`` module and TensorBoard writer; both 'installed' and wandb logged in."""
    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: FakeRun(runs, **kw)
    fake.Image = lambda path: ("image", path)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        tracker_mod.importlib.util,
        "find_spec",
        lambda n, *a: object() if n in ("wandb", "tensorboard") else real_find(n, *a),
    )
    FakeWriter.writers = []
    monkeypatch.setattr(tracker_mod, "_tensorboard_writer", FakeWriter)
    return runs


def test_sweep_runs_are_tracked_grouped_and_resumed(tmp_path, small_c4, fake_trackers):
    make_checkpoint(tmp_path / "pre")
    run_dir = tmp_path / "sweep"
    args = [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={run_dir}", f"c4={small_c4}", *SMALL]
    track = ["log.wandb=true", "log.tensorboard=true", "log.wandb_project=my-grid", "lrs=[1e-3, 0.1]"]
    rows = run_sweep("demo", args + track, progress=False)

    runs = fake_trackers
    assert len(runs) == 2 and all(r.finished for r in runs)
    groups = {r.kw["group"] for r in runs}
    (group,) = groups  # one (checkpoint, task): one group
    assert group.startswith("tiny 40960 tokens [") and group.endswith("/ rte")
    assert {r.kw["project"] for r in runs} == {"my-grid"} and {r.kw["job_type"] for r in runs} == {"finetune"}
    for r, row in zip(runs, rows):
        assert (
            r.kw["config"]["lr"] == row["lr"]
            and r.kw["config"]["provenance"]["checkpoint_sha256"] == row["checkpoint_sha256"]
        )
        assert r.kw["resume"] == "allow"
        assert [s for s, _ in r.logged] == [0, 1, 2] and "loss" in r.logged[0][1]
        assert r.summary["val_id_ppl"] == row["val_id_ppl"] and r.summary["lr"] == row["lr"]
        lr_dir = run_dir / f"lr-{row['lr']:.3e}"
        assert json.loads((lr_dir / "tracker.json").read_text())["wandb_id"] == r.kw["id"]
    assert len({r.kw["id"] for r in runs}) == 2
    tb = FakeWriter.writers
    assert len(tb) == 2 and all(w.closed for w in tb) and [s for s, _ in tb[0].scalars["loss"]] == [0, 1, 2]
    assert tb[0].scalars["final/val_id_ppl"] == [(3, rows[0]["val_id_ppl"])] and "config" in tb[0].texts

    # A rerun of an LR's run dir (a sweep whose rows were lost) continues the same wandb run.
    ids = [r.kw["id"] for r in runs]
    (run_dir / "results.jsonl").unlink()
    run_sweep("demo", args + track, progress=False)
    assert [r.kw["id"] for r in runs[2:]] == ids


def test_perturb_and_report_are_tracked(tmp_path, small_c4, fake_trackers):
    ckpt = make_checkpoint(tmp_path / "pre")
    results = tmp_path / "perturb" / "results.jsonl"
    log = ["log.wandb=true", "log.tensorboard=true"]
    argv = ["perturb", str(ckpt), "gammas=[0.1, 0.5]", f"c4={small_c4}", "val_tokens=256", f"results={results}"]
    assert main(argv + log) == 0
    (run,) = fake_trackers
    assert run.kw["job_type"] == "perturb" and run.kw["group"].endswith("/ perturb")
    rows = read_records(results)
    assert [v["c4_ppl"] for _, v in run.logged] == [r["c4_ppl"] for r in rows]
    assert (tmp_path / "perturb" / "tracker.json").is_file()

    out = tmp_path / "report"
    assert main(["report", str(results), f"out={out}", *log]) == 0
    report_run = fake_trackers[1]
    assert report_run.kw["job_type"] == "report" and report_run.finished
    steps = [s for s, _ in report_run.logged if s is not None]
    assert steps == sorted(steps) and steps[0] == 40960  # points at step = pre-training tokens
    noise = {k: v for _, d in report_run.logged for k, v in d.items() if "/noise/" in k}
    assert noise  # the noise-sensitivity curves
    tb = FakeWriter.writers[-1]
    assert any(tag.startswith("base/noise/gamma=") for tag in tb.scalars)


def test_pretraining_is_tracked_and_resumes_the_same_run(tmp_path, small_c4, fake_trackers):
    from test_pretrain import overrides

    run_dir = tmp_path / "pre"
    args = overrides(small_c4, run_dir, budget_tokens=512) + ["log.wandb=true", "log.tensorboard=true"]
    assert main(["pretrain", "demo", *args]) == 0
    (run,) = fake_trackers
    assert run.kw["job_type"] == "pretrain" and run.kw["config"]["budget_tokens"] == 512 and run.finished
    assert [s for s, d in run.logged if "loss" in d] == [1, 2, 3, 4]
    assert json.loads((run_dir / "tracker.json").read_text())["wandb_id"] == run.kw["id"]
    # a second session in the same run dir (here: resumed from step 2) continues the same tracker run
    for ck in sorted((run_dir / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(ck)
    (run_dir / "summary.json").unlink()
    assert main(["pretrain", "demo", *args]) == 0
    assert len(fake_trackers) == 2 and fake_trackers[1].kw["id"] == run.kw["id"]


@pytest.mark.parametrize("flag", ["wandb", "tensorboard"])
def test_tracker_not_installed_fails_before_work(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.setattr(tracker_mod.importlib.util, "find_spec", lambda n, *a: None)
    run_dir = tmp_path / "sweep"
    argv = ["sweep", "demo", f"checkpoint={tmp_path / 'nope'}", "task=rte", f"run_dir={run_dir}", f"log.{flag}=true"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"log.{flag}=true but the '{flag}' package is not installed: pip install" in err and "[track]" in err
    assert not run_dir.exists()
    out = tmp_path / "report"
    assert main(["report", str(tmp_path), f"out={out}", f"log.{flag}=true"]) == 2
    assert "not installed" in capsys.readouterr().err and not out.exists()


def test_wandb_without_login_fails_before_work(tmp_path, monkeypatch, capsys):
    real_find = importlib.util.find_spec
    monkeypatch.setattr(
        tracker_mod.importlib.util, "find_spec", lambda n, *a: object() if n == "wandb" else real_find(n, *a)
    )
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["sweep", "demo", f"checkpoint={tmp_path / 'nope'}", "task=rte", "log.wandb=true"]
    assert main(argv) == 2
    assert "wandb has no login: run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline" in capsys.readouterr().err
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password k\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracker_mod._wandb_logged_in()


# ------------------------------------------------------------------ the real packages (extra: track)


def test_tensorboard_scalars_read_back(tmp_path, small_c4):
    pytest.importorskip("tensorboard", reason="TensorBoard not installed: pip install 'tensorboard>=2.15'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_checkpoint(tmp_path / "pre")
    run_dir = tmp_path / "sweep"
    args = [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={run_dir}", f"c4={small_c4}", *SMALL]
    (row, _) = run_sweep("demo", args + ["lrs=[1e-3]", "log.tensorboard=true"], progress=False)
    acc = EventAccumulator(str(run_dir / "lr-1.000e-03" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [0, 1, 2]
    (final,) = acc.Scalars("final/val_id_ppl")
    assert final.value == pytest.approx(row["val_id_ppl"], rel=1e-6)


def test_wandb_offline_run_resumes_same_id(tmp_path, small_c4, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'wandb>=0.19'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    make_checkpoint(tmp_path / "pre")
    run_dir = tmp_path / "sweep"
    args = [f"checkpoint={tmp_path / 'pre'}", "task=rte", f"run_dir={run_dir}", f"c4={small_c4}", *SMALL]
    run_sweep("demo", args + ["lrs=[1e-3]", "log.wandb=true", "log.wandb_project=t"], progress=False)
    lr_dir = run_dir / "lr-1.000e-03"
    run_id = json.loads((lr_dir / "tracker.json").read_text())["wandb_id"]
    offline = sorted((lr_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline, list((lr_dir / "wandb").iterdir())


def test_grid_passes_one_project_to_every_tracked_job(tmp_path, fake_trackers):
    from overtrain.core.paths import CONFIG_ROOT
    from overtrain.launch.plan import expand
    from overtrain.launch.spec import grid_fingerprint, load_grid

    demo = str(CONFIG_ROOT / "grids" / "demo.yaml")
    plain = load_grid(demo, [f"results_dir={tmp_path}"])
    spec = load_grid(demo, [f"results_dir={tmp_path}", "log={tensorboard: true, wandb: true}"])
    jobs = expand(spec)
    tracked = [j for j in jobs if j.kind in ("pretrain", "sweep", "perturb", "report")]
    assert tracked and all("log.wandb_project=demo" in j.argv and "log.tensorboard=true" in j.argv for j in tracked)
    assert not any(a.startswith("log.") for j in expand(plain) for a in j.argv if j.kind != "pretrain" or "log.w" in a)
    assert grid_fingerprint(plain) == grid_fingerprint(spec)  # trackers do not change results
    from overtrain import cli

    for kind in ("pretrain", "sweep", "perturb", "report"):  # every tracked command accepts the settings
        job = next(j for j in tracked if j.kind == kind)
        log = cli.parse_command(cli.COMMANDS[job.argv[0]], job.argv[1:]).config.log
        assert log.tensorboard is True and log.wandb_project == "demo"
