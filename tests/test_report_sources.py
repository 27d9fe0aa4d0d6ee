"""The report flags every task whose rows came from a local stand-in for the paper's data."""

from __future__ import annotations

from overtrain.core.rows import parse_row
from overtrain.evaluate.report import source_flags
from overtrain.evaluate.report.data import Report


def test_stand_in_sources_are_flagged():
    rows = [
        parse_row({"kind": "finetune", "task": "boolq", "task_source": "local:arrow (OFFLINE DEMO ONLY: carved)"}),
        parse_row({"kind": "finetune", "task": "rte", "task_source": "local:csv (the GLUE RTE release)"}),
        parse_row({"kind": "finetune", "task": "python_code", "task_source": "offline stand-in for Starcoder-Python"}),
        parse_row({"kind": "finetune", "task": "trec"}),  # older rows: no task_source, no flag
    ]
    rep = Report(group_by=[], tolerance=0.01, files=[])
    source_flags(rep, rows)
    assert len(rep.flags) == 2
    assert rep.flags[0].startswith("boolq: read from a local stand-in") and "OFFLINE DEMO ONLY" in rep.flags[0]
    assert rep.flags[1].startswith("python_code: read from a local stand-in")
