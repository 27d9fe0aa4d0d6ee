"""`overtrain sft` (finetune.instruct.sft) on the tiny suite (suite_fixture) with real GSM8k chat records: each member
instruction-tuned into an atomic output with provenance and a results row; loss on assistant tokens only;
loss falls on a repeated set; deterministic; reruns skip; bad input refused before any work."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from overtrain.cli import main as cli
from overtrain.core.jsonl import read_records
from overtrain.core.rows import load_rows
from overtrain.core.suite import PROVENANCE_KEYS, read_provenance
from overtrain.data.chat import DEFAULT_CHAT_TEMPLATE, encode_chat, gsm8k_chat, write_chat_jsonl
from overtrain.finetune.instruct.sft import SFTConfig, run_sft
from suite_fixture import TinySuite  # the fixture tiny_suite is registered in conftest.py
from tolerances import gamma

GSM8K = "${OVERTRAIN_DATA}/gsm8k/train.jsonl"
FAST = ["epochs=1", "lr=1e-3", "batch_size=8", "micro_batch_size=8", "max_seq_len=96", "log_every=0"]


# conftest: one thread (tiny ops on 2 shared cores); about 13 s (the longest modules start first)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.duration(13)]


def hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def test_sft_each_member(tiny_suite: TinySuite, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    outs = [tmp_path / "sft" / p.name for p in tiny_suite.members]
    for member, out in zip(tiny_suite.members, outs):
        argv = ["sft", str(member), f"data={GSM8K}", "max_examples=32", f"out={out}", f"results={results}", *FAST]
        assert cli(argv) == 0
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == sorted(o.name for o in outs)  # no temp dirs left

    for member, out, tokens in zip(tiny_suite.members, outs, tiny_suite.tokens):
        prov = read_provenance(out)
        assert set(prov) == set(PROVENANCE_KEYS) and prov["pretrain_tokens"] == tokens
        assert prov["suite_model"] == str(member.parent) and prov["suite_revision"] == member.name
        assert prov["suite_commit"] is None
        assert prov["sft_data"] == GSM8K and prov["sft"]["lr"] == 1e-3 and prov["sft"]["model"] == str(member)
        stats = prov["sft_stats"]
        assert stats["steps"] == 4 and stats["examples"] + stats["dropped"] == 32 and stats["max_seq_len"] == 96
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            assert (out / name).is_file()
        # the tuned weights differ from the member's, and load as the same architecture
        before, after = hf(member), hf(out)
        assert type(after).__name__ == "OlmoForCausalLM"
        assert not torch.equal(before.model.embed_tokens.weight, after.model.embed_tokens.weight)

    rows = read_records(results)
    assert [r["kind"] for r in rows] == ["sft"] * 3 and [r["out"] for r in rows] == [str(o) for o in outs]
    assert [r["pretrain_tokens"] for r in rows] == tiny_suite.tokens
    # the chat template the records were rendered with (the tiny suite's tokenizer has none: TULU's)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tiny_suite.members[0])).chat_template is None
    tulu = hashlib.sha256(DEFAULT_CHAT_TEMPLATE.encode()).hexdigest()[:16]
    assert [r["sft_stats"]["chat_template_sha256"] for r in rows] == [tulu] * 3
    assert [r.kind for r in load_rows(results)] == ["sft"] * 3  # the report's reader keeps them

    # a rerun with the same settings is skipped; other settings are refused; overwrite=true redoes it
    stamp = (outs[0] / "model.safetensors").stat().st_mtime_ns
    argv = ["sft", str(tiny_suite.members[0]), f"data={GSM8K}", "max_examples=32", f"out={outs[0]}", *FAST]
    capsys.readouterr()
    assert cli([*argv, f"results={results}"]) == 0
    assert "already done" in capsys.readouterr().out
    assert (outs[0] / "model.safetensors").stat().st_mtime_ns == stamp and len(read_records(results)) == 3
    assert cli([*argv, "seed=1"]) == 2
    assert "finished with other settings (seed: 0 -> 1); overwrite=true replaces it" in capsys.readouterr().err
    assert cli([*argv, "seed=1", "overwrite=true"]) == 0
    assert read_provenance(outs[0])["sft"]["seed"] == 1
    assert (outs[0] / "model.safetensors").stat().st_mtime_ns != stamp
    # a rerun after a kill between saving and the row appends the missing row
    other = tmp_path / "other.jsonl"
    assert cli([*argv, "seed=1", f"results={other}"]) == 0 and [r["out"] for r in read_records(other)] == [str(outs[0])]


def cfg(out, **kw) -> SFTConfig:
    base = dict(data="x", out=str(out), lr=1e-3, epochs=1, batch_size=4, micro_batch_size=4, max_seq_len=96)
    base.update(warmup=0.0, log_every=0)
    base.update(kw)
    return SFTConfig(**base)


def test_first_loss_is_the_mean_over_assistant_tokens(tiny_suite: TinySuite, tmp_path):
    """The first step's loss, from the step core and ``sft_loss``, equals the mean cross-entropy of the
    untrained member over exactly the labelled (assistant) tokens, computed here record by record."""
    member = tiny_suite.members[2]
    data = write_chat_jsonl(gsm8k_chat(4), tmp_path / "four.jsonl")
    prov = run_sft(str(member), cfg(tmp_path / "a", data=str(data), micro_batch_size=2), log=lambda _: None)
    from transformers import AutoTokenizer

    enc = encode_chat(AutoTokenizer.from_pretrained(str(member)), gsm8k_chat(4), 96)
    model, total, count = hf(member), 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(enc.ids, enc.labels):
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
            y = torch.tensor(labels[1:])
            total += F.cross_entropy(logits, y, ignore_index=-100, reduction="sum").item()
            count += int((y >= 0).sum())
    stats = prov["sft_stats"]
    assert stats["target_tokens"] == count and 0 < count < stats["input_tokens"]  # prompts carry no loss
    # fp32 sums of `count` terms in another order (batched, padded): gamma(count) relative
    assert stats["loss_first"] == pytest.approx(total / count, rel=gamma(count))


def test_loss_falls_on_a_repeated_set_and_is_deterministic(tiny_suite: TinySuite, tmp_path):
    data = write_chat_jsonl(gsm8k_chat(4), tmp_path / "four.jsonl")
    quiet = lambda _: None  # noqa: E731
    a = run_sft(str(tiny_suite.members[0]), cfg(tmp_path / "a", data=str(data), epochs=8, lr=3e-3), log=quiet)
    losses = a["sft_stats"]["epoch_losses"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0  # nats: memorizing 4 answers
    b = run_sft(str(tiny_suite.members[0]), cfg(tmp_path / "b", data=str(data), epochs=8, lr=3e-3), log=quiet)
    assert b["sft_stats"]["epoch_losses"] == losses  # same seed, same device: bit-identical
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _no_work(tmp_path, out):
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_input_is_one_error_before_any_work(tiny_suite: TinySuite, tmp_path, capsys):
    out = tmp_path / "out"
    member = str(tiny_suite.members[0])
    # a revision that does not exist (offline: a missing directory)
    missing = tiny_suite.root / "step7-tokens3K"
    assert cli(["sft", str(missing), f"data={GSM8K}", f"out={out}"]) == 2
    assert f"suite member {missing}: no such directory" in capsys.readouterr().err
    # a chat record without an assistant turn: named by file:line
    bad = tmp_path / "chat.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + json.dumps({"messages": []}) + "\n")
    assert cli(["sft", member, f"data={bad}", f"out={out}"]) == 2
    assert f"{bad}:2: no assistant turn with text" in capsys.readouterr().err
    # an architecture transformers cannot load: named by file and field
    arch = tmp_path / "step5-tokens1K"
    shutil.copytree(member, arch)
    config = json.loads((arch / "config.json").read_text())
    (arch / "config.json").write_text(json.dumps({**config, "architectures": ["OlmoForMagic"]}))
    assert cli(["sft", str(arch), f"data={GSM8K}", f"out={out}"]) == 2
    assert f"{arch / 'config.json'}: architectures=['OlmoForMagic']" in capsys.readouterr().err
    # a member whose pre-training tokens are unknown (Amber's ckpt_NNN, a plain directory): tokens= is required
    plain = tmp_path / "final"
    shutil.copytree(member, plain)
    assert cli(["sft", str(plain), f"data={GSM8K}", f"out={out}"]) == 2
    assert f"{plain}: pre-training tokens unknown" in capsys.readouterr().err
    # settings: a required key, a typo
    assert cli(["sft", member, f"out={out}"]) == 2
    assert "data= is required" in capsys.readouterr().err
    assert cli(["sft", member, f"data={GSM8K}", f"out={out}", "learning_rate=1"]) == 2
    _no_work(tmp_path, out)
