"""A tiny local checkpoint suite from one real overtrain pre-training run, for suite/SFT/eval tests.

``build_tiny_suite(root)`` pre-trains the tiny muP OLMo on real C4 (40 documents) for 4,000 tokens
(20 steps of 4 x 50 tokens, cosine decay), keeps the checkpoints at the token marks 1,000 and 2,000
and the final one, and exports each with ``overtrain export-hf`` to a transformers directory named
like an OLMo revision::

    ROOT/suite/step5-tokens1K   ROOT/suite/step10-tokens2K   ROOT/suite/step20-tokens4K

(the names are exact: 5 x 200 = 1,000 tokens). ``tests/conftest.py`` registers the session-scoped
fixture ``tiny_suite``; a test takes it as an argument:

    from suite_fixture import TinySuite

    def test_x(tiny_suite: TinySuite): tiny_suite.members -> [Path, Path, Path] (by tokens)

About 10 s on one CPU core, built once per pytest session.

``fake_hub`` (a fixture; import it into the test module) stands in for the hub's branch list of
allenai/OLMo-1B-hf (``huggingface_hub.list_repo_refs``, not reachable offline) and records its calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from overtrain import cli
from overtrain.core.paths import data_root
from overtrain.launch import spec as spec_mod

OLMO = "allenai/OLMo-1B-hf"
STEP_TOKENS = 200  # 4 sequences x 50 tokens
MARKS = {5: "step5-tokens1K", 10: "step10-tokens2K", 20: "step20-tokens4K"}  # step -> revision-style name


@dataclass(frozen=True)
class TinySuite:
    root: Path  # the parent of the member directories
    members: list[Path]  # transformers directories, by pre-training tokens
    tokens: list[int]  # exact pre-training tokens of each member (= the count in its name)
    run_dir: Path  # the overtrain pre-training run they come from


def build_tiny_suite(root: Path) -> TinySuite:
    c4 = data_root() / "c4"
    data = root / "c4"
    assert (
        cli.main(
            [
                "prepare-data",
                f"out={data}",
                f"train={c4 / 'c4-sample.00000-of-00001.json.gz'}",
                f"val={c4 / 'c4-sample.01.json.gz'}",
                "max_docs=40",
            ]
        )
        == 0
    )
    run = root / "pretrain"
    settings = {
        "data.dir": data,
        "run_dir": run,
        "budget_tokens": 20 * STEP_TOKENS,
        "seq_len": 50,
        "global_batch_size": 4,
        "micro_batch_size": 4,
        "eval.val_tokens": 200,
        "eval.every_steps": 0,
        "checkpoint.every_steps": 0,
        "checkpoint.at_tokens": "[1000,2000]",
        "schedule.warmup_tokens": 400,
        "log.every_steps": 10,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread on a shared 2-core machine costs more than it gives
    try:
        assert cli.main(["pretrain", "demo", *[f"{k}={v}" for k, v in settings.items()]]) == 0
        suite = root / "suite"
        members = []
        for step, name in MARKS.items():
            assert cli.main(["export-hf", str(run / "checkpoints" / f"step-{step:08d}"), str(suite / name)]) == 0
            members.append(suite / name)
    finally:
        torch.set_num_threads(threads)
    return TinySuite(suite, members, [s * STEP_TOKENS for s in MARKS], run)


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory) -> TinySuite:
    return build_tiny_suite(tmp_path_factory.mktemp("tiny-suite"))


def olmo1b_branches() -> list[str]:
    """Branch names shaped like OLMo-1B-hf's: a checkpoint every 1000 steps of 4,194,304 tokens,
    named stepN-tokensNB (the count rounded down to billions), plus 'main' and step 0."""
    names = ["main", "step0-tokens0B"]
    names += [f"step{s}-tokens{s * 4_194_304 // 10**9}B" for s in range(1000, 739_000, 1000)]
    return names


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def list_repo_refs(repo_id, **kwargs):
        calls.append(repo_id)
        if repo_id != OLMO:
            raise OSError(
                f"404 Client Error: Repository Not Found for url: https://huggingface.co/api/models/{repo_id}"
            )
        return SimpleNamespace(branches=[SimpleNamespace(name=n) for n in olmo1b_branches()], tags=[])

    monkeypatch.setattr(huggingface_hub, "list_repo_refs", list_repo_refs)
    monkeypatch.setattr(spec_mod, "_RESOLVED", {})  # no resolution cached by an earlier test
    return calls
