"""``make gpu-check`` cannot rot while no GPU is around (issues 11, 20):

- its script's CPU dry run (tiny shapes, seconds) runs every step and writes its results file to a
  temporary directory, never into benchmarks/results/; the throughput rows come in the order the
  targets need them, each only if its time estimate fits;
- the first GPU call fails in seconds, with the fix, when the wheels did not travel or an import
  fails (the preflight); the results are on disk after every step and row, so a kill loses only
  what was running; a hung CUDA test costs that test, not the others' outcomes;
- the wheels carried to the GPU machine are resolved from pyproject.toml, cover every distribution
  the checked code imports, and are checked as a set (one version each, requirements met, protobuf
  new enough for the generated code they carry); the download and the launcher are wired (their
  commands checked without a network or a GPU).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from overtrain.core.paths import REPO_ROOT
from packaging.requirements import Requirement

pytestmark = pytest.mark.duration(30)  # seconds, about: conftest starts the longest modules first

BENCH = REPO_ROOT / "benchmarks"
IMPORT_DIR = str(
    Path(importlib.import_module("overtrain").__file__).parent.parent
)  # where `import overtrain` finds this tree
sys.path.insert(0, str(BENCH))
gpu_wheels = importlib.import_module("gpu_wheels")


def test_dry_run_runs_every_step(tmp_path):
    gpu_check = importlib.import_module("gpu_check")
    results = BENCH / "results"
    before = sorted(results.iterdir()) if results.is_dir() else []
    assert gpu_check.main(["--dry-run", "--results-dir", str(tmp_path)]) == 0
    assert (sorted(results.iterdir()) if results.is_dir() else []) == before

    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith("-dry-run.json") and files[1].endswith("-dry-run.md")
    out = json.loads((tmp_path / files[0]).read_text())
    assert out["dry_run"] is True
    assert {n: s["status"] for n, s in out["steps"].items()} == dict.fromkeys(
        ("preflight", "environment", "matmul", "tests", "pretrain", "loader", "sweep", "sharding"), "ok"
    )
    pre = out["preflight"]
    assert pre["failures"] == [] and pre["versions"]["torch"] == torch.__version__
    assert pre["versions"]["protobuf"] == importlib.metadata.version("protobuf")
    env = out["environment"]
    assert env["torch"] and env["packages"]["mup"] == "1.0.0" and isinstance(env["version_problems"], list)

    # Every CUDA test is collected, and without CUDA skipped (none fails or errors), through the guard.
    tests = out["tests"]
    assert tests["collected"] == tests["skipped"] >= 9 and tests["not_run"] == 0
    assert tests["runs"] == [{"returncode": 0, "seconds": tests["runs"][0]["seconds"]}]
    assert all(c["message"] == "needs a CUDA device (make gpu-check)" for c in tests["cases"])
    assert "test_gpu.py::test_nccl_single_process_ddp SKIPPED" in tests["output"]  # the -v output, kept

    rows = out["pretrain"]["rows"]  # the targets' compiled rows first (row_plan)
    assert [(r["impl"], r["compile"]) for r in rows] == [
        ("overtrain", "model+loss"),
        ("baseline", "model+loss"),
        ("overtrain", "no"),
        ("baseline", "no"),
    ]
    for r in rows:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["accum"] == 2 and r["loss"] > 0
        assert (r["impl"] == "overtrain") == ("ratio_vs_baseline" in r)
        assert r["estimate_s"] > 0 and r["seconds"] > 0
    assert out["loader"]["tokens_per_s"] > 0
    sweep = out["sweep"]
    assert sweep["k"] == 2 and sweep["ratio"] > 0
    assert sweep["max_loss_diff"] < 1e-4  # stacked and sequential trained the same models (fp32)
    # issue 24's rows (sharding_check): the memory plan beside the allocator's peak, FSDP vs DDP on one rank
    memory = out["sharding"]["memory"]
    assert [r["checkpointing"] for r in memory] == [False, True]
    for r in memory:
        assert r["measured_gb"] > 0 and r["estimate_gb"] > 0 and r["ratio"] > 0 and isinstance(r["within"], bool)
        assert r["tolerance"] == pytest.approx(0.1) and r["estimate_s"] > 0
    assert memory[0]["loss"] == memory[1]["loss"]  # checkpointing recomputes the same kernels (CPU: bit-equal)
    fsdp = out["sharding"]["fsdp"]
    assert fsdp["fsdp_over_ddp"] > 0 and len(fsdp["tokens_per_s"]["fsdp"]) == fsdp["repeats"]
    assert not torch.distributed.is_initialized()  # its one-rank process group is gone
    assert [t["key"] for t in out["targets"]] == ["mfu", "tps", "loader", "sweep", "memory", "fsdp"]
    assert all(t["value"] is not None and isinstance(t["met"], bool) for t in out["targets"])
    md = (tmp_path / files[1]).read_text()
    assert "## Targets" in md and "OLMo-90M MFU" in md and "test_checkpoint_moves_between_gpu_and_cpu" in md
    assert "## Memory plan vs the allocator's peak" in md and "## FSDP over one rank vs DDP" in md


def test_without_cuda_the_real_run_stops_at_the_preflight(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    results = BENCH / "results"
    before = sorted(results.iterdir()) if results.is_dir() else []
    assert importlib.import_module("gpu_check").main([]) == 3
    err = capsys.readouterr().err
    assert "FAILED torch.cuda" in err and "--dry-run" in err
    assert (sorted(results.iterdir()) if results.is_dir() else []) == before  # nothing written into the tree


def run_launcher(tmp_path, args=(), **env):
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_SITE=str(tmp_path / "site"), **env)
    t = time.monotonic()
    proc = subprocess.run(["bash", str(BENCH / "gpu_run.sh"), *args], capture_output=True, text=True, env=env)
    return proc, time.monotonic() - t


def test_missing_wheels_stop_the_launcher_at_once_with_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    proc, _ = run_launcher(tmp_path, GPU_WHEELS=str(tmp_path / "empty"), PYTHON=sys.executable)
    assert proc.returncode == 3 and proc.stdout == ""  # before any step (and any python) ran
    assert "no wheels in" in proc.stderr and "make gpu-wheels" in proc.stderr and 'carry: [".whl"]' in proc.stderr
    assert "make gpu-wheels" in (tmp_path / "out" / "gpu-check-failed.txt").read_text()  # comes back from $OUT

    (tmp_path / "broken").mkdir()  # a wheel pip cannot install: stopped too, before the check starts
    (tmp_path / "broken" / "broken-1.0-py3-none-any.whl").write_text("not a zip file")
    proc, _ = run_launcher(tmp_path, GPU_WHEELS=str(tmp_path / "broken"), PYTHON=sys.executable)
    assert proc.returncode == 3 and "gpu_preflight" not in proc.stdout
    assert "pip could not install the wheels" in proc.stderr and "make gpu-wheels" in proc.stderr


def test_a_failed_import_stops_the_check_in_its_preflight(tmp_path):
    """gpu_run.sh -> gpu_check.py with mup missing and olmo's protobuf too old (stand-ins that raise
    as the real failures do): exit 3 after the preflight, each failure with its fix, the versions
    printed, and the results file in $OUT."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "mup.py").write_text("raise ModuleNotFoundError(\"No module named 'mup'\", name='mup')\n")
    (shadow / "olmo.py").write_text(
        "class VersionError(Exception):\n    pass\n"
        "raise VersionError('Detected incompatible Protobuf Gencode/Runtime versions: gencode 6.33.5 runtime 5.29.0')\n"
    )
    proc, seconds = run_launcher(
        tmp_path,
        ["--dry-run"],
        GPU_WHEELS="none",
        PYTHON=sys.executable,
        PYTHONPATH=f"{shadow}{os.pathsep}{IMPORT_DIR}",
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    versions = next(line for line in proc.stdout.splitlines() if line.startswith("gpu_preflight: python"))
    for name in ("torch", "CUDA", "numpy", "protobuf", "pyarrow", "pandas", "transformers", "fsspec"):
        assert f"{name} " in versions, name
    assert "FAILED mup" in proc.stdout and "make gpu-wheels" in proc.stdout
    assert "FAILED olmo: VersionError" in proc.stdout and "carried protobuf" in proc.stdout
    assert "== environment" not in proc.stdout  # nothing after the preflight
    out = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("gpu-check-*.json")]
    assert len(out) == 1 and out[0]["steps"] == {"preflight": out[0]["steps"]["preflight"]}
    assert out[0]["steps"]["preflight"]["status"] == "failed"
    assert [f["module"] for f in out[0]["preflight"]["failures"]] == ["olmo", "mup"]
    assert (tmp_path / "out" / "gpu-check.log").read_text() == proc.stdout  # the whole output, in $OUT
    print(f"failed import -> exit 3 in {seconds:.1f} s")


