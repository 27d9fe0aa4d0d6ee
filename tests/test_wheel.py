"""A built wheel works anywhere: configs travel as package data, and the installed package (not this
checkout) answers `overtrain info` and `overtrain grid plan` from another directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_configs_and_runs_from_elsewhere(tmp_path):
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Built from a copy: setuptools keeps a build/ folder in the source tree, whose stale files would
    # otherwise travel into later wheels.
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", ".whl", "build", "runs", "out", "__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # --no-build-isolation: the build backend (setuptools) is already in this venv; no index needed.
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src], check=True, capture_output=True
    )
    (wheel,) = dist.glob("overtrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    hub = {
        f"overtrain/{p.relative_to(REPO).as_posix()}"
        for p in (REPO / "configs").rglob("*")
        if p.suffix in (".yaml", ".py")
    }
    assert hub and not hub - names, f"configs missing from the wheel: {sorted(hub - names)[:5]}"

    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, capture_output=True)
    # PYTHONPATH precedes the editable install's finder, so `overtrain` resolves to the installed copy.
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*argv: str) -> str:
        done = subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = run(sys.executable, "-c", "import overtrain.core.config as c; print(c.CONFIG_ROOT)").strip()
    assert Path(where) == site / "overtrain" / "configs"
    assert "non-embedding parameters" in run(str(site / "bin" / "overtrain"), "info", "olmo-30m")
    assert "grid 'paper'" in run(str(site / "bin" / "overtrain"), "grid", "plan", "paper")
