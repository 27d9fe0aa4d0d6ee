"""Starting a grid's one-process CPU jobs from a warm process instead of a fresh python.

A tiny CPU job (the demo's, the tests') spends ~3 s importing torch and OLMo before a second or two
of work. ``multiprocessing``'s forkserver imports them once (``PRELOAD``, ~2.5 s when the first job
starts) and forks every job from that process, so a job starts in ~0.3 s: 3.65 s -> 0.35 s for
``overtrain info tiny`` on this project's 2-core VM. The server is the runner's own child and
ends with it.

A forked job is the command ``python -m overtrain ARGV`` (``launch.plan.overtrain_command``) in
everything the job can see: ``sys.argv``, the environment and the working directory (both the
runner's), stdout and stderr appended to the job's log, the exit code (``sys.exit``/``Preempted``
codes such as 75 kept, 1 with the traceback in the log for an uncaught exception, -N when killed
by signal N), and the ``atexit`` handlers run at the end. Each job is a fresh fork of the server,
so nothing of one job is left in the next, and it is in the runner's process group: a signal to
the group reaches it as it reaches a subprocess.

Only where that cannot change a result or a failure, else the runner starts a subprocess as before:
- CPU runs (``gpus=0``): CUDA cannot be used in a child forked after it was initialised, and a GPU
  job's minutes dwarf three seconds of imports;
- one-process jobs (torchrun jobs start their own processes);
- a job environment equal to the one the server started with (variables that are read at import,
  such as OMP_NUM_THREADS or ATEN_CPU_CAPABILITY, were read by the server);
- ``grid run fork_jobs=false`` turns it off.

As in any ``multiprocessing`` program, a script (not ``python -m overtrain``, whose package
``__main__`` multiprocessing never re-imports) that calls ``launch.runner.run_jobs`` must keep its
main code under ``if __name__ == "__main__":``: each child imports the main module first.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import sys
import traceback
from pathlib import Path

PRELOAD = ("torch", "olmo", "overtrain.cli")  # what every job imports first (~2.4 s of the ~3 s); names, not imports
PRELOAD_HF = ("overtrain.core.hf_preload",)  # transformers, when the grid has jobs that use it (~1.5 s each)

_server_env: dict[str, str] | None = None  # os.environ when this process started its forkserver
# Variables that change while a process runs and that nothing reads at import: pytest sets this one
# per test phase, so an in-process runner under pytest would otherwise never fork after its first test.
_NOT_READ_AT_IMPORT = ("PYTEST_CURRENT_TEST",)


def _at_import(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in _NOT_READ_AT_IMPORT}


class ForkedJob:
    """A running forked job, polled like ``subprocess.Popen``: ``poll()`` is None until it exits."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self.process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self.process.exitcode


def available(env: dict[str, str]) -> bool:
    """Whether a job with environment ``env`` can be forked: ``env`` is the server's (the environment
    of this process when it first asked), but for variables nothing reads at import."""
    global _server_env
    if _server_env is None:
        _server_env = dict(os.environ)  # the server is spawned with this environment on the first start
    return _at_import(env) == _at_import(_server_env)


def start(argv: list[str], log: Path, env: dict[str, str], preload: tuple[str, ...] = PRELOAD) -> ForkedJob:
    """``python -m overtrain ARGV`` with output appended to ``log``, forked from the warm server
    (started by the first call, which imports ``preload``). Only where ``available(env)``."""
    if not available(env):
        raise ValueError("forked.start: the job's environment differs from the warm process's; start a subprocess")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))  # read when the server starts, i.e. on the first call
    process = ctx.Process(target=_job_main, args=(list(argv), str(log), dict(env)), name=f"overtrain {argv[0]}")
    process.start()
    return ForkedJob(process)


def _job_main(argv: list[str], log: str, env: dict[str, str]) -> None:
    """In the forked child: become ``python -m overtrain ARGV`` writing to ``log`` with environment
    ``env``, and exit as it would."""
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = ["-m", *argv]  # runpy sets sys.argv[0] to overtrain/__main__.py, as `python -m` does

    status: int | str | None = 1
    try:
        runpy.run_module("overtrain", run_name="__main__", alter_sys=True)  # `python -m overtrain`
        status = 0
    except SystemExit as e:  # __main__'s exit with cli.main's code; Preempted (75)
        status = e.code
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, exit 1
        traceback.print_exc()
        status = 1
    finally:
        # multiprocessing ends its children with os._exit, which skips atexit; a python process runs
        # them (logging, wandb and tensorboard flush there), so run them here.
        atexit._run_exitfuncs()
    raise SystemExit(status)
