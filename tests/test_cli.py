"""One command-line style: every setting a documented key=value, listed by --help; flags and typos refused."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from overtrain.cli import COMMANDS, Invocation, build_parser, main, resolve
from overtrain.core.config import load_config
from overtrain.core.errors import ConfigError
from overtrain.core.keys import config_keys, describe_keys, field_docs


@dataclass
class Inner:
    # A block comment above a field is its doc. Only its first sentence is shown.
    rate: float = 0.5
    steps: int = 3  # a trailing comment wins over a block above


@dataclass
class Outer:
    name: str = "x"  # what it is called
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None  # off unless set
    tags: dict = field(default_factory=dict)
    long_default: list[str] = field(  # a doc on the first line of a field spread over several
        default_factory=lambda: ["a", "b"]
    )
    title: str | None = None


def test_docs_come_from_comments_and_keys_are_dotted():
    assert field_docs(Inner) == {
        "rate": "A block comment above a field is its doc.",
        "steps": "a trailing comment wins over a block above",
    }
    assert field_docs(Outer)["long_default"] == "a doc on the first line of a field spread over several"
    keys = {k: (t, d, doc) for k, t, d, doc in config_keys(Outer)}
    assert list(keys) == [
        "name",
        "inner.rate",
        "inner.steps",
        "maybe",
        "maybe.rate",
        "maybe.steps",
        "tags",
        "long_default",
        "title",
    ]
    assert keys["inner.rate"] == ("float", "0.5", "A block comment above a field is its doc.")
    assert keys["maybe"] == ("Inner | None", "null", "off unless set")
    assert keys["long_default"][:2] == ("list[str]", "[a,b]")  # as the codec writes it (core.keyvalue)
    text = describe_keys(Outer)
    assert "inner.steps" in text and "a trailing comment wins over a block above" in text


def test_string_keys_take_their_text_as_written():
    cfg = load_config(Outer, None, ["name=Question: why? Answer:", "title=1.50", "tags.a=1.50", "maybe.rate=2"])
    assert cfg.name == "Question: why? Answer:" and cfg.title == "1.50"  # YAML would give a mapping / 1.5
    assert cfg.tags == {"a": 1.5} and cfg.maybe.rate == 2.0  # other types are parsed as YAML
    assert load_config(Outer, None, ["title=null"]).title is None
    with pytest.raises(ConfigError, match=r"unknown key 'inner.rat' \(did you mean 'rate'\?\)"):
        load_config(Outer, None, ["inner.rat=1"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_key_with_a_doc(name, capsys):
    command = COMMANDS[name]
    config, options = command.classes()
    kind = command.kind
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    for cls in (config, options):
        if cls is None:
            continue
        for key, _, _, doc in config_keys(cls):
            assert doc, f"{name}: {cls.__name__}.{key} has no doc comment"
            assert f"  {key} " in out, (name, key)
    # positionals and keys become attributes of the same namespace: no name may be both
    names = {f.name for f in dataclasses.fields(options if kind else config)} if (options or not kind) else set()
    positionals = {a.dest for a in build_parser(command)._actions}
    assert not names & positionals
    if kind and options:  # a command's own options share no name with its config file's keys
        assert not names & {f.name for f in dataclasses.fields(config)}


def test_flags_and_unknown_keys_are_one_error_before_any_work(tmp_path, capsys):
    cases = [
        (["evaluate", str(tmp_path), "--c4-max-tokens", "256"], "did you mean 'c4_max_tokens=256'?"),
        (
            ["evaluate", str(tmp_path), "tasks=rte", "c4_max_token=256"],
            "unknown key 'c4_max_token' (did you mean 'c4_max_tokens'?)",
        ),
        (["evaluate", str(tmp_path), "splits=dev", "tasks=rte"], "splits: unknown split(s) ['dev']"),
        (["grid", "plan", "demo", "--dry-run"], "did you mean 'dry_run=true'?"),
        (["pretrain", "demo", "overwite=true"], "unknown key 'overwite' (did you mean 'overwrite'?)"),
        (["pretrain", "demo", "optim.lrr=1"], "unknown key 'optim.lrr' (did you mean 'lr'?)"),
        (["prepare-data", f"out={tmp_path}", "train=a.json", "val_docs=3", "val_fraction=0.1"], "not both"),
        (["info", "tiny", "json=maybe"], "json: expected true/false"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"overtrain {argv[0]}: error: ") and message in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_the_table_calls_each_stage_function_as_it_is_declared():
    """Each command's ``call`` binds to its stage function's signature; no stage parses a command line."""
    for name, command in COMMANDS.items():
        config, options = command.classes()
        inv = Invocation(
            config=object(),
            options=SimpleNamespace(**{f.name: None for f in dataclasses.fields(options)}) if options else None,
            args={p.name: ["x"] if p.many else "x" for p in command.positionals},
            config_path="x" if command.kind else None,
        )
        passed = command.call(lambda *a, **k: (a, k), inv)
        run = resolve(command.run)
        inspect.signature(run).bind(*passed[0], **passed[1])  # TypeError: the table and the stage disagree
        assert "argparse" not in inspect.getsource(inspect.getmodule(run)), name


def test_top_level_help_imports_no_stage():
    code = "import sys; from overtrain.cli import main; main(['--help']); print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    stages = [m for m in out.split() if m.startswith("overtrain.") and m.split(".")[1] not in ("cli", "core")]
    assert "overtrain.core.keyvalue" in out.split() and stages == []


def test_grid_plan_and_status_never_import_olmo(tmp_path):
    """Planning counts parameters and FLOPs from shapes (core.model_spec): `grid plan` and `grid
    status`, run often and on login nodes, do not pay OLMo's ~1.5 s import (nor transformers')."""
    code = (
        "import sys; from overtrain.cli import main; "
        f"main(['grid', 'plan', 'demo', 'quiet=true', 'results_dir={tmp_path}']); "
        f"main(['grid', 'status', 'demo', 'results_dir={tmp_path}']); "
        "print(' '.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "overtrain.launch.plan" in out and "olmo" not in out and "transformers" not in out