KILLED_RUN = """
import sys, time
sys.path.insert(0, sys.argv[1])
import gpu_check, pretrain_throughput
measure, calls = pretrain_throughput.measure_fitting, []
def third_row_hangs(*args):
    calls.append(1)
    if len(calls) == 3:
        time.sleep(120)
    return measure(*args)
pretrain_throughput.measure_fitting = third_row_hangs
sys.exit(gpu_check.main(["--dry-run", "--skip", "tests", "--results-dir", sys.argv[2]]))
"""


def test_a_killed_check_leaves_every_finished_step_and_row(tmp_path):
    """SIGKILL (the device call's limit) in the third throughput row: the file on disk holds the
    finished steps and the two finished rows, the running step says so, and the Markdown too."""
    env = dict(os.environ, PYTHONPATH=IMPORT_DIR)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(BENCH), str(tmp_path)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(tmp_path.glob("gpu-check-*.json"))
        out = json.loads(files[0].read_text()) if files else None  # atomic: never half-written
        if out and len(out.get("pretrain", {}).get("rows", [])) == 2:
            break
        time.sleep(0.2)
    proc.kill()
    log = proc.communicate()[0]
    assert out and len(out["pretrain"]["rows"]) == 2, log[-3000:]
    out = json.loads(next(tmp_path.glob("gpu-check-*.json")).read_text())
    assert {n: s["status"] for n, s in out["steps"].items()} == {
        "preflight": "ok",
        "environment": "ok",
        "matmul": "ok",
        "tests": "skipped",
        "pretrain": "running",
    }
    assert [(r["impl"], r["compile"]) for r in out["pretrain"]["rows"]] == [
        ("overtrain", "model+loss"),
        ("baseline", "model+loss"),
    ]
    assert out["matmul"]["flops"] > 0 and out["environment"]["torch"] == torch.__version__
    md = next(tmp_path.glob("gpu-check-*.md")).read_text()
    assert "| pretrain | running |" in md and "model+loss" in md
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left beside


