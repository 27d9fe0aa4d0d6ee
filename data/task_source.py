"""Which of a task's sources to read (``source.prefer``), and whether the hub can be reached.

``local`` reads the local files when they all exist, else the hub; ``hub`` only the hub;
``hub_or_local`` the hub unless it cannot be reached (``OVERTRAIN_OFFLINE=1``, HF offline mode
without a cached copy, or no TCP connection to the hub endpoint within 3 s), then the local files.
A reachable hub that fails to load is an error (``data.tasks``), not a fallback: a silent switch
of data would change the experiment. The choice and its reason go into ``Task.source``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..core.errors import DataError
from .task_files import read_split, resolve_data_path
from .task_spec import HubTaskSource, LocalTaskSource, TaskSpec, split_specs


def choose_source(spec: TaskSpec, base: Path) -> tuple[str, LocalTaskSource | HubTaskSource, str]:
    """(kind "local" | "hub", the source spec, a note saying why when it is not the preferred one)."""
    src = spec.source
    if src.prefer == "hub_or_local":
        why = hub_unreachable()
        if not why:
            return "hub", src.hub, ""
        if _hub_offline_mode():  # offline mode still reads a cached copy: try it (fails fast)
            try:
                for ss in split_specs(src.hub).values():
                    if not ss.carve_from:
                        read_split("hub", src.hub, ss, base)
                return "hub", src.hub, "HF offline mode: the cached copy"
            except DataError as e:
                why = f"{why}; no cached copy ({str(e)[:120]})"
        missing = [p for p in _local_paths(src.local, base) if not p.exists()]
        if missing:
            raise DataError(f"task {spec.name}: the hub is unreachable ({why}) and {missing[0]} does not exist")
        return "local", src.local, f"hub {src.hub.path} unreachable: {why}"
    if src.local is not None and not (src.prefer == "hub" and src.hub is not None):
        missing = [p for p in _local_paths(src.local, base) if not p.exists()]
        if not missing:
            return "local", src.local, ""
        if src.hub is None:
            raise DataError(f"task {spec.name}: {missing[0]}: no such file (source.local)")
        return "hub", src.hub, f"local data missing ({missing[0]}), loaded from the hub"
    return "hub", src.hub, ""


def _hub_offline_mode() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_unreachable(timeout: float = 3.0) -> str:
    """Why the Hugging Face hub cannot be reached ('' when it can): ``OVERTRAIN_OFFLINE`` (do not try
    the hub at all: demos, tests), HF offline mode, or no TCP connection
    to the endpoint (``HF_ENDPOINT``) within ``timeout`` seconds. A fast probe: ``datasets`` itself
    retries for ~25 s before giving up on a machine without network."""
    if os.environ.get("OVERTRAIN_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "OVERTRAIN_OFFLINE is set"
    if _hub_offline_mode():
        return "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"no connection to {url.hostname}:{port} ({type(e).__name__}: {e})"
    return ""


def _local_paths(src: LocalTaskSource, base: Path) -> list[Path]:
    paths = []
    for ss in split_specs(src).values():
        for text in [ss.path, ss.labels, *ss.files.values()]:
            if text:
                paths.append(resolve_data_path(text, base))
    return paths
