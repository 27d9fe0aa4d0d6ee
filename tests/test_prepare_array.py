"""prepare-data as a Slurm job array: ``stage=plan`` once, ``stage=shards task=I/T`` per task
(concurrently), ``stage=merge`` last, equal byte for byte to one ``prepare-data`` run; out-of-order
or mismatched stages are one clear error; and the batch files ``grid slurm prepare_tasks=T`` writes,
run by bash with a pass-through ``srun``, do the same (two array tasks at once)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from overtrain import cli
from overtrain.core.errors import ConfigError
from overtrain.core.paths import data_root
from overtrain.data.c4.sharded import task_range

C4 = data_root() / "c4"
N_SHARDS = 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """200 documents of the sample cut into 5 gzipped JSON-lines shards."""
    d = tmp_path_factory.mktemp("shards")
    lines = gzip.open(C4 / "c4-sample.00000-of-00001.json.gz", "rb").read().splitlines(keepends=True)[:200]
    for k in range(N_SHARDS):
        (d / f"c4-train.{k:05d}.json.gz").write_bytes(gzip.compress(b"".join(lines[k::N_SHARDS])))
    return d


def _settings(out, shards, *more) -> list[str]:
    return [f"out={out}", f"train={shards}/c4-train.*.json.gz", f"val={C4}/c4-sample.0[12].json.gz", *more]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, shards):
    out = tmp_path_factory.mktemp("whole") / "c4"
    assert cli.main(["prepare-data", *_settings(out, shards)]) == 0
    return out


def _snapshot(out: Path) -> dict:
    """Every file's bytes; meta.json without its timing fields."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    meta = json.loads(files.pop("meta.json"))
    meta.pop("created"), meta.pop("seconds")
    return files | {"meta.json": meta}


def _env() -> dict:
    return os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("n", [0, 1, 5, 7, 100])
@pytest.mark.parametrize("t", [1, 2, 3, 8])
def test_task_ranges_are_contiguous_and_cover_every_shard_once(n, t):
    ranges = [task_range(f"{i}/{t}", n) for i in range(t)]
    assert [i for r in ranges for i in r] == list(range(n))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match=f"task={bad}: expected I/T"):
            task_range(bad, n)


def test_plan_then_concurrent_tasks_then_merge_equals_one_run(tmp_path, shards, whole, capsys):
    out = tmp_path / "c4"
    assert cli.main(["prepare-data", *_settings(out, shards, "stage=shards", "task=0/2")]) == 2
    assert "plan.json: missing; run prepare-data stage=plan (once) before stage=shards" in capsys.readouterr().err
    assert cli.main(["prepare-data", *_settings(out, shards, "stage=plan")]) == 0
    assert "planned" in capsys.readouterr().out and not list((out / "train").glob("part-*"))

    # The merge before the tasks: an error naming the missing parts; nothing looks finished.
    assert cli.main(["prepare-data", *_settings(out, shards, "stage=merge")]) == 2
    err = capsys.readouterr().err
    assert "5 parts are not finished (train/part-00000, train/part-00001" in err and "stage=shards task=I/T" in err
    # A task with other settings than the plan's is refused.
    assert cli.main(["prepare-data", *_settings(out, shards, "stage=shards", "task=0/2", "text_field=body")]) == 2
    assert "written by stage=plan with other settings (text_field differ)" in capsys.readouterr().err

    # Two array tasks at once, as Slurm runs them (each its own process and shards).
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "overtrain", "prepare-data", *_settings(out, shards, "stage=shards", f"task={i}/2")],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "task 0/2: shards 0-1: 2 parts" in outs[0][0] and "task 1/2: shards 2-4: 3 parts" in outs[1][0]
    assert not (out / "meta.json").exists()
    assert cli.main(["prepare-data", *_settings(out, shards, "stage=merge")]) == 0
    assert _snapshot(out) == _snapshot(whole)
    # A task requeued after the merge finds the dataset finished.
    assert cli.main(["prepare-data", *_settings(out, shards, "stage=shards", "task=1/2")]) == 0
    assert "already finished" in capsys.readouterr().err


def test_stage_settings_are_checked_before_anything(tmp_path, shards, capsys):
    for more, msg in [
        (["stage=shards"], "task=I/T goes with stage=shards"),
        (["task=0/2"], "task=I/T goes with stage=shards"),
        (["stage=shards", "task=2/2"], "task=2/2: expected I/T"),
        (["stage=split"], "stage='split': expected one of all, plan, shards, merge"),
        (["stage=plan", "layout=single"], "stage=plan is for layout=parts"),
    ]:
        assert cli.main(["prepare-data", *_settings(tmp_path / "x", shards, *more)]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_grid_slurm_prepare_array_scripts_run_by_bash(tmp_path, shards, whole):
    """The three batch files of ``prepare_tasks=2``, run as Slurm would: plan, both array tasks at once, merge."""
    import yaml

    results = tmp_path / "results"
    grid = {
        "name": "prep",
        "results_dir": str(results),
        "prepare": {"train": [f"{shards}/c4-train.*.json.gz"], "val": [f"{C4}/c4-sample.0[12].json.gz"], "out": "data/c4"},
        "pretrain": {"config": "configs/pretrain/demo.yaml", "models": ["tiny"], "budgets": ["10K"]},
    }  # fmt: skip
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    assert cli.main(["grid", "slurm", str(tmp_path / "grid.yaml"), "gpus_per_node=0", "prepare_tasks=2"]) == 0
    slurm = results / "slurm"
    text = (slurm / "prepare_shards.sbatch").read_text()
    assert "#SBATCH --array=0-1" in text and '"task=$SLURM_ARRAY_TASK_ID/2"' in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')  # a job step here: just the command
    (bin_dir / "srun").chmod(0o755)
    env = _env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "9"}

    def sbatch(name: str, **more) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", str(slurm / name)], env=env | more, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def ok(*procs):
        logs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * len(procs), logs

    ok(sbatch("prepare_plan.sbatch"))
    ok(*(sbatch("prepare_shards.sbatch", SLURM_ARRAY_JOB_ID="10", SLURM_ARRAY_TASK_ID=str(i)) for i in range(2)))
    ok(sbatch("prepare.sbatch"))
    assert _snapshot(results / "data" / "c4") == _snapshot(whole)