def test_sigterm_is_recorded_and_the_results_written(tmp_path, monkeypatch):
    gpu_check = importlib.import_module("gpu_check")
    monkeypatch.setattr(gpu_check.Check, "matmul", lambda self: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5))
    args = ["--dry-run", "--skip", "tests,pretrain,loader,sweep", "--results-dir", str(tmp_path)]
    assert gpu_check.main(args) == 143
    out = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {n: s["status"] for n, s in out["steps"].items()} == {
        "preflight": "ok",
        "environment": "ok",
        "matmul": "interrupted",
    }
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_row_whose_estimate_does_not_fit_is_not_started(tmp_path, monkeypatch):
    """A cold compile that would outlast the budget: the compiled rows are recorded as skipped with
    their estimate, the eager rows (seconds) still run, and nothing fails."""
    gpu_check = importlib.import_module("gpu_check")
    monkeypatch.setitem(gpu_check.DRY, "cold_compile_s", 1e4)
    args = ["--dry-run", "--skip", "tests,loader,sweep", "--budget-s", "300", "--results-dir", str(tmp_path)]
    assert gpu_check.main(args) == 0
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["pretrain"]["rows"]
    assert [(r["compile"], "tokens_per_s" in r) for r in rows] == [
        ("model+loss", False),
        ("model+loss", False),
        ("no", True),
        ("no", True),
    ]
    assert rows[0]["estimate_s"] > 1e4 and rows[0]["skipped"].startswith("time: needs ~")
    assert all(r["seconds"] > 0 and r["estimate_s"] > 0 for r in rows[2:])  # ran, with the estimate that let them


