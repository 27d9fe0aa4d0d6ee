"""The one key=value codec (core.keyvalue): what is formatted reads back as itself, untyped and into a config."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from overtrain.core.config import load_config
from overtrain.core.keyvalue import format_setting, format_value, merge_settings, parse_settings, parse_value

VALUES = [
    None,
    True,
    0,
    -3,
    1e-3,
    1e-05,  # Python writes 1e-05, which PyYAML reads as a string
    2.5e16,
    0.1,
    float("inf"),
    "",
    "plain",
    "a b",
    "k=v=w",
    "@user",
    "x@y",
    "null",
    "true",
    "1e-3",
    "1.50",
    "Question: why?",
    "a, b",
    'it\'s "quoted"',
    "/data/c4 dir/train.json.gz",
    [1e-3, 0.1, 1e-05],
    [],
    ["a b", "c,d", "[e]", None, "null", "@f"],
    {"a": 1, "b c": [1, "x: y"], "n": None},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_format_then_parse_gives_the_value_back(value):
    assert parse_value(format_value(value)) == value
    ((key, back),) = parse_settings([format_setting("tags.x", value)])
    assert key == "tags.x" and back == value


@dataclass
class Cfg:
    name: str = ""  # a str field: the text as written
    maybe: str | None = "x"
    lrs: list[float] = field(default_factory=list)
    tags: dict = field(default_factory=dict)


def test_a_formatted_setting_reads_back_into_a_typed_config():
    for text in ["a b", "k=v", "@user", "null", "1.50", "Question: why?", "'quoted'", ""]:
        cfg = load_config(Cfg, None, [format_setting("name", text), format_setting("maybe", text)])
        assert cfg.name == text and cfg.maybe == text, text
    assert load_config(Cfg, None, [format_setting("maybe", None)]).maybe is None
    assert load_config(Cfg, None, ["name=Question: why?"]).name == "Question: why?"  # as typed by hand
    cfg = load_config(Cfg, None, [format_setting("lrs", [1e-3, 1e-05]), format_setting("tags", {"a": "1.50"})])
    assert cfg.lrs == [1e-3, 1e-05] and cfg.tags == {"a": "1.50"}


def test_lists_are_one_word_and_a_later_setting_wins():
    assert format_setting("lrs", [0.0001, 0.001]) == "lrs=[0.0001,0.001]"  # the grid's job lines as before
    assert merge_settings(["a=1", "b.c=2"], ["a=3"]) == ["a=3", "b.c=2"]
