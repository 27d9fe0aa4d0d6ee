"""``make gpu-check`` cannot rot while no GPU is around (issue 11):

- its script's CPU dry run (tiny shapes, seconds) runs every step and writes its results file to a
  temporary directory, never into benchmarks/results/;
- the wheels carried to the GPU machine are resolved from pyproject.toml, and cover every
  distribution the checked code imports; the download and the GPU machine's launcher are wired
  (their commands checked without a network or a GPU).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from overtrain.core.config import REPO_ROOT
from packaging.requirements import Requirement

BENCH = REPO_ROOT / "benchmarks"
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
        ("environment", "matmul", "tests", "loader", "sweep", "pretrain"), "ok"
    )
    env = out["environment"]
    assert env["torch"] and env["packages"]["mup"] == "1.0.0" and isinstance(env["version_problems"], list)

    # Every CUDA test is collected, and without CUDA skipped (none fails or errors).
    tests = out["tests"]
    assert tests["collected"] == tests["skipped"] >= 9 and tests["returncode"] == 0

    rows = out["pretrain"]["rows"]
    assert [(r["impl"], r["compile"]) for r in rows] == [
        ("overtrain", "no"),
        ("baseline", "no"),
        ("overtrain", "model+loss"),
        ("baseline", "model+loss"),
    ]
    for r in rows:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["accum"] == 2 and r["loss"] > 0
        assert (r["impl"] == "overtrain") == ("ratio_vs_baseline" in r)
    assert out["loader"]["tokens_per_s"] > 0
    sweep = out["sweep"]
    assert sweep["k"] == 2 and sweep["ratio"] > 0
    assert sweep["max_loss_diff"] < 1e-4  # stacked and sequential trained the same models (fp32)
    assert [t["key"] for t in out["targets"]] == ["mfu", "tps", "loader", "sweep"]
    assert all(t["value"] is not None and isinstance(t["met"], bool) for t in out["targets"])
    md = (tmp_path / files[1]).read_text()
    assert "## Targets" in md and "OLMo-90M MFU" in md and "test_checkpoint_moves_between_gpu_and_cpu" in md


def test_without_cuda_the_real_run_refuses(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    assert importlib.import_module("gpu_check").main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_wheel_list_is_resolved_from_pyproject():
    roots = {r.name for r in gpu_wheels.project_requirements()}
    assert {"ai2-olmo", "mup", "numpy", "transformers", "pytest"} <= roots
    assert not roots & {"lm-eval", "ruff", "import-linter"}
    carried = dict(gpu_wheels.carry_list())
    # What the image lacks and the code needs is carried, pinned to the version tested here ...
    for name in ("ai2-olmo", "mup", "omegaconf", "cached-path", "datasets"):
        assert carried[name] == importlib.metadata.version(name), name
    # ... and nothing the image has (its own builds are used), nor torch's CUDA stack.
    image = gpu_wheels.image_packages()
    assert {"numpy", "transformers", "tokenizers", "pyyaml", "torch", "pandas"} <= image
    assert not set(carried) & image
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
        from overtrain.core.model import build_model, load_model_spec
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
    env = dict(os.environ, PYTHON=str(fake), OUT=str(tmp_path / "out"), GPU_SITE=str(tmp_path / "site"))
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_run.sh"), "--skip", "pretrain"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    calls = [
        (a.removeprefix("ARGS "), p.removeprefix("PYTHONPATH ")) for a, p in zip(*[iter(proc.stdout.splitlines())] * 2)
    ]
    wheels = sorted((REPO_ROOT / ".whl").glob("*.whl"))
    if wheels:  # pip first: into the site dir, offline, without touching the machine's own packages
        install, _ = calls.pop(0)
        for arg in ("-m pip install", "--no-index", "--no-deps", f"--target {tmp_path / 'site'}", wheels[0].name):
            assert arg in install
    (args, path), *rest = calls
    assert not rest and args == f"benchmarks/gpu_check.py --copy-to {tmp_path / 'out'} --skip pretrain"
    path = path.split(":")
    assert path[0] == str(tmp_path / "site")
    assert (Path(path[1]) / "overtrain").resolve() == REPO_ROOT.resolve()  # `import overtrain` is this tree
    text = (BENCH / "gpu_run.sh").read_text()
    assert "--no-deps" in text and "--no-index" in text


def test_slim_drops_unread_data_from_a_wheel(tmp_path):
    import zipfile

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
