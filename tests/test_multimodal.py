"""LLaVA multimodal tuning of a suite member (finetune.instruct.multimodal): a tiny random-init CLIP vision
tower (the real architecture), the tiny exported overtrain suite (suite_fixture) as language models,
and images of shapes drawn on the fly (data.shapes_vqa) with their true captions and questions.
Both stages train with the right parts frozen, rows land in the results file, and the suite report
draws visual QA accuracy against pre-training tokens; the chance test is exact; a grid plans a
`multimodal:` job per suite member beside `instruct:`, with its compute and memory; after stage 2 the
model answers held-out questions above chance (exact one-sided test at 1%), after stage 1 alone not.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from overtrain import cli
from overtrain.core.config import load_config
from overtrain.core.hf_compat import hide_broken_torchvision
from overtrain.core.jsonl import read_records
from overtrain.core.rows import load_rows
from overtrain.data.shapes_vqa import COLOURS, SHAPES, caption, draw_shapes, write_shapes_set
from overtrain.evaluate.report.suite_part import collect_suite
from overtrain.finetune.instruct import multimodal as mm
from overtrain.launch.plan import expand
from overtrain.launch.spec import load_grid
from suite_fixture import TinySuite  # the fixtures tiny_suite and fake_hub are registered in conftest.py

pytestmark = pytest.mark.duration(45)  # seconds, about: conftest starts the longest modules first


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    hide_broken_torchvision()
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("shapes")
    torch.manual_seed(0)
    # CLIP's vision architecture at toy size: 32 px images in 16 px patches -> 4 image tokens
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16
    )
    CLIPVisionModel(cfg).save_pretrained(root / "clip")
    return root, write_shapes_set(root / "train", 48, seed=0), write_shapes_set(root / "test", 12, seed=1)


def test_drawn_images_match_their_captions():
    rng = np.random.default_rng(3)
    for _ in range(20):
        img, facts = draw_shapes(rng)
        a = np.asarray(img).reshape(-1, 3)
        coloured = a[(a != 255).any(axis=1)]
        assert len(coloured) > 0 and facts["shape"] in SHAPES
        # every drawn pixel has the named colour (filled shapes, no anti-aliasing)
        assert (coloured == np.asarray(COLOURS[facts["colour"]])).all()
    assert caption({"count": "three", "colour": "red", "shape": "circle"}) == "Three red circles."


def test_chance_p_value_is_the_exact_tail():
    # equal chances: the binomial tail
    n, p = 30, 1 / 3
    for k in (0, 10, 16, 30):
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert mm.chance_p_value(k, [p] * n) == pytest.approx(exact, rel=1e-12)
    # mixed chances: enumerate every outcome of 6 guesses
    chances = [1 / 2, 1 / 3, 1 / 4, 1 / 2, 1 / 5, 1 / 3]
    for k in range(7):
        brute = sum(
            math.prod(c if o else 1 - c for c, o in zip(chances, outcome))
            for outcome in itertools.product((0, 1), repeat=6)
            if sum(outcome) >= k
        )
        assert mm.chance_p_value(k, chances) == pytest.approx(brute, rel=1e-12)


def test_stages_freeze_the_right_parts(tiny_suite: TinySuite, shapes):
    root, train, _ = shapes
    cfg = load_config(mm.MultimodalConfig, None, ["captions=x", "instruct=x", "vqa=x", "out=x", "micro_batch_size=16"])
    cfg.stage1_batch_size = cfg.stage2_batch_size = 16
    cfg.stage1_lr = cfg.stage2_lr = 1e-3
    tower, mean, std = mm.load_vision(str(root / "clip"))
    model, tok = mm.build_llava(tiny_suite.members[0], tower)
    _, n_image = mm.vision_spec(model)
    assert n_image == 4
    parts = {
        "tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "lm": model.model.language_model,
        "head": model.lm_head,
    }

    def snapshot():
        return {k: torch.cat([p.detach().flatten().clone() for p in m.parameters()]) for k, m in parts.items()}

    records, _ = mm.load_llava_json(str(train["captions"]))
    before = snapshot()
    s1 = mm.train_stage(model, tok, mm.encode_stage1(tok, records, n_image, 128), 1, cfg, "cpu", (mean, std), None)
    after1 = snapshot()
    changed = {k for k in parts if not torch.equal(before[k], after1[k])}
    assert changed == {"projector"} and s1["steps"] == 3
    records, _ = mm.load_llava_json(str(train["instruct"]))
    s2 = mm.train_stage(model, tok, mm.encode_stage2(tok, records, n_image, 128), 2, cfg, "cpu", (mean, std), None)
    after2 = snapshot()
    changed = {k for k in parts if not torch.equal(after1[k], after2[k])}
    assert changed == {"projector", "lm", "head"} and s2["trainable_params"] > s1["trainable_params"]


def test_two_stages_rows_and_report(tiny_suite: TinySuite, shapes, tmp_path):
    root, train, test = shapes
    results = tmp_path / "results.jsonl"
    settings = [
        f"vision={root / 'clip'}",
        f"captions={train['captions']}",
        f"instruct={train['instruct']}",
        f"vqa={test['vqa']}",
        f"results={results}",
        "stage1_batch_size=16",
        "stage2_batch_size=16",
        "stage1_lr=1e-3",
        "stage2_lr=3e-3",
        "stage2_epochs=2",
        "micro_batch_size=16",
        "log_every=0",
    ]
    for member in (tiny_suite.members[0], tiny_suite.members[2]):
        cfg = load_config(mm.MultimodalConfig, None, [*settings, f"out={tmp_path / member.name}"])
        got = mm.run_multimodal(str(member), cfg, log=lambda _: None)
        stats = got["provenance"]["sft_stats"]
        assert stats["stage1"]["steps"] == 3 and stats["stage2"]["steps"] == 6
        assert stats["stage2"]["loss_last"] < stats["stage2"]["loss_first"]  # the answers are learnt (their words)
        ev = got["eval"]
        assert ev["n"] == 36 and ev["chance"] == pytest.approx(1 / 3) and ev["acc"] == ev["correct"].mean()
        assert ev["p_value"] == mm.chance_p_value(int(ev["correct"].sum()), [1 / 3] * 36)  # one-sided, vs 1/3
    out = tmp_path / tiny_suite.members[2].name
    prov = json.loads((out / "overtrain_suite.json").read_text())
    assert prov["pretrain_tokens"] == tiny_suite.tokens[2] and prov["sft"]["data_name"] == "llava"
    rows = read_records(results)
    assert [r["kind"] for r in rows] == ["multimodal"] * 2 and [r["task"] for r in rows] == ["vqa"] * 2
    # a rerun is skipped: the row is there already
    cfg = load_config(mm.MultimodalConfig, None, [*settings, f"out={out}"])
    assert mm.run_multimodal(str(tiny_suite.members[2]), cfg, log=lambda _: None)["eval"] is None
    assert len(read_records(results)) == 2
    (fam,) = collect_suite(list(load_rows(results)))
    (curve,) = fam.curves
    assert fam.tuning == "llava" and curve.task == "vqa" and curve.tokens == [1000.0, 4000.0]
    assert curve.n == 36 and curve.lo is not None  # per-question scores: intervals
    assert curve.acc == pytest.approx([r["acc"] for r in rows])


def test_answers_above_chance_after_stage_2(tiny_suite: TinySuite, shapes, tmp_path):
    """The two stages as ``run_multimodal`` runs them, on 800 drawn images, evaluated on 180 held-out
    questions (60 new images x colour, shape, count; chance 1/3). The settings are the test's, not the
    recipe's: ~250 steps at a high LR are what a 4K-token 64-wide language model needs to start reading
    4 image tokens (measured: at chance after 100 steps, ~0.5-0.7 accuracy after 200-300; ~35 s on one core)."""
    root, _, _ = shapes
    train = write_shapes_set(tmp_path / "train", 800, seed=2)
    test = write_shapes_set(tmp_path / "test", 60, seed=3)
    settings = {"stage1_batch_size": 64, "stage2_batch_size": 16, "stage2_lr": 3e-3, "stage2_epochs": 5}
    cfg = load_config(
        mm.MultimodalConfig,
        None,
        ["captions=x", "instruct=x", "vqa=x", "out=x", "log_every=0", *[f"{k}={v}" for k, v in settings.items()]],
    )
    tower, mean, std = mm.load_vision(str(root / "clip"))
    torch.manual_seed(cfg.seed)
    model, tok = mm.build_llava(tiny_suite.members[2], tower)
    _, n_image = mm.vision_spec(model)
    questions = mm.load_vqa(str(test["vqa"]))
    evals = []
    for stage, encode, key in ((1, mm.encode_stage1, "captions"), (2, mm.encode_stage2, "instruct")):
        seqs = encode(tok, mm.load_llava_json(str(train[key]))[0], n_image, 128)
        mm.train_stage(model, tok, seqs, stage, cfg, "cpu", (mean, std), None)
        evals.append(mm.evaluate_vqa(model, tok, questions, "cpu", (mean, std)))
    after1, after2 = evals
    assert after2["n"] == 180 and after2["chance"] == pytest.approx(1 / 3)
    assert after2["p_value"] == mm.chance_p_value(int(after2["correct"].sum()), [1 / 3] * 180)
    assert after2["p_value"] < 0.01, after2["acc"]  # above chance after stage 2
    # stage 1 trains the projector under a frozen language model that has never seen a chat: not yet
    assert after1["p_value"] >= 0.01 and after1["correct"].sum() < after2["correct"].sum(), after1["acc"]


def test_grid_plans_a_multimodal_job_per_member_beside_instruct(fake_hub, capsys):
    grid = str(Path(__file__).resolve().parents[1] / "configs/grids/section2-olmo1b.yaml")
    spec = load_grid(grid)  # members: the hub's branches (faked)
    jobs = expand(spec)
    mm_jobs = [j for j in jobs if j.kind == "multimodal"]
    members = sorted({j.info["member"] for j in jobs if j.kind == "instruct"})
    assert sorted(j.info["member"] for j in mm_jobs) == members and len(members) == len(spec.suite.tokens)
    job = next(j for j in mm_jobs if j.id == "multimodal/step715000-tokens2998B")  # the 3T member
    assert job.argv[:2] == ["multimodal", "allenai/OLMo-1B-hf@step715000-tokens2998B"] and job.after == []
    assert "tokens=2998000000000" in job.argv and "vision=openai/clip-vit-large-patch14-336" in job.argv
    assert "data_name=llava" in job.argv and job.argv[-1].endswith("multimodal/results.jsonl")
    # no hyperparameter in the grid's args: the command's defaults, the LLaVA recipe's, apply
    assert not spec.multimodal.args and mm.MultimodalConfig().stage2_lr == 2e-5
    n, nv, mmspec = 1.18e9, 304e6, spec.multimodal  # suite.params, vision_params
    assert job.flops == pytest.approx(
        (4 * n + 2 * nv) * mmspec.stage1_tokens_estimate + (6 * n + 2 * nv) * mmspec.stage2_tokens_estimate
    )
    assert job.info["memory_gb"] == pytest.approx((16 * n + 4 * nv) / 1e9)  # fp32 AdamW on the LM + the tower
    assert job.id in jobs[-1].after  # the report waits for it
    assert cli.main(["grid", "plan", grid, "quiet=true"]) == 0
    out = capsys.readouterr().out
    assert "multimodal" in out and f"multimodal: ~{job.info['memory_gb']:.1f} GB per job" in out
