"""Atomic outputs: a file, a directory or a figure is either whole or absent, never half-written.

Each is written under a hidden temporary name in the same folder (same filesystem), synced where
it is a file, then renamed with ``os.replace`` (atomic on POSIX); a failure removes the temporary."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``atomic_write_text`` for bytes: a hidden ``.NAME.tmpPID`` in the same folder, synced, renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move a finished directory ``tmp`` to ``out``, replacing an old ``out`` only at this moment."""
    tmp, out = Path(tmp), Path(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` to a temporary name, then rename: a figure is either whole or absent."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, **kwargs)
    os.replace(tmp, path)
    return path
