"""A grid's multimodal (LLaVA) jobs in the memory plan (``launch.plan.plan_memory``): estimated as
stage 2 (the member trained on one GPU, bf16 autocast, plus the frozen fp32 tower) when the member's
shape is known, else their states before activations as a lower bound; checked against
``hardware.memory_gb`` with the other jobs, a refusal naming the micro-batch that fits."""

from __future__ import annotations

import pytest
from overtrain.core.errors import ConfigError
from overtrain.core.paths import REPO_ROOT
from overtrain.launch.plan import expand
from overtrain.launch.spec import load_grid

GRID = str(REPO_ROOT / "configs/grids/section2-olmo1b.yaml")  # suite.params 1.18B, vision_params 304M
OLMO1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "vocab_size": 50304}
ARCH = "suite.architecture={" + ", ".join(f"{k}: {v}" for k, v in OLMO1B.items()) + "}"


def multimodal(jobs):
    return [j for j in jobs if j.kind == "multimodal"]


def test_multimodal_jobs_are_estimated_and_checked(tmp_path, fake_hub):
    jobs = multimodal(expand(load_grid(GRID, [f"results_dir={tmp_path}", ARCH])))  # no memory_gb: shown only
    # By hand (core.memory's model): weights 4 x 1.18B + tower 4 x 304M = 5.94 GB, gradients 4.72,
    # AdamW 9.44, autocast 2.36; activations of 16 x 2048 tokens: 16 layers x 2 x (10 x 2048 + 4 x 8192)
    # bytes = 1.70 MB per token (55.8 GB) + logits 50304 x (2 + 8) bytes per token (16.5 GB): 94.8 GB
    assert jobs and {round(j.info["memory_gb"], 1) for j in jobs} == {94.8}
    assert not any(j.info["memory_before_activations"] for j in jobs)
    with pytest.raises(ConfigError) as e:
        expand(load_grid(GRID, [f"results_dir={tmp_path}", ARCH, "hardware.memory_gb=80"]))
    msg = str(e.value)
    assert "need more than 90% of hardware.memory_gb=80" in msg and "instruct/" not in msg  # SFT's 57 GB fit
    assert f"{jobs[0].id}: ~94.8 GB (weights 5.9," in msg and f"{len(jobs)} job(s)" in msg
    assert msg.count("to fit: micro_batch_size=8 (settings of multimodal.args)") == min(len(jobs), 5)
    # the named setting makes it fit: half the 72.3 GB of activations, 58.6 GB
    fitted = multimodal(expand(load_grid(GRID, [f"results_dir={tmp_path}", ARCH, "hardware.memory_gb=80",
                                                "multimodal.args=[micro_batch_size=8]"])))  # fmt: skip
    assert {round(j.info["memory_gb"], 1) for j in fitted} == {58.6}
    # where no micro-batch fits (22.5 GB of states + the step's 4.7 GB > 90% of 24 GB), it says so
    with pytest.raises(ConfigError, match=r"to fit: nothing in multimodal.args: it runs on one GPU without sharding "
                                          r"and needs ~27.2 GB at micro_batch_size=1\n"):  # fmt: skip
        expand(load_grid(GRID, [f"results_dir={tmp_path}", ARCH, "hardware.memory_gb=24"]))


def test_unknown_shape_keeps_a_lower_bound_that_still_refuses(tmp_path, fake_hub):
    # a hub member without suite.architecture: 16 B x 1.18B + 4 B x 304M = 20.1 GB before activations
    jobs = multimodal(expand(load_grid(GRID, [f"results_dir={tmp_path}", "hardware.memory_gb=24"])))
    assert {round(j.info["memory_gb"], 1) for j in jobs} == {20.1} and all(
        j.info["memory_before_activations"] for j in jobs
    )
    with pytest.raises(ConfigError, match=r"multimodal/\S+: at least ~20.1 GB per GPU before activations"):
        expand(load_grid(GRID, [f"results_dir={tmp_path}", "hardware.memory_gb=20"]))
