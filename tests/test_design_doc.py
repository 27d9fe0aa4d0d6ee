"""DESIGN.md stays true: every module, function or file it names in code quotes exists.

A reference is a backquoted `stage.module[.attribute...]` or `stage/path` (stage: one of the
package's stage folders, optionally prefixed by `overtrain.`); the longest prefix that is a module
must exist and every attribute after it must be defined there. Grid keys that read like modules
are listed in NOT_MODULES."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("core", "data", "train", "evaluate", "finetune", "launch")
REF = re.compile(rf"`(?:overtrain\.)?((?:{'|'.join(STAGES)})[./][\w./]*\w)")
NOT_MODULES = {"finetune.noise_probe"}  # a grid key (launch.spec), written as the user writes it


def broken_references(text: str) -> list[str]:
    bad = []
    for ref in sorted(set(REF.findall(text)) - NOT_MODULES):
        if "/" in ref or ref.endswith((".npy", ".json", ".yaml")):
            if not (REPO / ref).exists() and not (REPO / f"{ref}.py").exists() and "/" in ref:
                bad.append(ref)
            continue
        parts = ref.split(".")
        k = next((k for k in range(len(parts), 0, -1) if _is_module(parts[:k])), 0)
        if k < 2 and not (REPO / parts[0] / "__init__.py").exists():
            bad.append(ref)
            continue
        obj = importlib.import_module("overtrain." + ".".join(parts[:k]))
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                bad.append(ref)
                break
            obj = getattr(obj, attr)
    return bad


def _is_module(parts: list[str]) -> bool:
    path = REPO.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_design_names_only_what_exists():
    text = (REPO / "DESIGN.md").read_text()
    assert len(set(REF.findall(text))) > 40  # the check reads the document's references at all
    assert broken_references(text) == []


def test_a_gone_module_or_function_is_caught():
    assert broken_references("`core.step.train_step` and `overtrain.core.likelihood`") == []
    assert broken_references("`core.no_such_module`, `core.step.no_such_function`, `train/gone.py`") == [
        "core.no_such_module",
        "core.step.no_such_function",
        "train/gone.py",
    ]