def test_the_sharding_rows_give_way_to_the_target_rows_only(tmp_path, monkeypatch):
    """The sharding step's share of the budget is kept back from every throughput row but the target
    rows (the target models' compiled overtrain rows): with a share beyond the budget, the target row
    runs, the other rows are skipped for time, and so is the step itself; nothing fails."""
    gpu_check = importlib.import_module("gpu_check")
    monkeypatch.setitem(gpu_check.DRY, "min_s", {"sharding": 1e4})
    args = ["--dry-run", "--skip", "tests,loader,sweep", "--budget-s", "300", "--results-dir", str(tmp_path)]
    assert gpu_check.main(args) == 0
    out = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = out["pretrain"]["rows"]
    assert [(r["impl"], r["compile"], "tokens_per_s" in r) for r in rows] == [
        ("overtrain", "model+loss", True),
        ("baseline", "model+loss", False),
        ("overtrain", "no", False),
        ("baseline", "no", False),
    ]
    assert out["steps"]["sharding"]["status"] == "skipped" and "sharding" not in out


def test_row_plan_puts_the_targets_compiled_rows_first():
    gpu_check = importlib.import_module("gpu_check")
    plan = gpu_check.row_plan(gpu_check.GPU["models"], gpu_check.GPU["target_models"])
    assert plan[:4] == [
        ("olmo-15m", "overtrain", "model+loss"),
        ("olmo-90m", "overtrain", "model+loss"),
        ("olmo-15m", "baseline", "model+loss"),
        ("olmo-90m", "baseline", "model+loss"),
    ]
    assert plan[4:8] == [
        ("olmo-15m", "overtrain", "no"),
        ("olmo-15m", "baseline", "no"),
        ("olmo-90m", "overtrain", "no"),
        ("olmo-90m", "baseline", "no"),
    ]
    assert [m for m, _, _ in plan[8:]] == ["olmo-30m"] * 4 and len(set(plan)) == 12


def test_row_estimate_uses_a_cold_compile_then_what_was_seen():
    est = importlib.import_module("gpu_check").row_estimate_s
    overhead = importlib.import_module("gpu_check").ROW_OVERHEAD_S
    # Nothing measured: steps at 5% of the matmul rate (1e12 FLOPs a step at 1e14/s: 0.2 s), a cold compile.
    assert est("m", True, 1e12, 7, [], 1e14, 90.0) == pytest.approx(overhead + 90 + 7 * 0.2)
    assert est("m", False, 1e12, 7, [], 1e14, 90.0) == pytest.approx(overhead + 7 * 0.2)
    seen = [{"model": "m", "compile": "model+loss", "warmup_steps": 2, "warmup_s": 41.0, "step_s": 0.5}]
    # Compile seen: 41 - 2 x 0.5 = 40 s, x 1.25; a step of this model: 1.5 x 0.5 s; another model's step from FLOPs.
    assert est("m", True, 1e12, 7, seen, 1e14, 90.0) == pytest.approx(overhead + 50 + 7 * 0.75)
    assert est("n", True, 1e12, 7, seen, 1e14, 90.0) == pytest.approx(overhead + 50 + 7 * 0.2)


