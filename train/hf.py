"""Hugging Face ``transformers`` interop, shared by ``hf_export`` (``overtrain export-hf``: a checkpoint
as an ``OlmoForCausalLM`` directory) and ``hf_import`` (``overtrain import-hf``: such a directory,
ours or a third party's, as an overtrain checkpoint): the weight mapping and its multipliers.

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

import math
import os
import shutil
from pathlib import Path

import torch

from ..core.errors import ConfigError
from ..core.hf_compat import hide_broken_torchvision
from ..core.model import attention_scale, readout_scale
from ..core.model_spec import ModelSpec

hide_broken_torchvision()  # before any transformers import (core.hf_compat)

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
# output directories


def check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (pass overwrite=true to replace it)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")


def tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp
