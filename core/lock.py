"""One process at a time in a run directory: an ``fcntl.flock`` on a lock file that names its holder.

    with hold(run_dir / LOCK_FILE, "pretrain"):   # LockHeld (naming host, pid, Slurm job) if taken
        ...work in run_dir...

The lock is the kernel's ``flock`` on the open file, so it dies with its process, however that
ends (SIGKILL, a node crash on NFS once the server's lease expires): a lock is never left behind
by a dead holder. The file's text is the holder's identity as JSON (host, pid, Slurm job id,
command, start time), for the error message of whoever finds it taken; a clean release empties
it. Finding the lock free but the file non-empty means its last holder died holding it: the
lock is taken over with a note naming the dead holder.

Where a filesystem has no ``flock`` (some parallel filesystems answer ENOLCK/EOPNOTSUPP), the
file's text is the lock: a holder on this host whose pid is gone is stale and taken over; a
holder on another host is trusted (the error says to delete the file if that job is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import OvertrainError

LOCK_FILE = ".overtrain.lock"


class LockHeld(OvertrainError):
    """Another process works in this directory; ``holder`` is what its lock file says."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def identity(what: str) -> dict:
    """Who holds a lock: host, pid, Slurm job (array task) id, the command, since when."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": job,
        "what": what,
        "argv": " ".join(sys.argv),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (
        f"{holder.get('what', '?')} by pid {holder.get('pid')} on {holder.get('host')}{job} since {holder.get('since')}"
    )


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace").strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return {"what": "unknown", "raw": text[:200]}


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)


def _alive_here(holder: dict) -> bool:
    """Whether the holder may still run: on another host we cannot tell, so yes."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


class Lock:
    """A held lock on ``path`` (``acquire`` raises LockHeld if another process holds it)."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what = Path(path), what
        self.fd: int | None = None
        self.flock = True
        self.took_over: dict = {}  # the dead holder whose stale lock was taken over, if any

    def acquire(self) -> Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                raise LockHeld(
                    f"{self.path.parent}: in use ({describe(holder)}); wait for it, or stop that process "
                    f"(lock file {self.path})",
                    holder,
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.flock = False
            previous = _read(fd)
            if previous and not self.flock and _alive_here(previous) and previous.get("pid") != os.getpid():
                raise LockHeld(
                    f"{self.path.parent}: in use ({describe(previous)}); if that process is gone, "
                    f"delete {self.path} (this filesystem has no flock, so a dead holder elsewhere cannot be detected)",
                    previous,
                )
            if previous:
                self.took_over = previous
                print(
                    f"overtrain: {self.path}: taking over the stale lock of a dead process ({describe(previous)})",
                    file=sys.stderr,
                    flush=True,
                )
            _write(fd, identity(self.what))
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # empty: released cleanly (a non-empty free lock = a dead holder)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> Lock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def hold(path: str | os.PathLike, what: str):
    """Hold the lock at ``path`` for the block (LockHeld at once, naming the holder, if taken)."""
    lock = Lock(path, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


def holder(path: str | os.PathLike) -> dict | None:
    """Who holds the lock at ``path`` now (None: free or no lock file); for status displays."""
    p = Path(path)
    if not p.is_file():
        return None
    fd = os.open(p, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {"what": "?"}
        except OSError:
            h = _read(fd)
            return h if h and _alive_here(h) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
