"""The muP coordinate check: passes for muP, fails for SP, on real C4 tokens with the tiny model."""

import json

import numpy as np
import pytest
from overtrain.cli import main
from overtrain.core.model_spec import load_model_spec
from overtrain.core.paths import data_root
from overtrain.data.tokenizer import load_tokenizer
from overtrain.train.coord_check import DEFAULT_DATA, c4_batch, log_slope, read_texts, summarize

# 4 widths (1 to 8 heads of 16), 3 steps on 2 x 32 real tokens: ~5 s per parametrization on 2 cores.
# LR 3e-3 (the CLI default): SP's hidden activations grow like width^1..2 by step 3 while muP's stay flat.
ARGS = ["widths=[16,32,64,128]", "steps=3", "batch_size=2", "seq_len=32", "lr=3e-3"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("coord")
    rcs = {p: main(["coord-check", "tiny", f"out={out}", f"parametrization={p}", *ARGS]) for p in ("mup", "sp")}
    return out, rcs, {p: json.loads((out / f"coord_{p}.json").read_text()) for p in ("mup", "sp")}


def test_mup_passes(results):
    out, rcs, res = results
    mup = res["mup"]
    assert rcs["mup"] == 0 and mup["passed"] and mup["failing"] == []
    assert mup["widths"] == [16, 32, 64, 128] and mup["steps"] == 3 and mup["parametrization"] == "mup"
    assert set(mup["types"]) == {"embedding", "attn_qkv", "attn_out", "mlp_in", "mlp_act", "mlp_out", "block", "logits"}
    assert len(mup["layers"]) == 1 + 2 * 6 + 1  # embedding, 2 blocks x 6, logits
    assert all(abs(layer["slope"]) < 0.25 for layer in mup["layers"].values() if layer["type"] != "logits")
    assert max(layer["slope"] for layer in mup["layers"].values()) <= 0.25
    loss = np.array(mup["loss"])  # [step][width]: it trained, at every width
    assert np.all(loss[-1] < loss[0] - 0.3)
    assert (out / "coord_mup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sp_fails_clearly(results):
    out, rcs, res = results
    sp = res["sp"]
    assert rcs["sp"] == 1 and not sp["passed"]
    assert sp["max_slope"] > 1.0  # not a borderline call: activations grow at least like width
    # Hidden layers (not just the constant-std init's sqrt(width)) blow up as Adam updates accumulate.
    for kind in ("attn_out", "mlp_out", "block"):
        assert sp["types"][kind]["slope"] > 0.6, kind
    assert sp["types"]["mlp_out"]["slope"] > log_slope(sp["widths"], sp["types"]["mlp_out"]["l1"][0])
    assert any("blocks.1" in m for m in sp["failing"])
    assert (out / "coord_sp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mup_passes_with_the_gradient_clipping_training_uses(results, tmp_path):
    """Pre-training clips the global gradient norm at 1 (optim.grad_clip): muP still passes with it,
    and the clip did act (the activations differ from the unclipped run's)."""
    out, _, res = results
    assert main(["coord-check", "tiny", f"out={out}", *ARGS, "grad_clip=1.0"]) == 0
    clip = json.loads((out / "coord_mup_clip1.json").read_text())
    assert clip["passed"] and clip["grad_clip"] == 1.0 and res["mup"]["grad_clip"] == 0.0
    assert max(layer["slope"] for layer in clip["layers"].values()) <= 0.25
    assert clip["types"]["attn_out"]["l1"][-1] != res["mup"]["types"]["attn_out"]["l1"][-1]
    assert max(max(g) for g in clip["grad_norm"]) > 1.0  # some step's gradient was over the clip
    assert (out / "coord_mup_clip1.png").is_file()


def test_batch_is_real_c4_tokens():
    spec = load_model_spec("tiny")
    x, y = c4_batch(data_root() / DEFAULT_DATA, 2, 32, spec)
    assert x.shape == y.shape == (2, 32)
    first = next(read_texts(data_root() / DEFAULT_DATA))
    ids = load_tokenizer().encode(first).ids
    assert x[0].tolist() == ids[:32] and y[0].tolist() == ids[1:33]
    assert x[1, 0].item() == y[0, -1].item()  # windows of stride seq_len, as in pre-training


def test_slope_criterion_and_tolerance():
    widths = [16, 32, 64, 128]
    assert log_slope(widths, [3, 3, 3, 3]) == pytest.approx(0)
    assert log_slope(widths, [1, 2, 4, 8]) == pytest.approx(1)
    assert log_slope(widths, [1, 2, float("nan"), 8]) == float("inf")  # diverged: fails
    recs = [
        dict(seed=0, width=w, t=t, module=m, l1=v)
        for t in (1, 2)
        for w in widths
        for m, v in (("transformer.wte", 1.0), ("transformer.blocks.0.ff_out", w**0.5), ("transformer.ff_out", 1 / w))
    ]
    losses = [dict(seed=0, width=w, t=t, loss=1.0) for t in (1, 2) for w in widths]
    strict = summarize(recs, losses, widths, 2, tolerance=0.25)
    assert strict["failing"] == ["transformer.blocks.0.ff_out"] and strict["max_slope"] == pytest.approx(0.5)
    assert summarize(recs, losses, widths, 2, tolerance=0.6)["passed"]  # shrinking logits never fail


def test_bad_input_is_reported_before_work(tmp_path, capsys):
    assert main(["coord-check", "tiny", f"out={tmp_path}", "widths=[16,32,64]"]) == 2
    assert "widths=[16, 32, 64]: need at least 4" in capsys.readouterr().err
    missing = tmp_path / "nope.json.gz"
    assert main(["coord-check", "tiny", f"out={tmp_path}", f"data={missing}", *ARGS]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
