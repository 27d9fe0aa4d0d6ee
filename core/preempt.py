"""Stopping cleanly when the scheduler asks: SIGTERM / SIGUSR1 -> finish the step, checkpoint, exit 75.

A job killed at its time limit or preempted gets SIGTERM (Slurm: ``KillWait`` seconds before
SIGKILL), or the signal named by ``sbatch --signal`` some time before the limit. A long-running
command (pre-training, a fine-tuning sweep) installs ``stop_requested`` handlers for SIGTERM and
SIGUSR1 while it works; the handler only sets a flag (a Python signal handler runs between
bytecodes, so a step is never cut in half). The loop checks the flag at a safe point (after an
optimizer step; between learning rates), writes what a resume needs and raises ``Preempted``.

``Preempted`` is a ``SystemExit`` with code ``EXIT_PREEMPTED`` = 75 (``EX_TEMPFAIL`` of
sysexits.h: "temporary failure, run me again"): it passes through ``except Exception`` handlers,
the process exits 75, and launchers read 75 as "requeue me" (``launch/slurm.py``, the grid
runner) rather than as a failure. Rerunning the same command resumes where it stopped.

A launcher in between may hide the 75: torchrun exits 1 when a worker exits non-zero. So a
``Preempted`` also leaves a marker file where the environment variable ``OVERTRAIN_PREEMPTED_FILE``
points (every rank writes the same small JSON, atomically; the launcher removes it before the run):
the batch script (``launch/slurm.py``) requeues the job when the marker exists, whatever the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager

from .atomic import atomic_write_text

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request after saving its state; rerun to resume
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER_ENV = "OVERTRAIN_PREEMPTED_FILE"  # where a Preempted leaves its marker (unset: no marker)


class Preempted(SystemExit):
    """Raised after a requested stop has saved its state; the process exits with ``EXIT_PREEMPTED``."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message
        write_marker(message)

    def __str__(self) -> str:
        return self.message


def write_marker(message: str) -> None:
    """The preemption marker at ``$OVERTRAIN_PREEMPTED_FILE`` (nothing when it is unset): the state is saved."""
    path = os.environ.get(MARKER_ENV)
    if path:
        info = {"message": message, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        atomic_write_text(path, json.dumps(info) + "\n")


class StopFlag:
    """Set by the handlers; ``signum`` is the first signal received (None: no stop requested)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextmanager
def stop_requested():
    """Within the block, SIGTERM and SIGUSR1 set the yielded ``StopFlag`` instead of killing the
    process; the previous handlers come back after it. Off the main thread (where Python cannot
    install handlers) the flag simply never sets."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is None:
            flag.signum = signum
            print(
                f"overtrain: got {signal.Signals(signum).name}: stopping after the current step",
                file=sys.stderr,
                flush=True,
            )

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