GUARDED_TESTS = """
import signal, subprocess, time

def test_quick():
    pass

def test_slow():
    time.sleep(30)

def test_hangs_in_c():
    child = subprocess.Popen(["sleep", "120"])  # as a compile worker: would outlive pytest, holding the GPU
    open("child.pid", "w").write(str(child.pid))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # as a C call that never returns: no handler runs
    time.sleep(30)

def test_after_the_hang():
    pass
"""


def test_guard_times_out_a_test_and_survives_a_hang(tmp_path):
    """gpu_pytest_guard under run_pytest: a slow test fails at its timeout and the session goes on;
    one that blocks the alarm ends pytest at timeout + grace, is recorded as hung, and pytest runs
    again for the rest. Every outcome is in ``live`` (what the results file is written from)."""
    gpu_check = importlib.import_module("gpu_check")
    (tmp_path / "test_guarded.py").write_text(GUARDED_TESTS)
    env = dict(os.environ, PYTHONPATH=str(BENCH), PYTHONUNBUFFERED="1")
    live, progress = {}, []
    echo = open(os.devnull, "w")  # noqa: SIM115
    with echo:
        gpu_check.run_pytest(
            ["test_guarded.py"],
            tmp_path,
            env,
            time.monotonic() + 60,
            1.0,
            1.0,
            live,
            lambda: progress.append(1),
            echo=echo,
        )
    outcomes = {c["name"]: c["outcome"] for c in live["cases"]}
    assert outcomes == {
        "test_quick": "passed",
        "test_slow": "failed",
        "test_hangs_in_c": "hung",
        "test_after_the_hang": "passed",
    }
    slow = next(c for c in live["cases"] if c["name"] == "test_slow")
    assert "timeout: over 1 s" in slow["message"] and slow["seconds"] < 10
    assert len(live["runs"]) == 2 and live["collected"] == 4 and live["not_run"] == 0
    # The hard stop comes 2 s into the hanging test; pytest's process group goes with it: no
    # left-over child (at most a zombie not yet reaped), no wait for the 60 s deadline.
    assert live["runs"][0]["seconds"] < 30
    status = Path(f"/proc/{(tmp_path / 'child.pid').read_text()}/status")
    assert not status.exists() or "\tZ" in status.read_text().split("State:")[1].splitlines()[0]
    assert live["passed"] == 2 and live["failed"] == 1 and live["hung"] == 1
    assert (
        "test_guarded.py::test_quick PASSED" in live["output"] and "Timeout" in live["output"]
    )  # faulthandler's stacks
    assert len(progress) > 2


def test_wheel_list_is_resolved_from_pyproject():
    roots = {r.name for r in gpu_wheels.project_requirements()}
    assert {"ai2-olmo", "mup", "numpy", "transformers", "pytest"} <= roots
    assert not roots & {"lm-eval", "ruff", "import-linter"}
    carried = dict(gpu_wheels.carry_list())
    # What the image lacks and the code needs is carried, pinned to the version tested here ...
    for name in ("ai2-olmo", "mup", "omegaconf", "cached-path", "datasets"):
        assert carried[name] == importlib.metadata.version(name), name
    # ... and nothing the image has (its own builds are used) but protobuf, nor torch's CUDA stack.
    image = gpu_wheels.image_packages()
    assert {"numpy", "transformers", "tokenizers", "pyyaml", "torch", "pandas", "protobuf"} <= image
    assert set(carried) & image == set(gpu_wheels.IMAGE_OVERRIDES) == {"protobuf"}
    assert carried["protobuf"] == importlib.metadata.version("protobuf")
    assert not any(gpu_wheels.is_torch_family(n) for n in carried)


