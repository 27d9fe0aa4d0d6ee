"""A pytest plugin for ``make gpu-check``'s tests step (issue 20): a per-test timeout, and each
test's outcome written the moment it is known, so a hang costs one test, not every outcome.

    python -m pytest -p gpu_pytest_guard --gpu-test-timeout 60 --gpu-events events.jsonl ...

(``benchmarks/`` on ``sys.path``; ``benchmarks/gpu_check.py`` runs it so.) The image carries
pytest-timeout, but this machine's venv does not, and the guard must behave the same in both
places: its own ~60 lines, tested on CPU (tests/test_gpu_check.py).

Per test (setup, call and teardown together), two alarms:

1. after ``--gpu-test-timeout`` seconds, SIGALRM fails the test (``pytest.fail``, with the stack of
   where it was): a Python-level hang or a slow test ends, the session goes on;
2. a hang inside C (a CUDA synchronize, an NCCL call) never returns to the interpreter, so the
   signal handler never runs: ``--gpu-test-grace`` seconds later ``faulthandler`` dumps every
   thread's stack and ends the process. The events file then shows a ``start`` without its
   ``finish``: gpu_check records that test as ``hung`` and starts pytest again without it.

Events, one JSON object per line, flushed at once: ``{"event": "start", "nodeid"}`` and
``{"event": "finish", "nodeid", "outcome", "seconds", "message"}``; outcome is passed, failed
(the test body), error (setup or teardown), or skipped.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import time

import pytest

# The process's stderr before pytest captures it (-p plugins are imported first): faulthandler's
# stacks of a hung test must reach the output, not a capture file that dies with the process.
STDERR = os.fdopen(os.dup(2), "w")


def pytest_addoption(parser):
    group = parser.getgroup("gpu-check guard")
    group.addoption("--gpu-test-timeout", type=float, default=None, help="seconds per test (setup+call+teardown)")
    group.addoption("--gpu-test-grace", type=float, default=15.0, help="then seconds until the process is ended")
    group.addoption("--gpu-events", default=None, help="append one JSON line per test start and finish here")


class Guard:
    def __init__(self, timeout: float | None, grace: float, events: str | None):
        self.timeout, self.grace = timeout, grace
        self.events = open(events, "a", buffering=1) if events else None  # noqa: SIM115 - open for the session
        self.reports: dict[str, list] = {}

    def emit(self, **event) -> None:
        if self.events:
            self.events.write(json.dumps(event) + "\n")
            self.events.flush()

    def on_alarm(self, signum, frame):
        pytest.fail(f"timeout: over {self.timeout:g} s (gpu_pytest_guard)", pytrace=True)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.emit(event="start", nodeid=item.nodeid)
        self.reports[item.nodeid] = []
        t = time.monotonic()
        if self.timeout:
            old = signal.signal(signal.SIGALRM, self.on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            faulthandler.dump_traceback_later(self.timeout + self.grace, exit=True, file=STDERR)
        try:
            yield
        finally:
            if self.timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
                faulthandler.cancel_dump_traceback_later()
                signal.signal(signal.SIGALRM, old)
            outcome, message = "passed", None
            for r in self.reports.pop(item.nodeid):
                if r.failed:
                    outcome, message = ("failed" if r.when == "call" else "error"), r.longreprtext[-4000:]
                    break
                if r.skipped:
                    outcome = "skipped"
                    message = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
                    message = message.removeprefix("Skipped: ")
            self.emit(
                event="finish", nodeid=item.nodeid, outcome=outcome, seconds=time.monotonic() - t, message=message
            )

    def pytest_runtest_logreport(self, report):
        self.reports.setdefault(report.nodeid, []).append(report)


def pytest_configure(config):
    o = config.option
    if o.gpu_test_timeout or o.gpu_events:
        config.pluginmanager.register(Guard(o.gpu_test_timeout, o.gpu_test_grace, o.gpu_events), "gpu-check-guard")
