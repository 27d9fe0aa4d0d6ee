"""export-hf / import-hf: transformers' OlmoForCausalLM reproduces overtrain's logits on real C4 text.

The tiny model runs at width_mult 2 (base_d_model 32) with output_mult 3, so the muP readout
multiplier (1.5) and the 1/d_head attention are really folded; init_std 0.3 and a few Adam steps
make attention far from uniform, so a wrong attention fold is visible (checked below).
The helpers here are shared by test_lm_eval.py and test_generate.py.
"""

from __future__ import annotations

import functools
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from overtrain.cli import main as cli
from overtrain.core.checkpoint import load_model, save_model_checkpoint
from overtrain.core.errors import CheckpointError, ConfigError
from overtrain.core.model import build_model
from overtrain.core.model_spec import load_model_spec
from overtrain.core.paths import data_root
from overtrain.core.step import remember_initial_lrs, train_step
from overtrain.data.tokenizer import load_tokenizer
from overtrain.train import hf as hf_mod  # first: makes transformers importable beside a broken torchvision
from overtrain.train.hf_export import export_hf
from overtrain.train.hf_import import import_hf, spec_from_hf_config

transformers = pytest.importorskip("transformers")

SEQ = 128
TINY = ["base_d_model=32", "output_mult=3.0", "init_std=0.3", "max_sequence_length=256"]


def c4_docs(n: int = 10) -> list[str]:
    with gzip.open(data_root() / "c4" / "c4-sample.01.json.gz", "rt") as f:
        return [json.loads(line)["text"] for line in f][:n]


@functools.cache
def c4_tokens(n_docs: int = 10) -> np.ndarray:
    """C4 documents tokenized as prepare-data does: EOS after every document (read-only: cached)."""
    tok = load_tokenizer()
    ids = []
    for doc in c4_docs(n_docs):
        ids += tok.encode(doc).ids + [50279]
    out = np.array(ids, dtype=np.int64)
    out.setflags(write=False)
    return out


def make_checkpoint(root: Path, parametrization: str = "mup", kind: str = "pretrain", steps: int = 3) -> Path:
    """A tiny model after a few Adam steps on C4, saved as a run directory."""
    import mup

    spec = load_model_spec("tiny", TINY + [f"parametrization={parametrization}"])
    model = build_model(spec, seed=0)
    opt = mup.MuAdamW(model.parameters(), lr=3e-3)
    remember_initial_lrs(opt)
    tokens = torch.tensor(c4_tokens(3)[: 4 * SEQ + 1])
    for i in range(steps):
        w = tokens[i * SEQ : (i + 1) * SEQ + 1].unsqueeze(0)
        train_step(model, opt, [(w[:, :-1], w[:, 1:])], lr_factor=1.0)
    meta = {
        "step": steps,
        "tokens": steps * SEQ,
        "budget_tokens": steps * SEQ,
        "final": True,
        "lr_decayed": False,
        "kind": kind,
        "run_dir": str(root),
        "seed": 0,
    }
    save_model_checkpoint(root / "checkpoints", steps, model, spec, meta)
    return root


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def c4_batch() -> torch.Tensor:
    return torch.tensor(c4_tokens(10)[: 2 * SEQ].reshape(2, SEQ))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        ("mup", "finetune"): make_checkpoint(root / "mup-ft", "mup", "finetune"),
        ("sp", "pretrain"): make_checkpoint(root / "sp", "sp", "pretrain"),
    }


@pytest.mark.parametrize("case", [("mup", "finetune"), ("sp", "pretrain")], ids=lambda c: "-".join(c))
def test_export_reproduces_logits(runs, tmp_path, case):
    out = tmp_path / "export"
    assert cli(["export-hf", str(runs[case]), str(out)]) == 0
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "olmo" and config["architectures"] == ["OlmoForCausalLM"]
    assert config["vocab_size"] == 50280 and config["intermediate_size"] == 128 and config["eos_token_id"] == 50279

    ours, spec, meta = load_model(runs[case])
    assert meta["kind"] == case[1] and spec.parametrization == case[0]
    theirs = hf_model(out)
    # the exported tokenizer is the framework's, with EOS and padding declared
    htok = transformers.AutoTokenizer.from_pretrained(str(out))
    doc = c4_docs(1)[0]
    assert htok(doc)["input_ids"] == load_tokenizer().encode(doc).ids
    assert (htok.eos_token_id, htok.pad_token_id) == (50279, 1)

    x = c4_batch()
    with torch.no_grad():
        a = ours(x).logits[..., : spec.vocab_size]
        b = theirs(x).logits
    assert b.shape == a.shape
    assert (a - b).abs().max().item() < 1e-4
    assert a.std().item() > 0.1  # logits of a real size: the tolerance is meaningful

    # The folds matter: undoing either one breaks the match by far more than the tolerance.
    readout, query = hf_mod.folded_multipliers(spec)
    if case[0] == "mup":
        assert (readout, query) == (1.5, 0.25)
        with torch.no_grad():
            for layer in theirs.model.layers:
                layer.self_attn.q_proj.weight /= query
            assert (theirs(x).logits - a).abs().max().item() > 1e-2
    else:
        assert (readout, query) == (1.0, 1.0)


