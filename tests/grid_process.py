"""``overtrain grid run GRID [key=value ...]`` started as a process of its own session (so that a test
can kill the runner and every job with one ``os.killpg``), its output piped, merged and text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_grid_run(grid: Path, *settings: str, env: dict, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "overtrain", "grid", "run", str(grid), *settings],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
