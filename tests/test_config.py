"""The config system: typos and type errors name source and field; overrides; counts; atomic saves."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml
from overtrain.core.atomic import atomic_write_text
from overtrain.core.config import load_config, parse_count, save_config
from overtrain.core.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0


@dataclass
class Run:
    run_dir: str
    budget_tokens: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    compile: bool = False
    seed: int | None = None
    tags: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)

    def validate(self):
        if self.budget_tokens < 0:
            raise ValueError(f"budget_tokens={self.budget_tokens} must be >= 0")


def write(tmp_path, data, name="run.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_keys_name_file_and_dotted_field_with_suggestion(tmp_path):
    p = write(tmp_path, {"run_dir": "x", "budget_tokem": 5})
    with pytest.raises(
        ConfigError, match=r"run\.yaml: unknown key 'budget_tokem' \(did you mean 'budget_tokens'\?\)"
    ) as e:
        load_config(Run, p)
    assert e.value.field == "budget_tokem"
    p = write(tmp_path, {"run_dir": "x", "optim": {"warmup_step": 5}})
    with pytest.raises(
        ConfigError, match=r"run\.yaml: unknown key 'optim\.warmup_step' \(did you mean 'warmup_steps'\?\)"
    ):
        load_config(Run, p)


def test_errors_from_overrides_blame_the_command_line(tmp_path):
    p = write(tmp_path, {"run_dir": "x"})
    with pytest.raises(
        ConfigError,
        match=r"run\.yaml: unknown key 'optim\.lrr' \(did you mean 'lr'\?\).* \(from command-line override 'optim\.lrr=1'\)$",
    ):
        load_config(Run, p, ["optim.lrr=1"])
    with pytest.raises(
        ConfigError, match=r"run\.yaml: seed: expected an integer, got 'abc' \(from command-line override 'seed=abc'\)$"
    ):
        load_config(Run, p, ["seed=2", "seed=abc"])
    with pytest.raises(ConfigError, match=r"bad\.yaml: seed: expected an integer, got 'abc'$"):  # the file's fault
        load_config(Run, write(tmp_path, {"run_dir": "x", "seed": "abc"}, "bad.yaml"), ["optim.lr=1"])
    # A cross-field (validate) error names the file and the overrides in play.
    with pytest.raises(
        ConfigError,
        match=r"run\.yaml: budget_tokens=-3 must be >= 0 \(with command-line overrides: budget_tokens=-3\)$",
    ):
        load_config(Run, p, ["budget_tokens=-3"])
    with pytest.raises(
        ConfigError, match=r"^command line: unknown key 'rundir'.* \(from command-line override 'rundir=x'\)$"
    ):
        load_config(Run, None, ["rundir=x"])


@pytest.mark.parametrize(
    "data,match",
    [
        ({"budget_tokens": "lots"}, r"budget_tokens: expected an integer, got 'lots'"),
        ({"budget_tokens": True}, r"budget_tokens: expected an integer, got True"),
        ({"compile": "maybe"}, r"compile: expected true/false"),
        ({"device": "tpu"}, r"device: 'tpu' is not one of \['cpu', 'cuda', 'auto'\]"),
        ({"optim": {"lr": "fast"}}, r"optim\.lr: expected a number, got 'fast'"),
        ({"optim": {"betas": [0.9]}}, r"optim\.betas: expected 2 values, got 1"),
        ({"optim": 3}, r"optim: expected a mapping"),
    ],
)
def test_type_errors_name_the_field(tmp_path, data, match):
    p = write(tmp_path, {"run_dir": "x", **data})
    with pytest.raises(ConfigError, match=rf"run\.yaml: {match}"):
        load_config(Run, p)


def test_missing_required_field_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml: .*run_dir"):
        load_config(Run, write(tmp_path, {"seed": 1}))
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(Run, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(Run, tmp_path / "bad.yaml")
    with pytest.raises(
        ConfigError, match=r"olmo-15x: no such file and no config named so in configs/models/ \(known: .*olmo-15m"
    ):
        load_config(Run, "olmo-15x", kind="models")


def test_dotted_overrides_are_typed_and_nested(tmp_path):
    p = write(tmp_path, {"run_dir": "x", "optim": {"lr": 0.1, "warmup_steps": 7}})
    cfg = load_config(
        Run,
        p,
        [
            "optim.lr=1e-3",
            "budget_tokens=4B",
            "seed=3",
            "--device=cpu",
            "compile=yes",
            "tags=[a, b]",
            "optim.betas=[0.8,0.9]",
            "run_dir=/tmp/r",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.warmup_steps == 7  # a sibling from the file survives
    assert cfg.budget_tokens == 4_000_000_000 and cfg.seed == 3 and cfg.device == "cpu" and cfg.compile is True
    assert cfg.tags == ["a", "b"] and cfg.optim.betas == (0.8, 0.9) and cfg.run_dir == "/tmp/r"
    assert load_config(Run, p, ["seed=null"]).seed is None
    assert load_config(Run, None, ["run_dir=y", "optim.lr=2"]).optim.lr == 2.0  # no file at all
    with pytest.raises(ConfigError, match=r"override 'seed' is not of the form key=value"):
        load_config(Run, p, ["seed"])


@pytest.mark.parametrize(
    "text,value",
    [
        ("4B", 4 * 10**9),
        ("128b", 128 * 10**9),
        ("512M", 512 * 10**6),
        ("1.5k", 1500),
        ("1e6", 10**6),
        ("2_000", 2000),
        ("1.1B", 1_100_000_000),
        ("0.25T", 250 * 10**9),
        (" 42 ", 42),
        (7, 7),
    ],
)
def test_parse_count(text, value):
    assert parse_count(text) == value and isinstance(parse_count(text), int)


@pytest.mark.parametrize("text", ["0.5", "1.0001k", "abc", "", "nan", "inf", "4X"])
def test_parse_count_rejects_non_counts(text):
    with pytest.raises(ValueError):
        parse_count(text)


def test_save_config_round_trip_is_atomic(tmp_path, monkeypatch):
    cfg = Run(run_dir="r", budget_tokens=8 * 10**9, seed=None, tags=["x"], optim=Optim(lr=3e-4, betas=(0.9, 0.99)))
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert load_config(Run, path) == cfg  # tuples, None, nested dataclasses survive
    assert sorted(x.name for x in path.parent.iterdir()) == ["config.yaml"]  # no temp file left

    import overtrain.core.atomic as atomic

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        save_config(Run(run_dir="other"), path)
    monkeypatch.undo()
    assert load_config(Run, path) == cfg  # the old file is intact, never half-written
    assert sorted(x.name for x in path.parent.iterdir()) == ["config.yaml"]  # and the temp file is gone
    atomic_write_text(path, "run_dir: z\n")
    assert load_config(Run, path).run_dir == "z"