def test_closure_follows_markers_and_extras():
    index = {
        "a": ("1.0", ["b ; extra == 'x'", "c ; python_version < '3.12'", "d ; sys_platform == 'win32'", "torch>=2"]),
        "b": ("2.0", ["e>=1"]),
        "c": ("1.0", []),
        "e": ("0.5", []),
        "torch": ("2.11.0", ["nvidia-cublas"]),
    }
    nodes = gpu_wheels.closure([Requirement("a[x]>=1")], index.get, env=gpu_wheels.TARGET)
    assert set(nodes) == {"a", "b", "e", "torch"}  # c: Python 3.12 there; d: not Windows; torch's needs not followed
    assert gpu_wheels.carry_list(nodes, image=set()) == [("a", "1.0"), ("b", "2.0"), ("e", "0.5")]
    assert gpu_wheels.carry_list(nodes, image={"b"}) == [("a", "1.0"), ("e", "0.5")]
    assert gpu_wheels.version_problems(nodes) == ["e 0.5 (wanted by b: e>=1)"]
    nodes = gpu_wheels.closure([Requirement("a[x]"), Requirement("f")], index.get, env=gpu_wheels.TARGET)
    with pytest.raises(RuntimeError, match="f \\(wanted by overtrain\\)"):
        gpu_wheels.carry_list(nodes, image=set())


def test_imported_distributions_are_all_declared():
    """Every distribution that the checked code imports (gpu_check, the benchmarks, tests/test_gpu.py,
    a built model, transformers' OLMo) is on the GPU image or in the resolved closure (so carried),
    but for optional imports that happen only because this machine has the package."""
    code = textwrap.dedent(
        """
        import importlib.metadata as md, json, sys
        sys.path[:0] = [sys.argv[1], sys.argv[2]]
        import gpu_check, pretrain_throughput, sweep_throughput, test_gpu
        import overtrain.cli, overtrain.train.hf
        from overtrain.core.model import build_model
        from overtrain.core.model_spec import load_model_spec
        build_model(load_model_spec("tiny"), device="meta", init=False)
        from transformers import OlmoForCausalLM
        dists = md.packages_distributions()
        print(json.dumps(sorted({d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])})))
        """
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(BENCH), str(REPO_ROOT / "tests")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {gpu_wheels.canonicalize_name(d) for d in json.loads(proc.stdout.splitlines()[-1])}
    declared = set(gpu_wheels.closure(gpu_wheels.project_requirements(), env=gpu_wheels.TARGET))
    assert {"ai2-olmo", "mup", "torch", "transformers"} <= imported
    optional = {
        "chardet",  # requests takes it when installed, else charset-normalizer (declared, on the image)
        "pytz",  # pandas 3 imports it when installed; it is no longer a requirement
    }
    # opentelemetry-*: imported (for tracing) only when installed; the `track` extra's wandb brings it.
    optional |= {d for d in imported if d.startswith("opentelemetry")}
    assert imported - declared - gpu_wheels.image_packages() - optional - {"overtrain"} == set()


def test_download_pins_binaries_and_builds_pure_wheels(tmp_path):
    dest = tmp_path / ".whl"
    dest.mkdir()
    (dest / "keep-1.0-py3-none-any.whl").touch()  # already there: not fetched again
    (dest / "keep-0.9-py3-none-any.whl").touch()  # another version: would stop the install there
    (dest / "gone-1.0-py3-none-any.whl").touch()  # no longer needed
    calls = []

    def run(cmd):
        calls.append(cmd)
        action, spec = cmd[3], cmd[-1]
        name, version = spec.split("==")
        made = {
            ("download", "binary"): f"binary-{version}-cp312-cp312-manylinux_2_17_x86_64.whl",
            ("wheel", "source"): f"source-{version}-py3-none-any.whl",
            ("wheel", "native"): f"native-{version}-cp311-cp311-linux_x86_64.whl",
        }.get((action, name))
        if made:
            (dest / made).touch()
        return subprocess.CompletedProcess(cmd, 0 if made else 1)

    pip = ["python", "-m", "pip"]
    files = gpu_wheels.download([("keep", "1.0"), ("binary", "2.0"), ("source", "1.0")], dest, pip, run)
    assert [f.name for f in files] == [
        "binary-2.0-cp312-cp312-manylinux_2_17_x86_64.whl",
        "keep-1.0-py3-none-any.whl",
        "source-1.0-py3-none-any.whl",
    ]
    binary = calls[0]
    assert binary[:4] == [*pip, "download"] and binary[-1] == "binary==2.0"
    for arg in ("--no-deps", "--only-binary=:all:", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "cp312"):
        assert arg in binary
    assert binary[binary.index("--python-version") + 1] == "3.12"
    assert [c[3] for c in calls] == ["download", "download", "wheel"]  # source: no binary, built here
    with pytest.raises(RuntimeError, match="not installable"):
        gpu_wheels.download([("native", "1.0")], dest, pip, run)
    assert not list(dest.glob("native-*"))


def test_gpu_launcher_installs_beside_the_machines_torch(tmp_path):
    """benchmarks/gpu_run.sh, with a stand-in python3 that prints what it is asked to run."""
    fake = tmp_path / "python3"
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\necho "PYTHONPATH $PYTHONPATH"\n')
    fake.chmod(0o755)
    wheels = tmp_path / "wheels"  # the carried wheels (.whl/ on the device); the stand-in python3 installs nothing
    wheels.mkdir()
    (wheels / "mup-1.0.0-py3-none-any.whl").write_bytes(b"")
    env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out"), GPU_SITE=str(tmp_path / "site"))
    env["GPU_WHEELS"] = str(wheels)
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_run.sh"), "--skip", "pretrain"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    calls = [
        (a.removeprefix("ARGS "), p.removeprefix("PYTHONPATH ")) for a, p in zip(*[iter(proc.stdout.splitlines())] * 2)
    ]
    install, _ = calls.pop(0)  # pip first: into the site dir, offline, without touching the machine's own packages
    for arg in (
        "-m pip install",
        "--no-index",
        "--no-deps",
        f"--target {tmp_path / 'site'}",
        "mup-1.0.0-py3-none-any.whl",
    ):
        assert arg in install
    (args, path), *rest = calls
    assert not rest and args == f"benchmarks/gpu_check.py --copy-to {tmp_path / 'out'} --skip pretrain"
    path = path.split(":")
    assert path[0] == str(tmp_path / "site")
    assert (Path(path[1]) / "overtrain").resolve() == REPO_ROOT.resolve()  # `import overtrain` is this tree
    text = (BENCH / "gpu_run.sh").read_text()
    assert "--no-deps" in text and "--no-index" in text


