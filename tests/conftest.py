"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch
from overtrain import cli
from overtrain.core.paths import data_root
from suite_fixture import fake_hub, tiny_suite  # noqa: F401  (fixtures: a tiny checkpoint suite, a faked hub branch list)

C4 = data_root() / "c4"


def pytest_configure(config):
    """OVERTRAIN_TEST_THREADS=N runs the suite with N intra-op threads (``make test-matrix``); under
    pytest-xdist each worker takes its share of the cores.

    Results must not depend on the thread count or on the CPU kernels (ATEN_CPU_CAPABILITY,
    MKL_ENABLE_INSTRUCTIONS): floats that come out of different summation orders are compared
    with tolerances derived from their precision, never exactly.
    """
    threads = os.environ.get("OVERTRAIN_TEST_THREADS")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not threads and workers > 1:  # pytest-xdist (make test): the cores shared out, not oversubscribed
        threads = str(max(1, (os.cpu_count() or 1) // workers))
    if threads:
        os.environ["OMP_NUM_THREADS"] = threads  # the CLI and DDP subprocesses the tests start
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(items):
    """The modules that carry ``pytestmark = pytest.mark.duration(SECONDS)`` first, longest first;
    the rest keep their order after them. ``make test`` hands whole modules to its workers
    (``--dist loadscope``, so a module's fixtures are built once), in this order: longest first is
    the classic rule that makes two workers end nearly together, instead of one starting a
    two-minute module when the other is almost done. Only the order changes, never what runs."""

    def seconds(item) -> float:
        mark = item.get_closest_marker("duration")
        return float(mark.args[0]) if mark else 0.0

    items.sort(key=lambda item: -seconds(item))  # stable: a module's tests stay in their order


@pytest.fixture(scope="module")
def small_c4(tmp_path_factory):
    """A prepared C4 dir from real data: 40 training documents, 10 held-out validation ones."""
    out = tmp_path_factory.mktemp("c4") / "prepared"
    argv = [
        "prepare-data",
        f"out={out}",
        f"train={C4 / 'c4-sample.00000-of-00001.json.gz'}",
        f"val={C4 / 'c4-sample.01.json.gz'}",
        "max_docs=40",
    ]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model ops are small: on a 2-core machine a second OpenMP thread costs more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
