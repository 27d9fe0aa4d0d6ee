"""Importing this module imports transformers as every stage does (a broken torchvision hidden
first: ``core.hf_compat``), with the OLMo classes the checkpoint suites load.

Only for ``launch/forked.py``: the warm process of a grid with Hugging Face jobs (SFT, lm-eval,
AlpacaEval, LLaVA) imports it once instead of each job (~1.5 s a job on a 2-core VM). Nothing
imports it otherwise; its import is its whole effect.
"""

from __future__ import annotations

from .hf_compat import hide_broken_torchvision

hide_broken_torchvision()

import transformers  # noqa: E402, F401  heavy: transformers, the point of this module
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402, F401  (lazy names, resolved here)
from transformers.models.olmo import modeling_olmo  # noqa: E402, F401  (allenai/OLMo-*-hf, the tiny test suite)