def test_slim_drops_unread_data_from_a_wheel(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg_data/tokenizers/t.json", "{}")
        z.writestr("pkg_data/evals/big.jsonl", "x" * 1000)
        record = "pkg/__init__.py,,\npkg_data/tokenizers/t.json,,\npkg_data/evals/big.jsonl,,\n"
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    assert gpu_wheels.slim(wheel, ("pkg_data/evals/",)) == 1
    assert gpu_wheels.slim(wheel, ("pkg_data/evals/",)) == 0  # idempotent
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg_data/tokenizers/t.json"]
        assert "evals" not in z.read("pkg-1.0.dist-info/RECORD").decode()
    assert "ai2-olmo" in gpu_wheels.SLIM and all(p.startswith("olmo_data/") for p in gpu_wheels.SLIM["ai2-olmo"])


def make_wheel(dest: Path, name: str, version: str, requires=(), files=None, tag="py3-none-any") -> Path:
    wheel = dest / f"{name}-{version}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        for path, data in (files or {}).items():
            z.writestr(path, data)
    return wheel


PB2 = b"""_runtime_version.ValidateProtobufRuntimeVersion(
    _runtime_version.Domain.PUBLIC, 6, 33, 5, "", "google/rpc/error_details.proto"
)
"""


def test_check_wheels_finds_what_would_fail_on_the_gpu_machine(tmp_path, monkeypatch):
    check = gpu_wheels.check_wheels
    image = {"numpy": "2.5.2", "protobuf": None, "requests": None}  # protobuf there, its version unknown
    protos = make_wheel(tmp_path, "protos", "1.0", ["protobuf>=6", "numpy<2", "requests", "torch"], {"g/e_pb2.py": PB2})
    items = [("protos", "1.0"), ("protobuf", "6.33.5")]
    make_wheel(tmp_path, "protobuf", "6.33.5", tag="cp39-abi3-manylinux2014_x86_64")
    assert check(tmp_path, items, image) == ["protos needs numpy<2; numpy 2.5.2 on the image"]
    monkeypatch.setitem(gpu_wheels.KNOWN_DEPARTURES, ("protos", "numpy"), "runs on numpy 2")
    assert check(tmp_path, items, image) == []

    # The generated code is newer than the carried protobuf: VersionError at import, caught here.
    (tmp_path / "protobuf-6.33.5-cp39-abi3-manylinux2014_x86_64.whl").unlink()
    make_wheel(tmp_path, "protobuf", "6.31.0", tag="cp39-abi3-manylinux2014_x86_64")
    problems = check(tmp_path, [("protos", "1.0"), ("protobuf", "6.31.0")], image)
    assert len(problems) == 1 and "protoc 6.33.5" in problems[0] and "protobuf 6.31.0" in problems[0]
    # ... or the image's protobuf, of unknown version, would be imported.
    (tmp_path / "protobuf-6.31.0-cp39-abi3-manylinux2014_x86_64.whl").unlink()
    problems = check(tmp_path, [("protos", "1.0")], image)
    assert len(problems) == 1 and "version unknown" in problems[0] and "carry protobuf" in problems[0]

    # Two versions of one package, a missing and a stray wheel, a requirement nowhere, a wrong platform.
    make_wheel(tmp_path, "protos", "0.9")
    make_wheel(tmp_path, "stray", "1.0", ["nowhere>=1"], tag="cp311-cp311-manylinux_2_17_x86_64")
    problems = check(tmp_path, [("protos", "1.0"), ("missing", "2.0")], {**image, "protobuf": "7.0"})
    assert problems == [
        "two wheels of protos (protos-0.9-py3-none-any.whl, protos-1.0-py3-none-any.whl): pip stops; run `make gpu-wheels`",
        "stray-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: not installable on CPython 3.12 x86-64 manylinux",
        "missing==2.0 missing from " + str(tmp_path) + ": run `make gpu-wheels`",
        "stray-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: not in the carry list; run `make gpu-wheels`",
        "stray needs nowhere>=1: neither carried nor on the image",
    ]
    assert protos.exists()
    (tmp_path / "stray-1.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_text("not a zip")
    assert any(
        p.startswith("stray-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: not a wheel")
        for p in check(tmp_path, items, image)
    )
    assert check(tmp_path / "none", items, image) == [
        f"no wheels in {tmp_path / 'none'}: run `make gpu-wheels` (in the checkout the device tool sends)"
    ]


def test_standin_requirements_are_the_images_part_with_an_older_protobuf():
    """benchmarks/gpu_standin.sh's venv: what the image has and the check needs, at the recorded
    versions (the GPU image's torch, numpy 2, its transformers), protobuf older than the carried
    generated code, and nothing that travels as a wheel (that is installed as on the GPU machine)."""
    reqs = gpu_wheels.standin_requirements("5.29.5")
    for pin in ("torch==2.11.0", "numpy==2.5.2", "transformers==5.17.0", "protobuf==5.29.5", "pytest", "pyarrow"):
        assert pin in reqs, pin
    carried = {name for name, _ in gpu_wheels.carry_list()}
    names = {Requirement(r).name for r in reqs}
    assert not (names & carried) - {"protobuf"} and "mup" not in names and "ai2-olmo" not in names
