"""Checkpoint suites (core.suite): token counts from revision names, member references, resolving local
directories and hub revisions (offline, through a real hub cache layout), loadability checks and the
provenance file, on the tiny suite exported from one real pre-training run (suite_fixture)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from overtrain.core.errors import ConfigError, DataError
from overtrain.core.suite import (
    PROVENANCE_FILE,
    PROVENANCE_KEYS,
    SuiteMember,
    check_loadable,
    commit_of,
    member_provenance,
    parse_member,
    read_provenance,
    resolve_member,
    tokens_from_revision,
    write_provenance,
)
from suite_fixture import TinySuite  # the fixture tiny_suite is registered in conftest.py

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "revision, tokens",
    [
        ("step20000-tokens84B", 84 * 10**9),  # OLMo-1B-hf
        ("step1000-tokens4M", 4 * 10**6),
        ("step738020-tokens3095B", 3_095 * 10**9),
        ("stage1-step10000-tokens42B", 42 * 10**9),  # OLMo-2
        ("stage2-ingredient1-step11931-tokens50B", None),  # stage 2 counts its own tokens only
        ("step5-tokens1K", 1000),
        ("step3-tokens1.5T", 15 * 10**11),
        ("step9-tokens512", 512),
        ("ckpt_100", None),  # Amber: no count in the name
        ("main", None),
        ("step10-tokens", None),
        (None, None),
    ],
)
def test_tokens_from_revision(revision, tokens):
    assert tokens_from_revision(revision) == tokens


def test_parse_member_hub_refs():
    m = parse_member("allenai/OLMo-1B-hf@step20000-tokens84B")
    assert m == SuiteMember("allenai/OLMo-1B-hf", "step20000-tokens84B", 84 * 10**9) and not m.is_local
    assert m.ref == "allenai/OLMo-1B-hf@step20000-tokens84B"
    assert parse_member("allenai/OLMo-1B-hf", revision="step1000-tokens4B") == parse_member(
        "allenai/OLMo-1B-hf@step1000-tokens4B"
    )
    amber = parse_member("LLM360/Amber@ckpt_100", tokens=350 * 10**9)
    assert amber.revision == "ckpt_100" and amber.tokens == 350 * 10**9  # given: wins over the (absent) parse
    assert parse_member("LLM360/Amber@ckpt_100").tokens is None
    with pytest.raises(ConfigError, match="revision 'a' in the name but revision='b'"):
        parse_member("x/y@a", revision="b")


def test_local_members(tiny_suite: TinySuite, tmp_path):
    assert [p.name for p in tiny_suite.members] == ["step5-tokens1K", "step10-tokens2K", "step20-tokens4K"]
    for path, tokens in zip(tiny_suite.members, tiny_suite.tokens):
        m = parse_member(str(path))
        assert m.is_local and m.revision is None and m.tokens == tokens and m.model == str(path)
        assert resolve_member(m) == path and commit_of(path) is None
        prov = read_provenance(path)  # a plain member: no provenance file, tokens from the name
        # a local suite is its folder; the member's directory name is its revision (the report's grouping)
        expect = {"suite_model": str(path.parent), "suite_revision": path.name, "pretrain_tokens": tokens}
        assert prov == {**dict.fromkeys(PROVENANCE_KEYS), **expect}
    # the three members are three different points of one run: checkpoints saved at 1K, 2K, 4K tokens
    from safetensors.torch import load_file

    weights = [load_file(p / "model.safetensors")["model.embed_tokens.weight"] for p in tiny_suite.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    metas = [json.loads((p / "overtrain.json").read_text())["meta"] for p in tiny_suite.members]
    assert [m["tokens"] for m in metas] == tiny_suite.tokens

    # a missing directory (offline: a revision that does not exist) and a directory without config.json
    missing = tiny_suite.root / "step7-tokens3K"
    with pytest.raises(ConfigError, match=f"{missing}: no such directory"):
        resolve_member(parse_member(str(missing)))
    empty = tmp_path / "step1-tokens1K"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"{empty}: no config.json"):
        resolve_member(parse_member(str(empty)))
    with pytest.raises(ConfigError, match="takes no revision"):
        parse_member(str(tiny_suite.members[0]), revision="main")


def _hub_cache(cache, repo: str, revision: str, member) -> None:
    """The layout huggingface_hub leaves after downloading ``repo`` at ``revision`` (commit SHA)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / revision).write_text(SHA)
    shutil.copytree(member, folder / "snapshots" / SHA)


