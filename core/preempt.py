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
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request after saving its state; rerun to resume
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after a requested stop has saved its state; the process exits with ``EXIT_PREEMPTED``."""

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message

    def __str__(self) -> str:
        return self.message


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
