"""``overtrain export-hf CHECKPOINT OUT_DIR [dtype=float32] [overwrite=true]``: a checkpoint as a
transformers ``OlmoForCausalLM`` directory that loads without custom code.

The muP multipliers are folded into the weights and the padded vocabulary rows are cut
(``overtrain.train.hf``); the cut rows and the source spec and meta travel in
``overtrain.safetensors`` / ``overtrain.json`` (transformers ignores both), so ``import-hf``
restores the original checkpoint. Written under a temporary name, then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer

from ..core.atomic import replace_dir
from ..core.checkpoint import load_model
from ..core.config import to_dict
from ..core.errors import ConfigError
from ..core.model_spec import ModelSpec
from ..data.tokenizer import EOS_TOKEN, tokenizer_path
from .hf import DTYPES, PAD_TOKEN, PADDED_ROWS, PROVENANCE, check_target, folded_multipliers, tmp_dir, to_hf_state


def check_exportable(spec: ModelSpec, tokenizer_vocab: int, where: str) -> None:
    """Raise ConfigError if transformers' OLMo cannot represent ``spec`` (before any work)."""
    problems = []
    if spec.head_dim % 2:
        problems.append(f"head_dim={spec.head_dim} is odd (RoPE rotates pairs)")
    if (spec.mlp_ratio * spec.d_model) % 2:
        problems.append(f"mlp_ratio x d_model = {spec.mlp_ratio * spec.d_model} is odd (SwiGLU halves it)")
    if tokenizer_vocab > spec.vocab_size:
        problems.append(f"tokenizer '{spec.tokenizer}' has {tokenizer_vocab} ids but vocab_size={spec.vocab_size}")
    if problems:
        raise ConfigError(f"{where}: cannot be represented as a transformers OLMo: " + "; ".join(problems))


def hf_config(spec: ModelSpec, dtype: str = "float32"):
    from transformers import OlmoConfig  # heavy: transformers (optional extra [hf])

    return OlmoConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.d_model,
        intermediate_size=spec.mlp_ratio * spec.d_model // 2,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads,
        hidden_act="silu",
        max_position_embeddings=spec.max_sequence_length,
        initializer_range=spec.init_std,
        pad_token_id=spec.pad_token_id,
        bos_token_id=None,
        eos_token_id=spec.eos_token_id,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": float(spec.rope_theta)},
        attention_bias=False,
        attention_dropout=0.0,
        clip_qkv=None,
        architectures=["OlmoForCausalLM"],
        dtype=dtype,
    )


def _write_tokenizer(tok_file: Path, spec: ModelSpec, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast  # heavy: transformers (optional extra [hf])

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_file),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=spec.max_sequence_length,
    )
    if tok.eos_token_id != spec.eos_token_id or tok.pad_token_id != spec.pad_token_id:
        raise ConfigError(
            f"{tok_file}: {EOS_TOKEN}/{PAD_TOKEN} are ids {tok.eos_token_id}/{tok.pad_token_id}, "
            f"model says eos_token_id={spec.eos_token_id}, pad_token_id={spec.pad_token_id}"
        )
    tok.save_pretrained(str(out))
    _add_legacy_keys(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"})


def _add_legacy_keys(path: Path, keys: dict) -> None:
    """Spellings transformers 4.x reads (5.x reads rope_parameters, dtype and its own tokenizer
    class name, and accepts these too), so the export also loads with older releases."""
    data = json.loads(path.read_text())
    data.update(keys)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export_hf(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False, dtype: str = "float32"
) -> Path:
    """Write ``out_dir`` as a transformers OLMo directory (config, safetensors, tokenizer, generation config)."""
    from safetensors.torch import save_file  # heavy: safetensors, transformers (optional extra [hf])
    from transformers import GenerationConfig

    out = Path(out_dir)
    check_target(out, overwrite)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype}: expected one of {sorted(DTYPES)}")
    model, spec, meta = load_model(checkpoint)
    src = Path(meta["path"])
    tok_file = tokenizer_path(spec.tokenizer)
    check_exportable(spec, Tokenizer.from_file(str(tok_file)).get_vocab_size(), f"{src / 'model.yaml'}")
    readout, query = folded_multipliers(spec)
    hf, padded = to_hf_state(model.state_dict(), spec, readout, query)
    hf = {k: v.to(DTYPES[dtype]) for k, v in hf.items()}

    tmp = tmp_dir(out)
    try:
        hf_config(spec, dtype).save_pretrained(str(tmp))
        _add_legacy_keys(tmp / "config.json", {"rope_theta": float(spec.rope_theta), "torch_dtype": dtype})
        GenerationConfig(eos_token_id=spec.eos_token_id, pad_token_id=spec.pad_token_id).save_pretrained(str(tmp))
        save_file(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_tokenizer(tok_file, spec, tmp)
        save_file(padded, str(tmp / PADDED_ROWS), metadata={"format": "pt"})
        meta = {k: v for k, v in meta.items() if k != "path"}
        provenance = {
            "source": str(src),
            "spec": to_dict(spec),
            "meta": meta,
            "folded": {"readout": readout, "query": query},
            "dtype": dtype,
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class ExportConfig:
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weight dtype of the export
    overwrite: bool = False  # replace out_dir if it exists


def run(config: ExportConfig, checkpoint: str, out_dir: str) -> int:
    out = export_hf(checkpoint, out_dir, overwrite=config.overwrite, dtype=config.dtype)
    print(f"exported {checkpoint} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