def test_import_round_trip(runs, tmp_path):
    src = runs[("mup", "finetune")]
    export, back = tmp_path / "export", tmp_path / "imported"
    assert cli(["export-hf", str(src), str(export)]) == 0
    assert cli(["import-hf", str(export), str(back)]) == 0
    ours, spec, meta = load_model(src)
    again, spec2, meta2 = load_model(back)
    # our own export comes back as the original checkpoint: muP spec, meta, padded rows and all
    assert spec2 == spec and meta2["kind"] == "finetune" and meta2["step"] == meta["step"]
    x = c4_batch()
    with torch.no_grad():
        a, b = ours(x).logits, again(x).logits
    assert (a - b).abs().max().item() < 1e-5

    # a third-party OLMo (no overtrain provenance) comes in as SP with transformers' semantics
    foreign = tmp_path / "foreign"
    shutil.copytree(export, foreign)
    (foreign / hf_mod.PROVENANCE).unlink()
    (foreign / hf_mod.PADDED_ROWS).unlink()
    step = import_hf(foreign, tmp_path / "foreign-run")
    sp, sp_spec, sp_meta = load_model(step)
    assert sp_spec.parametrization == "sp" and sp_spec.vocab_size == 50280 and sp_spec.embedding_size == 50304
    assert sp_spec.tokenizer == "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"  # recognized, not copied
    assert sp_meta["kind"] == "pretrain" and sp_meta["imported_from"] == str(foreign.resolve())
    with torch.no_grad():
        c = sp(x).logits[..., : spec.vocab_size]
    assert (a[..., : spec.vocab_size] - c).abs().max().item() < 1e-4


def test_bad_input(runs, tmp_path, capsys):
    src = runs[("sp", "pretrain")]
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli(["export-hf", str(src), str(out)]) == 2
    assert "already exists (pass overwrite=true" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert cli(["export-hf", str(src), str(out), "overwrite=true"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert cli(["import-hf", str(out), str(src)]) == 2  # never over a run without overwrite=true
    assert "already exists" in capsys.readouterr().err

    # a config transformers' OLMo cannot represent: a tokenizer with more ids than the vocabulary
    odd = tmp_path / "odd"
    shutil.copytree(src, odd)
    step = next((odd / "checkpoints").glob("step-*"))
    yaml_text = (step / "model.yaml").read_text()
    (step / "model.yaml").write_text(yaml_text.replace("allenai_gpt-neox-olmo-dolma-v1_5.json", "allenai_dolma2.json"))
    with pytest.raises(ConfigError, match=r"model.yaml: cannot be represented .* has 100278 ids but vocab_size=50280"):
        export_hf(odd, tmp_path / "odd-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "odd"]  # nothing written

    # importing something that is not transformers' OLMo
    llama = tmp_path / "llama"
    shutil.copytree(out, llama)
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps(dict(config, model_type="llama", architectures=["LlamaForCausalLM"])))
    assert cli(["import-hf", str(llama), str(tmp_path / "llama-run")]) == 2
    assert "model_type='llama'" in capsys.readouterr().err
    assert not (tmp_path / "llama-run").exists()
    gqa = dict(config, num_key_value_heads=1, clip_qkv=8.0)
    with pytest.raises(CheckpointError, match=r"num_key_value_heads=1 .*clip_qkv=8.0"):
        spec_from_hf_config(gqa, llama / "config.json", "tokenizer.json", None)
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path / "exists" / "nothing", tmp_path / "x")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
