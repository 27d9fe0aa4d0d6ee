"""Perturbation study: noise ~ N(0, gamma^2 init variance), exact at gamma 0, seeded, resumable rows."""

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from overtrain.cli import main
from overtrain.core.checkpoint import save_model_checkpoint
from overtrain.core.jsonl import read_records
from overtrain.core.model import build_model, init_stds
from overtrain.core.model_spec import load_model_spec
from overtrain.core.paths import data_root
from overtrain.data.tokenizer import eos_token_id, load_tokenizer
from overtrain.evaluate.perturb import apply_noise, perturb_checkpoint, unit_noise

SEQ = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perturb")
    spec = load_model_spec("tiny", ["base_d_model=32"])
    model = build_model(spec, seed=0)
    ckpt = save_model_checkpoint(
        tmp / "checkpoints",
        0,
        model,
        spec,
        {"step": 0, "tokens": 12345, "budget_tokens": 12345, "final": True, "lr_decayed": True, "kind": "pretrain"},
    )
    # real C4 validation text, tokenized, EOS after each document, raw uint16 (OLMo memmap format)
    tok = load_tokenizer()
    ids = []
    with gzip.open(data_root() / "c4" / "c4-sample.01.json.gz", "rt") as f:
        for line in f:
            ids += tok.encode(json.loads(line)["text"]).ids + [eos_token_id(tok)]
    c4 = tmp / "c4"
    c4.mkdir()
    splits = {}
    for split, part in (("train", ids[:1000]), ("val", ids)):  # train is unused here
        np.asarray(part, dtype=np.uint16).tofile(c4 / f"{split}.npy")
        splits[split] = {"file": f"{split}.npy", "tokens": len(part)}
    meta = {"vocab_size": spec.vocab_size, "eos_token_id": spec.eos_token_id, "dtype": "uint16", "splits": splits}
    (c4 / "meta.json").write_text(json.dumps(meta))
    return tmp, ckpt, c4


def test_noise_std_per_parameter_is_gamma_times_init_std():
    # width_mult 2 (muP hidden matrices get std 0.02/sqrt 2) and a zero-init readout: three
    # distinct init stds, so the test can tell per-parameter scaling from one global std
    spec = load_model_spec("tiny", ["base_d_model=32", "readout_zero_init=true"])
    model = build_model(spec, seed=0)
    stds = init_stds(model, spec)
    assert len({round(s, 6) for s in stds.values()}) == 3  # 0.02, 0.02/sqrt(2), 0 (readout)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    gamma = 0.05
    apply_noise(model, base, unit_noise(model, stds, seed=3), gamma)
    for name, p in model.named_parameters():
        eps = (p.detach() - base[name]).double()
        assert abs(eps.mean().item()) < 0.05 * gamma * max(stds[name], 1e-12) + 1e-12, name
        if stds[name] == 0:
            assert eps.abs().max().item() == 0, name
        else:
            assert eps.std().item() == pytest.approx(gamma * stds[name], rel=0.05), name
    apply_noise(model, base, {}, 0.0)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_rows_gamma_zero_determinism_and_resume(setup):
    tmp, ckpt, c4 = setup
    results = tmp / "out" / "results.jsonl"
    kw = dict(c4=c4, val_tokens=4 * SEQ, seq_len=SEQ, progress=False)
    rows = perturb_checkpoint(ckpt, [0.0, 0.5], [0, 1], results=results, extra={"parametrization": "mup"}, **kw)
    assert [(r["gamma"], r["noise_seed"]) for r in rows] == [(0.0, 0), (0.5, 0), (0.0, 1), (0.5, 1)]
    by = {(r["gamma"], r["noise_seed"]): r for r in rows}
    base = rows[0]["c4_ppl_base"]
    assert by[0.0, 0]["c4_ppl"] == base and by[0.0, 1]["c4_ppl"] == base and by[0.0, 0]["c4_ppl_change"] == 0
    assert by[0.5, 0]["c4_ppl"] != base and by[0.5, 0]["c4_ppl"] != by[0.5, 1]["c4_ppl"]  # seeds differ
    r = by[0.5, 1]
    assert r["kind"] == "perturb" and r["pretrain_tokens"] == 12345 and r["lr_decayed"] is True
    assert r["c4_tokens"] == 4 * SEQ and r["parametrization"] == "mup" and len(r["checkpoint_sha256"]) == 64
    assert r["c4_ppl_change"] == pytest.approx(r["c4_ppl"] - base)
    assert read_records(results) == rows

    # same seed, same numbers (fresh call); rows already present are skipped, new ones appended
    again = perturb_checkpoint(ckpt, [0.5, 1.0], [1], results=results, **kw)
    assert [(x["gamma"], x["noise_seed"]) for x in again] == [(1.0, 1)]
    fresh = perturb_checkpoint(ckpt, [0.5], [1], **kw)  # no results file: nothing skipped
    assert fresh[0]["c4_ppl"] == r["c4_ppl"]
    assert len(read_records(results)) == 5


def test_resume_key_is_the_c4_tokens_not_their_path(setup, tmp_path):
    _, ckpt, c4 = setup
    results = tmp_path / "results.jsonl"
    kw = dict(val_tokens=2 * SEQ, seq_len=SEQ, results=results, progress=False)
    (first,) = perturb_checkpoint(ckpt, [0.5], [0], c4, **kw)
    copy = tmp_path / "copy"
    shutil.copytree(c4, copy)
    assert perturb_checkpoint(ckpt, [0.5], [0], copy, **kw) == []  # the same tokens elsewhere: reused
    val = np.fromfile(copy / "val.npy", dtype=np.uint16)
    val[2 * SEQ + 1] = val[0]  # after the evaluated prefix: nothing evaluated changed, reused
    val.tofile(copy / "val.npy")
    assert perturb_checkpoint(ckpt, [0.5], [0], copy, **kw) == []
    val[2 * SEQ] = val[0] if val[2 * SEQ] != val[0] else val[1]  # the last predicted token: computed again
    val.tofile(copy / "val.npy")
    (again,) = perturb_checkpoint(ckpt, [0.5], [0], copy, **kw)
    assert again["c4_tokens_sha256"] != first["c4_tokens_sha256"] and again["c4_ppl_base"] != first["c4_ppl_base"]
    # a row written before rows recorded their C4 tokens is reused, with a warning
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text(json.dumps({k: v for k, v in first.items() if k != "c4_tokens_sha256"}) + "\n")
    with pytest.warns(UserWarning, match="before rows recorded their C4 tokens"):
        assert perturb_checkpoint(ckpt, [0.5], [0], c4, **{**kw, "results": legacy}) == []


def test_cli(setup, capsys):
    tmp, ckpt, c4 = setup
    results = tmp / "cli.jsonl"
    args = [
        "perturb",
        str(tmp),
        "gammas=0,0.2",
        "seeds=0",
        f"c4={c4}",
        "val_tokens=128",
        f"seq_len={SEQ}",
        f"results={results}",
        "tags.parametrization=mup",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = read_records(results)
    assert "gamma 0.2" in out and len(rows) == 2 and rows[1]["tags"] == {"parametrization": "mup"}
    assert main(["perturb", str(tmp), "gammas=0.1", f"c4={c4}", "lr=3"]) == 2
    assert "unknown key 'lr'" in capsys.readouterr().err
    assert main(["perturb", str(tmp), "gammas=0.1", f"c4={tmp / 'nope'}"]) == 2
    assert "prepared data directory not found" in capsys.readouterr().err
