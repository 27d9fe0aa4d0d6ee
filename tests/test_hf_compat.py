"""core.hf_compat: a torchvision that fails to import is marked absent before transformers loads (so the
evaluate and finetune stages import transformers without train/); a working one is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from overtrain.core.paths import REPO_ROOT

PROBE = textwrap.dedent(
    """
    import importlib.util, sys, tempfile
    from overtrain.core.suite import check_loadable  # core only: no train/ import
    from overtrain.core.hf_compat import hide_broken_torchvision
    hide_broken_torchvision()
    print("absent" if importlib.util.find_spec("torchvision") is None else "kept")
    if sys.argv[1] == "load":  # without the hiding, the first line below raises the fake's OSError
        from transformers import AutoModelForCausalLM, OlmoConfig, OlmoForCausalLM
        cfg = OlmoConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
        d = tempfile.mkdtemp()
        OlmoForCausalLM(cfg).save_pretrained(d)
        check_loadable(d)
        AutoModelForCausalLM.from_pretrained(d)
        print("loaded; train imported:", "overtrain.train" in sys.modules)
    """
)


def _probe(tmp_path, init: str, load: bool) -> str:
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(init)
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "load" if load else "-"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_broken_torchvision_is_hidden(tmp_path):
    out = _probe(tmp_path, "raise OSError('undefined symbol: a CUDA torch build beside a CPU torch')\n", load=True)
    assert out.splitlines()[0] == "absent" and out.splitlines()[-1] == "loaded; train imported: False"


def test_working_torchvision_is_kept(tmp_path):
    assert _probe(tmp_path, "__version__ = '0.0.0'\n", load=False).splitlines() == ["kept"]
