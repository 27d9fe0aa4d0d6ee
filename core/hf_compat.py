"""Importing ``transformers`` (and lm-eval, which imports it) beside a torchvision that cannot load.

``mup`` declares torchvision, so pip installs PyPI's build (linked against CUDA torch) next to the
CPU torch wheel, or a build for another torch next to a GPU machine's torch; its import fails, and
transformers, which imports torchvision whenever it is installed, fails with it. Overtrain never
uses torchvision: ``hide_broken_torchvision()`` marks it absent (before transformers is first
imported), so transformers skips it. A working torchvision, or none, is left alone.

Every module that imports transformers or lm_eval calls it first (it returns at once after the
first call): train/hf.py, finetune/instruct/sft.py, core/suite.py, evaluate/generalist.py, evaluate/lm_eval.py,
and core/hf_preload.py (the grid's warm process, launch/forked.py).
"""

from __future__ import annotations

import importlib.util
import sys


def hide_broken_torchvision() -> None:
    """Mark an unloadable torchvision as not installed, unless transformers or torchvision is already imported."""
    if "torchvision" in sys.modules or "transformers" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401  (heavy: the probe itself, called only before transformers loads)
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # find_spec now says: not installed