def test_hub_member_offline(tiny_suite: TinySuite, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub_cache(tmp_path / "hub", "someorg/tiny-suite", "step10-tokens2K", tiny_suite.members[1])
    m = parse_member("someorg/tiny-suite@step10-tokens2K")
    path = resolve_member(m)
    assert path.name == SHA and commit_of(path) == SHA and (path / "model.safetensors").is_file()
    prov = member_provenance(m, path)
    assert prov["suite_model"] == "someorg/tiny-suite" and prov["suite_revision"] == "step10-tokens2K"
    assert prov["suite_commit"] == SHA and prov["pretrain_tokens"] == 2000
    # a revision the cache (offline: the hub) does not have is one error naming the member
    with pytest.raises(
        ConfigError, match="someorg/tiny-suite@step99-tokens9K: not a local directory.*HF_HUB_OFFLINE=1"
    ):
        resolve_member(parse_member("someorg/tiny-suite@step99-tokens9K"))


def _edited(member, tmp_path, **changes):
    out = tmp_path / member.name
    shutil.copytree(member, out)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"model_type": "not_a_model"}, r"model_type='not_a_model' is not known to transformers"),
        ({"model_type": "hf_olmo"}, r"model_type='hf_olmo' is the non-hf OLMo format.*ai2-olmo's hf_olmo"),
        ({"architectures": ["OlmoForMagic"]}, r"architectures=\['OlmoForMagic'\]: OlmoForMagic is not a class"),
        ({"architectures": ["OlmoModel"]}, r"architectures=\['OlmoModel'\]: no \*ForCausalLM class"),
        ({"architectures": None}, r"architectures=None: expected a list"),
    ],
)
def test_check_loadable_names_file_and_field(tiny_suite: TinySuite, tmp_path, changes, needle):
    check_loadable(tiny_suite.members[0])  # the real export loads
    bad = _edited(tiny_suite.members[0], tmp_path, **changes)
    with pytest.raises(ConfigError, match=f"{bad / 'config.json'}: {needle}"):
        check_loadable(bad)
    with pytest.raises(ConfigError, match=needle):  # and resolving the member checks it first
        resolve_member(parse_member(str(bad)))


def test_provenance_file(tmp_path):
    prov = {**dict.fromkeys(PROVENANCE_KEYS), "suite_model": "a/b", "suite_revision": "step1-tokens2B"}
    prov.update(pretrain_tokens=2 * 10**9, sft={"lr": 2e-6}, sft_stats={"steps": 3})
    path = write_provenance(tmp_path, prov)
    assert path == tmp_path / PROVENANCE_FILE and read_provenance(tmp_path) == prov
    assert [p.name for p in tmp_path.iterdir()] == [PROVENANCE_FILE]  # no temporary file left
    with pytest.raises(ValueError, match="provenance keys"):
        write_provenance(tmp_path, {"suite_model": "a/b"})
    (tmp_path / PROVENANCE_FILE).write_text('{"suite_model": "a/b"}')
    with pytest.raises(DataError, match=f"{tmp_path / PROVENANCE_FILE}: expected the keys"):
        read_provenance(tmp_path)
    assert commit_of(f"/c/models--a--b/snapshots/{SHA}") == SHA and commit_of("/c/snapshots/abc") is None
