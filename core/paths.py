"""Where things are: the package root (the repository root is the package ``overtrain``), the
config hub inside it (travels in the wheel), the real datasets (``$OVERTRAIN_DATA``), and the
expansion of ``${OVERTRAIN_DATA}``, ``$VARS`` and ``~`` in path-like config values."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the repository root is the package
CONFIG_ROOT = REPO_ROOT / "configs"


def data_root() -> Path:
    """Where the real datasets live: ``$OVERTRAIN_DATA`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("OVERTRAIN_DATA")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return root.resolve()  # one spelling of every data path, also through a symlinked shared/


def expand_path(value: str | os.PathLike) -> str:
    """Expand ``${OVERTRAIN_DATA}``, ``$VARS`` and ``~`` in a path-like config value."""
    text = str(value)
    if "${OVERTRAIN_DATA}" in text or "$OVERTRAIN_DATA" in text:
        text = text.replace("${OVERTRAIN_DATA}", str(data_root())).replace("$OVERTRAIN_DATA", str(data_root()))
    return os.path.expanduser(os.path.expandvars(text))
